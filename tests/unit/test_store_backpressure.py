"""Credit flow on the message store's writer: a queue whose store falls behind pauses its
publishers until the writer caught up (SQLiteStore.backlogged), so what waits to be written
cannot grow in memory without bound."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from merpati.node.broker import Broker
from merpati.node.core.message import Message
from merpati.node.metadata import commands as cmds
from merpati.node.metadata.log import LocalLog
from merpati.node.store import SQLiteStore
from merpati.node.store import sqlite as sqlite_store
from merpati.node.wire.properties import encode_properties

PERSISTENT = encode_properties({"delivery_mode": 2})


class Publisher:
    def __init__(self) -> None:
        self.blocked_by: set[Any] = set()
        self.events: list[str] = []

    def flow_blocked(self, queue: Any) -> None:
        self.blocked_by.add(queue)
        self.events.append("blocked")

    def flow_unblocked(self, queue: Any) -> None:
        self.blocked_by.discard(queue)
        self.events.append("unblocked")


def test_a_store_behind_pauses_the_publishers_until_it_caught_up(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(sqlite_store, "BACKLOG_HIGH", 64 * 1024)
    monkeypatch.setattr(sqlite_store, "BACKLOG_LOW", 16 * 1024)

    async def main() -> None:
        store = SQLiteStore(tmp_path / "store.db")
        store.open()
        store.start(asyncio.get_running_loop())
        # Hold the writer, as a slow disk would.
        go = threading.Event()
        write = store._write
        monkeypatch.setattr(
            store, "_write", lambda conn, batches: (go.wait(), write(conn, batches))
        )
        broker = Broker("n1", LocalLog(), store=store)
        await broker.propose(cmds.AddVhost("/"))
        await broker.propose(cmds.DeclareQueue("/", "q", True, leader="n1"))
        q = broker.queue("/", "q")
        pub = Publisher()
        body = b"x" * 1000
        sent = 0
        while not pub.blocked_by:
            broker.enqueue([q], Message("", "q", None, PERSISTENT, body), True, pub)
            sent += 1
            if sent % 10 == 0:
                await asyncio.sleep(0)  # batches go to the writer
            assert sent < 1000, "never paused"
        assert store.backlogged and q.congested
        assert 60 <= sent <= 80  # paused at about 64 KiB of 1 KB messages
        go.set()
        for _ in range(200):
            if not pub.blocked_by:
                break
            await asyncio.sleep(0.01)
        assert pub.events == ["blocked", "unblocked"]
        assert store.backlog <= sqlite_store.BACKLOG_LOW and not q.congested
        assert q.stats_now()[0] == sent  # nothing was lost on the way
        await asyncio.get_running_loop().run_in_executor(None, store.close)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_the_backlog_counts_only_what_is_still_to_write(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(tmp_path / "store.db")
        store.open()
        store.start(asyncio.get_running_loop())
        qid = store.queue_id("/", "q", True)
        token = store.append(qid, 1, False, b"", b"", b"a" * 100)
        store.append(qid, 2, False, b"", b"", b"b" * 100)
        assert store.backlog == 2 * (100 + sqlite_store.ROW_OVERHEAD)
        store.delete(qid, 2)  # acked before its write: never written, no longer waiting
        assert store.backlog == 100 + sqlite_store.ROW_OVERHEAD
        await asyncio.wait_for(store.ledger.wait(token), 5)
        assert store.backlog == 0
        await asyncio.get_running_loop().run_in_executor(None, store.close)

    asyncio.run(asyncio.wait_for(main(), 10))
