"""Draining a node: it gets no new queues, and every queue it leads moves to other nodes with all its
messages, so that it can stop (a Kubernetes preStop hook) or leave the cluster (scale down).

`drain_node` runs on whichever node's management API is asked (`merpati ctl drain-node`):

1. checks: the node is a member, and some other member is live and not draining (a one-member
   cluster gets a DrainError saying there is no other node);
2. SetNodeDraining(node): from now on placement (membership.place_queue) skips it;
3. each non-exclusive queue it leads moves (MoveQueue) to the live, not draining member leading
   the fewest queues at that point. Exclusive queues stay: they live and die with their
   connection. The drained node's handover (cluster/handover.py) then sends the messages;
4. waits until the metadata says the node holds nothing more of any of them (its QueueHandedOver
   for each), or the timeout; a queue declared on the node meanwhile (placed before the flag was
   applied everywhere) is moved too;
5. reports what moved, what is still being handed over (with the figures the drained node has,
   when it is this node) and what did not move, and why.

The flag stays until `undrain` (SetNodeDraining(node, False)) or the node's next start
(NodeStarted): a node that comes back after the stop the drain was for takes queues again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from merpati.node.metadata.commands import MoveQueue, QueueElection, SetNodeDraining
from merpati.node.metadata.state import MetadataError

DEFAULT_TIMEOUT = 60.0
# How often the wait looks at the metadata, and how many times it looks for queues placed on the
# node while the drain ran.
POLL = 0.1
PASSES = 3


class DrainError(ValueError):
    """The drain cannot start (the message says why); `status` is the HTTP status to answer."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.status = status


def _led_by(state: Any, node: str) -> list[Any]:
    return [
        q
        for vh in sorted(state.vhosts.values(), key=lambda v: v.name)
        for q in sorted(vh.queues.values(), key=lambda q: q.name)
        if q.leader == node
    ]


def _leader_counts(state: Any, nodes: set[str]) -> dict[str, int]:
    counts = dict.fromkeys(nodes, 0)
    for vh in state.vhosts.values():
        for q in vh.queues.values():
            if q.leader in counts:
                counts[q.leader] += 1
    return counts


async def drain_node(
    broker: Any, plan: Any, node: str, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Drain `node` (see the module docstring); returns the report."""
    started = time.monotonic()
    state = broker.state
    if node not in plan.membership.members and node not in state.members:
        raise DrainError(f"no node '{node}' in the cluster", 404)
    if len(plan.membership.members) < 2:
        raise DrainError(
            f"node '{node}' is the only node of the cluster: there is no other node to move its "
            "queues to"
        )
    live = plan.membership.live()
    targets = live - {node} - state.draining
    if not targets:
        raise DrainError(
            f"no other running node that is not draining to move the queues of '{node}' to "
            f"(running: {', '.join(sorted(live)) or 'none'}; draining: "
            f"{', '.join(sorted(state.draining)) or 'none'})"
        )
    await broker.propose(SetNodeDraining(node, True))

    moved: dict[tuple[str, str], str] = {}  # (vhost, queue) -> new leader
    not_moved: dict[tuple[str, str], str] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for _ in range(PASSES):
        await _move_all(broker, node, targets, moved, not_moved)
        # Wait until the node holds nothing of them (QueueHandedOver), or the timeout.
        while loop.time() < deadline and (_waiting_for(state, node) or _electing(state, node)):
            await asyncio.sleep(POLL)
        if loop.time() >= deadline or not _movable(state, node, not_moved):
            break
    return _report(broker, plan, node, moved, not_moved, time.monotonic() - started)


def _movable(state: Any, node: str, not_moved: dict[tuple[str, str], str]) -> list[Any]:
    return [
        q
        for q in _led_by(state, node)
        if q.exclusive_owner is None and (q.vhost, q.name) not in not_moved
    ]


def _electing(state: Any, node: str) -> bool:
    """A replicated queue the node leads is choosing another leader."""
    return any(q.electing and q.replicated for q in _led_by(state, node))


def _waiting_for(state: Any, node: str) -> list[tuple[str, str]]:
    """Queues the node still holds messages of, after their leadership moved."""
    return [
        (vh.name, q.name)
        for vh in state.vhosts.values()
        for q in vh.queues.values()
        if node in q.handing_over
    ]


async def _move_all(
    broker: Any,
    node: str,
    targets: set[str],
    moved: dict[tuple[str, str], str],
    not_moved: dict[tuple[str, str], str],
) -> None:
    state = broker.state
    counts = _leader_counts(state, targets)
    for q in _led_by(state, node):
        key = (q.vhost, q.name)
        if q.exclusive_owner is not None:
            not_moved[key] = "exclusive: it stays with its connection and goes when it closes"
            continue
        if key in not_moved:
            continue
        if q.replicated:
            # Its replicas hold the messages already: only the leadership moves, by an
            # election the controller prefers another replica in (drain_node waits for it).
            if not q.electing:
                try:
                    await broker.propose(QueueElection(q.vhost, q.name, q.incarnation, q.epoch + 1))
                except Exception as e:  # noqa: BLE001 - refused or not committed: reported
                    not_moved[key] = f"the leader election was not started: {e}"
                    continue
            moved[key] = ""
            continue
        # Least loaded first; ties by node id, so the same state gives the same plan.
        to = min(sorted(counts), key=lambda n: counts[n])
        try:
            await broker.propose(MoveQueue(q.vhost, q.name, node, to))
        except MetadataError as e:
            if state.queue(q.vhost, q.name) is not None:  # deleted meanwhile: nothing to report
                not_moved[key] = e.text
            continue
        except Exception as e:  # noqa: BLE001 - Raft unavailable: report it, go on with the rest
            not_moved[key] = f"the move was not committed: {e}"
            continue
        counts[to] += 1
        moved[key] = to


def _report(
    broker: Any,
    plan: Any,
    node: str,
    moved: dict[tuple[str, str], str],
    not_moved: dict[tuple[str, str], str],
    elapsed: float,
) -> dict[str, Any]:
    state = broker.state
    # What this node knows of its own handovers (the drained node is usually the one asked).
    local = {}
    if node == broker.node_id:
        for h in plan.moves.handovers:
            p = local.setdefault((h.vhost, h.name), {"remaining": 0, "unacked": 0, "error": ""})
            p["remaining"] += h.remaining
            p["unacked"] += h.unacked
            p["error"] = p["error"] or h.last_error
    waiting = set(_waiting_for(state, node))
    done_moves, pending = [], []
    for (vhost, name), to in sorted(moved.items()):
        qdef = state.queue(vhost, name)
        if qdef is not None and qdef.replicated:
            if qdef.leader == node:
                continue  # elected again (its followers were behind): listed under not_moved
            to = qdef.leader
        entry = {"vhost": vhost, "queue": name, "to": to}
        if (vhost, name) in waiting:
            entry.update(local.get((vhost, name), {}))
            pending.append(entry)
        else:
            done_moves.append(entry)
    # Handovers under way from an earlier drain or rebalance are part of the answer too.
    for vhost, name in sorted(waiting - set(moved)):
        qdef = state.queue(vhost, name)
        entry = {"vhost": vhost, "queue": name, "to": qdef.leader if qdef else None}
        entry.update(local.get((vhost, name), {}))
        pending.append(entry)
    leads = [
        {"vhost": q.vhost, "queue": q.name, "reason": not_moved.get((q.vhost, q.name), "")}
        for q in _led_by(state, node)
    ]
    for row in leads:
        qdef = state.queue(row["vhost"], row["queue"])
        if not row["reason"] and qdef is not None and qdef.replicated:
            row["reason"] = (
                "quorum queue: no other replica was as far as this one when it was fenced "
                "(or no majority answered); drain again"
            )
        if not row["reason"]:
            row["reason"] = "declared on the node during the drain"
    report: dict[str, Any] = {
        "node": node,
        "draining": node in state.draining,
        "complete": not pending and all(r["reason"].startswith("exclusive") for r in leads),
        "moved": done_moves,
        "pending": pending,
        "not_moved": leads,
        "seconds": round(elapsed, 3),
    }
    if node not in plan.membership.live():
        report["note"] = (
            f"node '{node}' is not running: its messages stay on its disk and are handed over "
            "when it starts again"
        )
    return report


async def undrain_node(broker: Any, plan: Any, node: str) -> dict[str, Any]:
    if node not in plan.membership.members and node not in broker.state.members:
        raise DrainError(f"no node '{node}' in the cluster", 404)
    result = await broker.propose(SetNodeDraining(node, False))
    return {"node": node, "draining": False, "changed": result == "undrained"}
