"""Faults for cluster tests (the "nemesis"), recorded as windows in a FaultLog for the checker
(tests/support/total_queue.py): SIGKILL and restart, SIGSTOP/SIGCONT, SIGTERM and restart, and
network partitions when the cluster runs in network namespaces (tests/support/netns.py).

`cluster` is anything with `.nodes` ({node id: NodeProcess}); `net` is its Network, or None (then
partitions are not offered). The management API answers which node leads a queue.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.http import call
from tests.support.total_queue import Endpoint, Fault, FaultLog


def endpoints(cluster: Any) -> list[Endpoint]:
    return [Endpoint(name, n.host, n.port) for name, n in cluster.nodes.items()]


def qpath(name: str, vhost: str = "/") -> str:
    return f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(name, safe='')}"


class Nemesis:
    def __init__(
        self,
        cluster: Any,
        faults: FaultLog | None = None,
        net: Any = None,
        log: Callable[[str], None] = print,
        t0: float | None = None,
    ) -> None:
        self.cluster = cluster
        self.net = net
        self.faults = faults if faults is not None else FaultLog()
        self.log = log
        self.t0 = time.monotonic() if t0 is None else t0
        self.killed: dict[str, Fault] = {}
        self.paused: dict[str, Fault] = {}
        self.partition_fault: Fault | None = None

    @property
    def nodes(self) -> dict[str, Any]:
        return self.cluster.nodes

    def say(self, text: str) -> None:
        self.log(f"[nemesis {time.monotonic() - self.t0:6.1f}s] {text}")

    # -- looking -----------------------------------------------------------------------------

    def up(self) -> list[str]:
        """Nodes running, not paused."""
        return [n for n, p in self.nodes.items() if p.alive() and n not in self.paused]

    def ask(self, path: str, avoid: Iterable[str] = ()) -> Any:
        """GET `path` from the first healthy node that answers 200 (None if none does)."""
        cut_off = self._minority()
        for name in self.up():
            if name in avoid or name in cut_off:
                continue
            try:
                status, body = call(self.nodes[name].management_url, "GET", path)
            except OSError:
                continue
            if status == 200:
                return body
        return None

    def leader_of(self, queue: str) -> str | None:
        info = self.ask(qpath(queue))
        return info.get("leader") if isinstance(info, dict) else None

    def _minority(self) -> set[str]:
        f = self.partition_fault
        return set(f.nodes) if f is not None and f.end is None else set()

    # -- faults ------------------------------------------------------------------------------

    def kill(self, node: str) -> Fault:
        self.say(f"SIGKILL {node}")
        f = self.faults.begin("kill", [node])
        self.nodes[node].stop(sig=signal.SIGKILL)
        self.killed[node] = f
        return f

    def restart(self, node: str, timeout: float = 90.0) -> None:
        f = self.killed.pop(node, None)
        self.say(f"restart {node}")
        self.nodes[node].start(timeout=timeout)
        self.say(f"{node} ready")
        if f is not None:
            self.faults.end(f)

    def terminate(self, node: str) -> Fault:
        """SIGTERM (a clean stop: the node hands its quorum queues over first)."""
        self.say(f"SIGTERM {node}")
        f = self.faults.begin("term", [node])
        t = time.monotonic()
        self.nodes[node].stop(sig=signal.SIGTERM, timeout=60)
        self.say(f"{node} stopped after {time.monotonic() - t:.1f}s")
        self.killed[node] = f
        return f

    def pause(self, node: str) -> Fault:
        self.say(f"SIGSTOP {node}")
        f = self.faults.begin("pause", [node])
        self.nodes[node].proc.send_signal(signal.SIGSTOP)
        self.paused[node] = f
        return f

    def resume(self, node: str) -> None:
        f = self.paused.pop(node, None)
        self.say(f"SIGCONT {node}")
        self.nodes[node].proc.send_signal(signal.SIGCONT)
        if f is not None:
            self.faults.end(f)

    def partition(self, minority: Iterable[str], clients: bool = False) -> Fault:
        """Cut `minority` from the other nodes (with `clients`, from the test process too)."""
        assert self.net is not None, "partitions need a cluster in network namespaces"
        minority = sorted(minority)
        rest = sorted(set(self.nodes) - set(minority))
        self.say(f"partition {minority} | {rest}" + (" (clients cut too)" if clients else ""))
        f = self.faults.begin(
            "partition", minority, f"{minority}|{rest}{' +clients' if clients else ''}"
        )
        self.net.partition([minority, rest])
        if clients:
            for n in minority:
                self.net._drop(n, self.net.gateway)
        self.partition_fault = f
        return f

    def bridge(self, a: str, b: str) -> Fault:
        """Cut the link a-b only: every other node sees both (each still sees a majority in a
        three-node cluster)."""
        assert self.net is not None, "partitions need a cluster in network namespaces"
        self.say(f"cut link {a} -- {b} (the others see both)")
        f = self.faults.begin("bridge", [a, b], f"{a}-x-{b}")
        self.net.cut_links([(a, b)])
        self.partition_fault = f
        return f

    def heal_network(self) -> None:
        if self.net is None:
            return
        self.net.heal()
        if self.partition_fault is not None and self.partition_fault.end is None:
            self.say("heal network")
            self.faults.end(self.partition_fault)
        self.partition_fault = None

    def heal_all(self) -> None:
        """Resume paused nodes, heal the network, restart the stopped ones."""
        for n in list(self.paused):
            self.resume(n)
        self.heal_network()
        for n in list(self.killed):
            self.restart(n)
        for n, p in self.nodes.items():
            if not p.alive():
                self.restart(n)

    # -- settling ----------------------------------------------------------------------------

    def wait_settled(self, queues: Sequence[str], timeout: float = 90.0) -> float:
        """Wait until every queue has a leader on a live node, all its replicas online, no
        election under way, no follower lagging as the leader sees it, and every replica holding
        durably all that the leader has committed, as the replica itself says (a follower that
        stopped fetching can look in sync to a leader that counts its last fetch); returns how
        long it took."""
        t = time.monotonic()
        deadline = t + timeout
        last: Any = None
        while time.monotonic() < deadline:
            ok = True
            for q in queues:
                st = self.ask("/api/merpati/quorum/%2F/" + urllib.parse.quote(q, safe=""))
                last = st
                if not isinstance(st, dict) or st.get("electing"):
                    ok = False
                    break
                members = st.get("members") or []
                leader = next((m for m in members if m.get("node") == st.get("leader")), {})
                commit = leader.get("commit", 1 << 62)
                if st.get("leader") not in self.up() or not all(
                    m.get("online") and m.get("lag") == 0 and m.get("durable", -1) >= commit
                    for m in members
                ):
                    ok = False
                    break
            if ok:
                return time.monotonic() - t
            time.sleep(0.5)
        raise AssertionError(
            f"the queues did not settle within {timeout}s; last answer: {last}\n"
            + self.replica_views(queues)
        )

    def stored(self, node: str, queue: str, vhost: str = "/") -> set[bytes]:
        """The bodies `node`'s store holds for the queue (its replica's applied state: for the
        leader, the queue's messages, delivered or not), read from its SQLite file."""
        path = self.nodes[node].dir / "data" / "messages.db"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            row = db.execute(
                "SELECT qid FROM queues WHERE vhost = ? AND name = ?", (vhost, queue)
            ).fetchone()
            if row is None:
                return set()
            qid = row[0]
            rows = db.execute(
                "SELECT body FROM messages WHERE id >= ? AND id < ?", (qid << 40, (qid + 1) << 40)
            ).fetchall()
        finally:
            db.close()
        return {bytes(r[0]) for r in rows}

    def queue_views(self, queues: Sequence[str]) -> str:
        """Each node's view of each queue: leader, epoch, messages ready and unacknowledged,
        consumers (for a failure's message)."""
        lines = []
        for q in queues:
            for name in self.up():
                try:
                    status, b = call(self.nodes[name].management_url, "GET", qpath(q))
                except OSError as e:
                    lines.append(f"  {q} @ {name}: {e}")
                    continue
                if not isinstance(b, dict):
                    lines.append(f"  {q} @ {name}: {status} {b}")
                    continue
                lines.append(
                    f"  {q} @ {name}: leader={b.get('leader')} epoch={b.get('epoch')} "
                    f"ready={b.get('messages_ready')} unacked={b.get('messages_unacknowledged')} "
                    f"consumers={b.get('consumers')} online={b.get('online')}"
                )
        return "queue views:\n" + "\n".join(lines)

    def replica_views(self, queues: Sequence[str]) -> str:
        """Each node's own view of its replica of each queue (for a failure's message)."""
        lines = []
        for q in queues:
            for name in self.up():
                try:
                    status, body = call(self.nodes[name].management_url, "GET", qpath(q))
                except OSError as e:
                    lines.append(f"  {q} @ {name}: {e}")
                    continue
                view = body.get("replica") if isinstance(body, dict) else body
                lines.append(f"  {q} @ {name}: {status} leader={_get(body, 'leader')} {view}")
        return "replica views:\n" + "\n".join(lines)


def _get(body: Any, key: str) -> Any:
    return body.get(key) if isinstance(body, dict) else None


# -- random schedules ----------------------------------------------------------------------------


@dataclass
class Step:
    kind: str  # kill | pause | term | partition | partition+clients | bridge
    target: str  # "leader:QUEUE" or a node id (or "a,b" for bridge)
    hold: float  # seconds the fault lasts
    gap: float  # seconds of calm after it healed

    def __str__(self) -> str:
        return f"{self.kind}({self.target}) {self.hold:.1f}s, then {self.gap:.1f}s calm"


def random_schedule(
    rng: random.Random,
    nodes: Sequence[str],
    queues: Sequence[str],
    duration: float,
    partitions: bool,
) -> list[Step]:
    """Faults one at a time (never more than a minority), until `duration` seconds are filled."""
    kinds = ["kill", "kill", "pause", "pause", "term"]
    if partitions:
        kinds += ["partition", "partition", "partition+clients", "bridge"]
    steps: list[Step] = []
    total = 0.0
    while total < duration:
        kind = rng.choice(kinds)
        if kind == "bridge":
            a, b = rng.sample(list(nodes), 2)
            target = f"{a},{b}"
        elif rng.random() < 0.6:
            target = f"leader:{rng.choice(list(queues))}"
        else:
            target = rng.choice(list(nodes))
        hold = {
            "kill": rng.uniform(0.5, 6.0),
            "term": rng.uniform(0.5, 4.0),
            "pause": rng.uniform(1.0, 8.0),
        }.get(kind, rng.uniform(2.0, 10.0))
        gap = rng.uniform(1.0, 6.0)
        steps.append(Step(kind, target, hold, gap))
        total += hold + gap
    return steps


def run_schedule(
    nemesis: Nemesis, steps: Sequence[Step], between: Callable[[], None] = lambda: None
):
    for step in steps:
        target = step.target
        if target.startswith("leader:"):
            target = nemesis.leader_of(target.split(":", 1)[1]) or sorted(nemesis.up())[0]
        nemesis.say(f"step: {step} -> {target}")
        if step.kind == "kill":
            nemesis.kill(target)
            time.sleep(step.hold)
            nemesis.restart(target)
        elif step.kind == "term":
            nemesis.terminate(target)
            time.sleep(step.hold)
            nemesis.restart(target)
        elif step.kind == "pause":
            nemesis.pause(target)
            time.sleep(step.hold)
            nemesis.resume(target)
        elif step.kind in ("partition", "partition+clients"):
            nemesis.partition([target], clients=step.kind.endswith("clients"))
            time.sleep(step.hold)
            nemesis.heal_network()
        elif step.kind == "bridge":
            a, b = target.split(",")
            nemesis.bridge(a, b)
            time.sleep(step.hold)
            nemesis.heal_network()
        else:
            raise ValueError(step.kind)
        between()
        time.sleep(step.gap)
