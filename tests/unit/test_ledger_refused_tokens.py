"""A publish refused at once (a quorum queue replica that no longer leads: QueueReplica's
`_refused_token` allocates a token and resolves it as failed inside `enqueue`) must still read
as failed to whoever looks at its token afterwards: the AMQP channel and the forwarding server
(they ask `did_fail` of a token at or below `committed`), `ledger.wait`, a held publish handed
to the new leader (`ledger.forward`).

Before the fix, the ConfirmLedger reported a failure to the watchers present when `committed`
passed the token, then forgot it; so a token refused inside `enqueue` read as committed, and its
publisher got basic.ack for a message no queue took (found by tests/cluster/test_total_queue.py,
chaos rounds with SIGTERM; see test_rolling_restart.py::test_publishes_racing_a_sigterm_...).

A message several queues take holds one token per queue that made one; `join` folds them into
one that fails when any of them does.
"""

from __future__ import annotations

import asyncio

import pytest

from merpati.node.core import ledger as ledger_mod
from merpati.node.core.ledger import ConfirmLedger, LedgerError

REFUSAL = "queue lost its leader; publish again"


def refused(ledger: ConfirmLedger) -> int:
    token = ledger.allocate()
    ledger.resolve([token], ok=False, error=REFUSAL)
    return token


def test_a_token_refused_before_anyone_waits_still_fails_its_waiter() -> None:
    async def run() -> None:
        ledger = ConfirmLedger()
        token = refused(ledger)
        assert token <= ledger.committed
        with pytest.raises(LedgerError, match="lost its leader"):
            await asyncio.wait_for(ledger.wait(token), 1)

    asyncio.run(run())


def test_a_refused_token_reads_as_failed_after_later_tokens_commit() -> None:
    ledger = ConfirmLedger()
    token = refused(ledger)
    ok = ledger.allocate()
    ledger.resolve([ok], ok=True)
    assert ledger.committed == ok
    assert ledger.did_fail(token) and not ledger.did_fail(ok)


def test_a_held_publish_forwarded_to_a_refused_token_fails() -> None:
    ledger = ConfirmLedger()
    held = ledger.allocate()  # a publish held while the queue had no leader
    seen: list[tuple[int, frozenset[int]]] = []

    class Watcher:
        def store_committed(self, committed: int, failed: frozenset[int]) -> None:
            seen.append((committed, failed))

    ledger.watchers.add(Watcher())
    token = refused(ledger)  # sent on to a replica that stopped leading meanwhile
    ledger.forward(token, held)
    assert ledger.committed == token
    assert ledger.did_fail(held)
    assert any(held in failed for _c, failed in seen)


def test_failures_are_remembered_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_mod, "KEEP_FAILURES", 3)
    ledger = ConfirmLedger()
    tokens = [refused(ledger) for _ in range(5)]
    assert [ledger.did_fail(t) for t in tokens] == [False, False, True, True, True]


def test_a_join_waits_for_every_token_and_fails_when_one_does() -> None:
    ledger = ConfirmLedger()
    local, remote = ledger.allocate(), ledger.allocate()
    joined = ledger.join([remote, local])
    ledger.resolve([local], ok=True)
    assert ledger.committed < joined
    ledger.resolve([remote], ok=False, error="forward failed")
    assert ledger.committed == joined and ledger.did_fail(joined)


def test_a_join_of_committed_tokens_resolves_at_once() -> None:
    ledger = ConfirmLedger()
    a, b = ledger.allocate(), ledger.allocate()
    ledger.resolve([a, b], ok=True)
    joined = ledger.join([a, b])
    assert ledger.committed == joined and not ledger.did_fail(joined)
    bad = refused(ledger)
    joined = ledger.join([a, bad])
    assert ledger.committed == joined and ledger.did_fail(joined)


def test_a_join_succeeds_when_all_succeed_out_of_order() -> None:
    ledger = ConfirmLedger()
    a, b, c = ledger.allocate(), ledger.allocate(), ledger.allocate()
    joined = ledger.join([a, c])
    ledger.resolve([c], ok=True)
    ledger.resolve([a], ok=True)
    assert ledger.committed == b - 1  # b still open
    ledger.resolve([b], ok=True)
    assert ledger.committed == joined and not ledger.did_fail(joined)


def test_a_message_two_queues_take_is_confirmed_only_if_both_keep_it() -> None:
    # Broker.enqueue: the local store's token and a remote queue's token, the remote one failing
    # later; the publisher waits for the joined token, which fails.
    from types import SimpleNamespace

    from merpati.node.broker import Broker
    from merpati.node.core.message import Message
    from merpati.node.metadata.log import LocalLog

    ledger = ConfirmLedger()
    broker = Broker("n1", LocalLog(), store=SimpleNamespace(ledger=ledger))

    class Queue:
        congested = False

        def __init__(self) -> None:
            self.token = ledger.allocate()

        def enqueue(self, msg: Message, confirm: bool = True) -> int:
            return self.token

    local, remote = Queue(), Queue()
    msg = Message("", "q", b"", b"", b"body")
    token = broker.enqueue([local, remote], msg)
    assert token not in (local.token, remote.token)
    ledger.resolve([remote.token], ok=False, error="forward failed")
    ledger.resolve([local.token], ok=True)
    assert token <= ledger.committed and ledger.did_fail(token)
