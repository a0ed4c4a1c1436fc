"""A publish refused at once (a quorum queue replica that no longer leads: QueueReplica's
`_refused_token` allocates a token and resolves it as failed inside `enqueue`) must still read
as failed to whoever looks at its token afterwards: the AMQP channel (a watcher added after
`enqueue` returned), the forwarding server (`epoch > ledger.committed`), a held publish handed to
the new leader (`ledger.forward`), `ledger.wait`.

The ConfirmLedger reports a failure to the watchers present when `committed` passes the token,
then forgets it; `committed` counts failed tokens too. So when nothing older is open, a token
refused inside `enqueue` reads as committed, and its publisher gets basic.ack for a message no
queue took (found by tests/cluster/test_total_queue.py, chaos rounds with SIGTERM; see
test_rolling_restart.py::test_publishes_racing_a_sigterm_handover_are_never_confirmed_and_lost).
"""

from __future__ import annotations

import asyncio

import pytest

from merpati.node.core.ledger import ConfirmLedger, LedgerError

REFUSED_CONFIRM_BUG = (
    "broker bug: a token resolved as failed before its publisher looks at it reads as committed "
    "(ConfirmLedger forgets failures once reported), so refused publishes are confirmed"
)


@pytest.mark.xfail(reason=REFUSED_CONFIRM_BUG, strict=False)
def test_a_token_refused_before_anyone_waits_still_fails_its_waiter() -> None:
    async def run() -> None:
        ledger = ConfirmLedger()
        token = ledger.allocate()
        ledger.resolve([token], ok=False, error="queue lost its leader; publish again")
        with pytest.raises(LedgerError):
            await asyncio.wait_for(ledger.wait(token), 1)

    asyncio.run(run())


@pytest.mark.xfail(reason=REFUSED_CONFIRM_BUG, strict=False)
def test_a_token_refused_before_its_channel_watches_is_reported_failed() -> None:
    ledger = ConfirmLedger()
    reported: set[int] = set()
    acked_upto = 0

    class Channel:  # what node/amqp091/channel_publish.py does with (seq, token) pending
        def store_committed(self, committed: int, failed: frozenset[int]) -> None:
            nonlocal acked_upto
            reported.update(failed)
            if token <= committed and token not in failed:
                acked_upto = token

    token = ledger.allocate()
    ledger.resolve([token], ok=False, error="queue lost its leader; publish again")
    ledger.watchers.add(Channel())  # the channel starts watching once enqueue has returned
    other = ledger.allocate()  # the next publish, anywhere on the node
    ledger.resolve([other], ok=True)
    assert token in reported and acked_upto == 0, "a refused publish was confirmed"
