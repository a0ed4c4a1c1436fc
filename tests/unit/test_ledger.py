"""ConfirmLedger: tokens resolve in publish order; a held publish's token follows its new one."""

from __future__ import annotations

import asyncio

import pytest

from merpati.node.core.ledger import ConfirmLedger, LedgerError


def test_committed_waits_for_every_older_token() -> None:
    ledger = ConfirmLedger()
    a, b = ledger.allocate(), ledger.allocate()
    ledger.resolve([b], ok=True)
    assert ledger.committed == 0
    ledger.resolve([a], ok=True)
    assert ledger.committed == b


def test_a_forwarded_token_resolves_with_the_token_it_was_sent_on_under() -> None:
    async def run() -> None:
        ledger = ConfirmLedger()
        held1, held2 = ledger.allocate(), ledger.allocate()
        # Both held publishes go to the new leader in one batch: one new token.
        new = ledger.allocate()
        ledger.forward(new, held1)
        ledger.forward(new, held2)
        waiter = ledger.wait(held2)
        assert ledger.committed == 0
        ledger.resolve([new], ok=True)
        assert ledger.committed == new
        await asyncio.wait_for(waiter, 1)

    asyncio.run(run())


def test_a_failure_of_the_new_token_fails_the_held_one() -> None:
    async def run() -> None:
        ledger = ConfirmLedger()
        held = ledger.allocate()
        new = ledger.allocate()
        ledger.forward(new, held)
        waiter = ledger.wait(held)
        ledger.resolve([new], ok=False, error="not the leader")
        with pytest.raises(LedgerError, match="not the leader"):
            await asyncio.wait_for(waiter, 1)

    asyncio.run(run())


def test_forwarding_to_a_token_already_resolved_resolves_at_once_with_its_outcome() -> None:
    ledger = ConfirmLedger()
    seen: set[int] = set()

    class Watcher:
        def store_committed(self, committed: int, failed: frozenset[int]) -> None:
            seen.update(failed)

    ledger.watchers.add(Watcher())
    held_ok, held_bad = ledger.allocate(), ledger.allocate()
    refused = ledger.allocate()
    ledger.resolve([refused], ok=False, error="refused")
    ledger.forward(refused, held_bad)
    done = ledger.allocate()
    ledger.resolve([done], ok=True)
    ledger.forward(done, held_ok)
    assert ledger.committed == done
    assert held_bad in seen and held_ok not in seen


def test_chains_of_forwards_resolve_every_link() -> None:
    ledger = ConfirmLedger()
    first = ledger.allocate()
    second = ledger.allocate()  # held again at a second failover
    third = ledger.allocate()
    ledger.forward(second, first)
    ledger.forward(third, second)
    ledger.resolve([third], ok=True)
    assert ledger.committed == third
