"""Broker.recover against a queue that metadata brings to this node while it starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from merpati.node.broker import Broker
from merpati.node.core.message import Message
from merpati.node.metadata import commands as cmds
from merpati.node.metadata.log import LocalLog
from merpati.node.store import SQLiteStore
from merpati.node.wire.properties import encode_properties

PERSISTENT = encode_properties({"delivery_mode": 2})


async def _broker(path: Path, defer: bool) -> tuple[Broker, SQLiteStore, dict]:
    store = SQLiteStore(path)
    stored = store.open()
    store.start(asyncio.get_running_loop())
    broker = Broker("n1", LocalLog(), store=store)
    broker.defer_local_queues = defer
    await broker.propose(cmds.AddVhost("/"))
    return broker, store, stored


async def _close(store: SQLiteStore) -> None:
    await asyncio.get_running_loop().run_in_executor(None, store.close)


def test_a_queue_declared_before_recovery_is_refilled_not_overwritten(tmp_path: Path) -> None:
    # The node's metadata applies the queue's declaration (replayed, or committed by another
    # node while this one starts) before recover() reads the store: the queue must come back
    # with its stored messages, and new ones must not take their rows.
    path = tmp_path / "store.db"

    async def main() -> None:
        broker, store, _ = await _broker(path, defer=False)
        await broker.propose(cmds.DeclareQueue("/", "q", True, leader="n1"))
        q = broker.queue("/", "q")
        token = max(q.enqueue(Message("", "q", None, PERSISTENT, b"old%d" % i)) for i in range(5))
        await asyncio.wait_for(store.ledger.wait(token), 5)
        await _close(store)

        broker, store, stored = await _broker(path, defer=True)  # as node/server.py starts it
        await broker.propose(cmds.DeclareQueue("/", "q", True, leader="n1"))
        assert broker.queue("/", "q") is None  # not before recover()
        assert broker.recover(stored) == 5
        q = broker.queue("/", "q")
        token = q.enqueue(Message("", "q", None, PERSISTENT, b"new"))
        await asyncio.wait_for(store.ledger.wait(token), 5)
        assert q.stats_now()[0] == 6
        await _close(store)

        broker, store, stored = await _broker(path, defer=True)
        await broker.propose(cmds.DeclareQueue("/", "q", True, leader="n1"))
        assert broker.recover(stored) == 6
        got = []
        q = broker.queue("/", "q")
        while (m := q.get_now(False)) is not None:
            got.append(m.body)
        assert got == [b"old0", b"old1", b"old2", b"old3", b"old4", b"new"]
        await _close(store)

    asyncio.run(main())
