"""The controller: on the node that leads the metadata Raft, it gives every replicated queue
whose leader is gone a new one.

Theory of operation. Every TICK the controller looks at the replicated queues. A queue whose
leader this node cannot reach for DOWN_AFTER seconds gets an election: QueueElection(epoch + 1)
goes through Raft first, so the replicas fence themselves (and a controller that takes over
later finishes the election it finds under way); then the controller asks each replica for its
position (fencing it too, in case it has not applied the command yet), and once a majority has
answered it names the replica with the highest (last epoch, end offset) in QueueLeader. A
majority that answers always holds every committed entry (replica.py), so no confirmed message
is lost; with fewer replicas answering the queue waits (no unclean election).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from merpati.node.metadata import commands as cmds
from merpati.node.metadata.state import MetadataError

from .replica import choose_leader

log = logging.getLogger("merpati.replication")

TICK = 0.25
# How long a queue's leader must stay unreachable before another replica takes over: the
# forwarding link's ping notices a dead peer within PING_TIMEOUT (2 s) of its last answer.
DOWN_AFTER = 1.0


class Controller:
    def __init__(self, queues: Any, live: Any, is_controller: Any) -> None:
        self.queues = queues  # ReplicatedQueues
        self.live = live  # () -> node ids reachable now
        self.is_controller = is_controller  # () -> True on the metadata Raft leader
        self._down_since: dict[tuple[str, str, str], float] = {}
        self._running: set[tuple[str, str, str]] = set()
        self._task: asyncio.Task | None = None
        self._elections: set[asyncio.Task] = set()
        self.elections = 0  # completed, for tests and metrics

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._elections) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                if self.is_controller():
                    self.tick()
                else:
                    self._down_since.clear()
            except Exception:  # noqa: BLE001 - the next tick tries again
                log.exception("replication controller tick failed")

    def tick(self) -> None:
        broker = self.queues.broker
        if broker is None or not broker.recovered:
            return
        live = self.live()
        now = time.monotonic()
        seen = set()
        for vh in broker.state.vhosts.values():
            for q in vh.queues.values():
                if not q.replicated:
                    continue
                key = (q.vhost, q.name, q.incarnation)
                seen.add(key)
                if key in self._running:
                    continue
                if q.electing:
                    self._elect(key, q.electing, q.replicas, propose_first=False)
                    continue
                if q.leader in live:
                    self._down_since.pop(key, None)
                    continue
                since = self._down_since.setdefault(key, now)
                if now - since >= DOWN_AFTER:
                    self._elect(key, q.epoch + 1, q.replicas, propose_first=True)
        for key in list(self._down_since):
            if key not in seen:
                del self._down_since[key]

    def _elect(
        self, key: tuple[str, str, str], epoch: int, replicas: tuple[str, ...], propose_first: bool
    ) -> None:
        self._running.add(key)
        task = asyncio.ensure_future(self._election(key, epoch, replicas, propose_first))
        self._elections.add(task)

        def done(t: asyncio.Task) -> None:
            self._elections.discard(t)
            self._running.discard(key)

        task.add_done_callback(done)

    def _prefer(
        self, vhost: str, name: str, positions: dict[str, tuple[int, int]], best: tuple[int, int]
    ) -> str:
        """Among the replicas holding the most (any of them is safe), one that is neither the
        leader before the election (a transfer: drain, stop) nor draining."""
        state = self.queues.broker.state
        qdef = state.queue(vhost, name)
        avoid = set(state.draining) | ({qdef.leader} if qdef is not None else set())
        tied = sorted(r for r, p in positions.items() if p == best)
        return min(tied, key=lambda r: (r in avoid, r))

    async def _election(
        self, key: tuple[str, str, str], epoch: int, replicas: tuple[str, ...], propose_first: bool
    ) -> None:
        broker = self.queues.broker
        vhost, name, incarnation = key
        try:
            if propose_first:
                await broker.propose(cmds.QueueElection(vhost, name, incarnation, epoch))
            live = self.live()
            asked = [r for r in replicas if r in live]
            answers = await asyncio.gather(
                *(self.queues.links.position(r, key, epoch) for r in asked)
            )
            positions = {r: p for r, p in zip(asked, answers, strict=True) if p is not None}
            leader = choose_leader(replicas, positions)
            if leader is not None:
                leader = self._prefer(vhost, name, positions, positions[leader])
            if leader is None:
                log.warning(
                    "queue '%s' in vhost '%s': no new leader for epoch %d yet: %d of %d "
                    "replicas answer, a majority must",
                    name,
                    vhost,
                    epoch,
                    len(positions),
                    len(replicas),
                )
                await asyncio.sleep(1.0)  # the next tick tries again
                return
            await broker.propose(cmds.QueueLeader(vhost, name, incarnation, epoch, leader))
            self.elections += 1
        except MetadataError as e:
            log.debug("election for queue '%s' refused: %s", name, e.text)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - Raft unavailable: the next tick tries again
            log.info("election for queue '%s' not done: %s", name, e)
            await asyncio.sleep(1.0)
