"""A Jepsen-style "total queue" checker for replicated queues, independent of how faults are made.

Publishers and consumers run in threads against a cluster while the test injects faults (see
tests/support/nemesis.py); afterwards the test heals everything, the consumers are stopped, a
final drain empties every queue from a surviving node, and `analyze` compares what was published
with what was delivered. Every client records what it saw in one shared `History`; the analysis is
a pure function of that history and of the fault windows (`Fault`), so it is unit-tested on
histories written by hand (tests/unit/test_total_queue_checker.py).

The workload:

- Publishers: one pika BlockingConnection each, publisher confirms, persistent messages with unique
  bodies `p{publisher}-{n}` to one queue each (publisher i to queue i mod #queues) through the
  default exchange, mandatory. A publish is *confirmed* only when basic.ack came back; a nack, a
  return (unroutable), a connection that died (or that the watchdog aborted) before the confirm is
  *not confirmed*: it may or may not be in the queue. Nothing is ever published again with the same
  body: the publisher goes on with n + 1 (after reconnecting when the connection died).
- Consumers: one connection each, subscribed to every queue, manual acks, prefetch (per consumer) 20,
  each delivery acked after a random delay up to `max_ack_delay` (so deliveries are usually
  outstanding when a fault hits), a few (`slow_ack_fraction`) only after 1 to 4 s (held across a
  failover). After acks a consumer does a synchronous round trip on the same channel (basic.qos) now and
  then: its answer proves the node read the acks before it. On any error the consumer reconnects
  (a new *session*); a broker's basic.cancel makes it subscribe again.
- Every client has a home node (clients spread over the nodes); when its connection fails it
  tries home, then other nodes at random, and it goes back home once home answers again.
- A watchdog aborts (shuts the socket of) a client operation blocked for longer than `op_timeout`
  and counts it in `stuck`: a confirm or a qos-ok that never comes from a node that runs.

The analysis (all times are the test process's monotonic clock; deliveries of one session are in
the order the client received them):

- lost: confirmed but never delivered (must be 0; the test may look in the queue's store to tell
  `stranded` ones, still in the queue but never handed out, from gone ones). unexpected:
  delivered but never published
  (must be 0); misrouted: delivered from another queue than the one it was published to (counted
  in unexpected too).
- duplicates: every delivery of a body after its first, each put in one kind:
  *acked-then-redelivered*: an earlier delivery of the body had been acked before this one
  arrived, and that ack is *known*: a later round trip on its channel proved the node had read it,
  the connection lived on for ACK_GRACE after that, and the session's node was not under a fault
  from the ack until then (a node paused, killed or cut off may drop what it was told). A broker
  guarantee while only a minority of nodes is faulty.
  *ack-unknown-then-redelivered*: an earlier delivery had been acked, but the ack is not known (its
  connection died or its node was under a fault).
  *unacked-then-redelivered*: no earlier delivery was acked (the normal redelivery after a
  connection or a leader was lost).
- wrong redelivered flag: a body delivered a second time with redelivered=False (must be 0): every
  delivery with the flag clear beyond one per body, and a single one that arrived more than
  REORDER_SLACK after another delivery of the body. A first delivery with the flag set is allowed
  (the broker may not know the earlier one never arrived) and only counted
  (`first_flagged_redelivered`).
- held by two: a body delivered to a second consumer (or again on the same channel) while an
  earlier delivery was outstanding on a connection that was alive (it did a round trip or received
  something after the second delivery) and not released (not acked, its connection not closed).
  Reported, split by whether it happened near a fault.
- order: per session, per (publisher, queue), first deliveries (first sighting of the body, flag
  clear) of confirmed messages must come in publish order. A message n arriving after m > n is a
  violation unless a redelivery of that queue (a delivery flagged, or a body seen again) or a fault
  window lies between the two deliveries (then it is counted as excused). Reported.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import pika
import pika.exceptions as pex

QUORUM = {"x-queue-type": "quorum"}

# A fault's effects last a little beyond its end (detection, elections, reconnects).
FAULT_GRACE = 3.0
# An ack is known only if its connection lived this long after the round trip that proved it read.
ACK_GRACE = 2.0
# Deliveries of one body less than this apart (in different client threads) are not ordered.
REORDER_SLACK = 0.25
# A client connected away from its home node goes back after this long, if home is up.
HOMESICK_AFTER = 3.0


# -- what happened -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str  # the node's id
    host: str
    port: int


@dataclass
class Fault:
    """A fault window: `nodes` are those it made faulty (killed, paused, on the minority side of a
    partition); `end` is when it was healed (None: still going)."""

    kind: str
    nodes: tuple[str, ...]
    start: float
    end: float | None = None
    detail: str = ""


class FaultLog:
    """Fault windows, recorded by whoever makes the faults, read by the analysis."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self._lock = threading.Lock()

    def begin(self, kind: str, nodes: Iterable[str], detail: str = "") -> Fault:
        f = Fault(kind, tuple(nodes), time.monotonic(), None, detail)
        with self._lock:
            self.faults.append(f)
        return f

    def end(self, fault: Fault) -> None:
        if fault.end is None:
            fault.end = time.monotonic()

    def end_all(self) -> None:
        for f in self.faults:
            self.end(f)


@dataclass
class Attempt:
    body: bytes
    publisher: int
    n: int
    queue: str
    node: str
    sent: float
    done: float | None = None
    outcome: str = "pending"  # confirmed | nacked | unroutable | unknown


@dataclass
class Session:
    sid: int
    client: str  # "c0", "c1", ... or "drain"
    node: str
    opened: float
    closed: float | None = None
    clean: bool = False  # closed by us, after a successful close handshake
    syncs: list[float] = field(default_factory=list)  # times round trips completed
    error: str = ""


@dataclass
class Delivery:
    seq: int
    body: bytes
    queue: str
    sid: int
    at: float
    redelivered: bool
    ack_sent: float | None = None


class History:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.attempts: dict[bytes, Attempt] = {}
        self.sessions: dict[int, Session] = {}
        self.deliveries: list[Delivery] = []
        self.stuck: list[str] = []
        self._sid = 0

    def session(self, client: str, node: str) -> Session:
        with self.lock:
            self._sid += 1
            s = Session(self._sid, client, node, time.monotonic())
            self.sessions[s.sid] = s
            return s

    def deliver(self, body: bytes, queue: str, sid: int, redelivered: bool) -> Delivery:
        with self.lock:
            d = Delivery(len(self.deliveries), body, queue, sid, time.monotonic(), redelivered)
            self.deliveries.append(d)
            return d

    def attempt(self, a: Attempt) -> None:
        with self.lock:
            self.attempts[a.body] = a

    def dump(self, path: str | os.PathLike) -> None:
        """Everything recorded, as JSON (times in seconds from the start), for a post-mortem."""

        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - self.t0, 4)

        with self.lock:
            out = {
                "attempts": [
                    {**asdict(a), "body": a.body.decode(), "sent": rel(a.sent), "done": rel(a.done)}
                    for a in self.attempts.values()
                ],
                "sessions": [
                    {
                        **asdict(s),
                        "opened": rel(s.opened),
                        "closed": rel(s.closed),
                        "syncs": [rel(t) for t in s.syncs],
                    }
                    for s in self.sessions.values()
                ],
                "deliveries": [
                    {
                        **asdict(d),
                        "body": d.body.decode(errors="replace"),
                        "at": rel(d.at),
                        "ack_sent": rel(d.ack_sent),
                    }
                    for d in self.deliveries
                ],
                "stuck": self.stuck,
            }
        with open(path, "w") as f:
            json.dump(out, f, indent=0)


# -- the analysis --------------------------------------------------------------------------------


@dataclass
class TotalQueueResult:
    attempted: int = 0
    confirmed: int = 0
    nacked: int = 0
    unroutable: int = 0
    unknown: int = 0
    delivered: int = 0  # distinct bodies delivered at least once
    deliveries: int = 0
    lost: int = 0
    unexpected: int = 0
    misrouted: int = 0
    unconfirmed_delivered: int = 0
    duplicates: int = 0
    acked_then_redelivered: int = 0
    ack_unknown_then_redelivered: int = 0
    unacked_then_redelivered: int = 0
    wrong_redelivered: int = 0
    first_flagged_redelivered: int = 0
    held_by_two: int = 0
    held_by_two_outside_faults: int = 0
    order_violations: int = 0
    order_excused: int = 0
    stuck: int = 0
    sessions: int = 0
    longest_without_confirm: float = 0.0  # seconds between two confirms (any publisher)
    longest_without_confirm_at: float = 0.0  # when that stretch began (from the start)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the test adds (e.g. it did not settle)
    lost_bodies: set[bytes] = field(default_factory=set, repr=False)
    # Of the lost, how many the queue still holds (found in its leader's store by the test, which
    # may look): confirmed and kept, but never delivered. None: nobody looked.
    stranded: int | None = None

    def _example(self, kind: str, text: str, limit: int = 8) -> None:
        ex = self.examples.setdefault(kind, [])
        if len(ex) < limit:
            ex.append(text)

    @property
    def summary(self) -> str:
        lines = [
            f"published {self.attempted} (confirmed {self.confirmed}, nacked {self.nacked}, "
            f"unroutable {self.unroutable}, unknown {self.unknown}); "
            f"delivered {self.delivered} distinct in {self.deliveries} deliveries over "
            f"{self.sessions} consumer sessions",
            f"lost {self.lost}"
            + (f" (of which still in the queue's store: {self.stranded})" if self.lost else "")
            + f", unexpected {self.unexpected} (misrouted {self.misrouted}), "
            f"unconfirmed but delivered {self.unconfirmed_delivered}",
            f"duplicates {self.duplicates}: acked-then-redelivered {self.acked_then_redelivered}, "
            f"ack-unknown-then-redelivered {self.ack_unknown_then_redelivered}, "
            f"unacked-then-redelivered {self.unacked_then_redelivered}",
            f"wrong redelivered flags {self.wrong_redelivered} (first deliveries flagged "
            f"{self.first_flagged_redelivered}); held by two at once {self.held_by_two} "
            f"({self.held_by_two_outside_faults} away from faults); order violations "
            f"{self.order_violations} (+{self.order_excused} excused by a redelivery or fault); "
            f"stuck client operations {self.stuck}; longest stretch without a confirm "
            f"{self.longest_without_confirm:.1f}s (from {self.longest_without_confirm_at:.1f}s)",
        ]
        lines.extend(f"note: {n}" for n in self.notes)
        for kind, texts in sorted(self.examples.items()):
            lines.append(f"  {kind}:")
            lines.extend(f"    {t}" for t in texts)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, float]:
        return {
            k: v
            for k, v in self.__dict__.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }


def _fault_windows(faults: Sequence[Fault], now: float) -> list[tuple[float, float, Fault]]:
    return [(f.start, (f.end if f.end is not None else now) + FAULT_GRACE, f) for f in faults]


def analyze(history: History, faults: Sequence[Fault] = ()) -> TotalQueueResult:
    """Compare what was published with what was delivered (see the module's docstring)."""
    with history.lock:
        attempts = dict(history.attempts)
        sessions = dict(history.sessions)
        deliveries = list(history.deliveries)
        stuck = list(history.stuck)
    t0 = history.t0
    now = time.monotonic()
    windows = _fault_windows(faults, now)
    r = TotalQueueResult()
    r.stuck = len(stuck)
    for s in stuck:
        r._example("stuck", s)
    r.sessions = len({d.sid for d in deliveries})

    def rel(t: float | None) -> str:
        return "never" if t is None else f"{t - t0:.2f}s"

    def faulty(node: str | None, a: float, b: float) -> bool:
        """A fault window that made `node` (None: any node) faulty overlaps [a, b]."""
        return any(s <= b and e >= a and (node is None or node in f.nodes) for s, e, f in windows)

    def ack_known(d: Delivery) -> bool:
        if d.ack_sent is None:
            return False
        s = sessions[d.sid]
        i = bisect.bisect_left(s.syncs, d.ack_sent)
        if i == len(s.syncs):
            return False
        proved = s.syncs[i]
        if not s.clean and s.closed is not None and s.closed < proved + ACK_GRACE:
            return False
        return not faulty(s.node, d.ack_sent, proved + ACK_GRACE)

    def where(d: Delivery) -> str:
        s = sessions[d.sid]
        return (
            f"{s.client}@{s.node}#{s.sid} at {rel(d.at)} redelivered={d.redelivered} "
            f"ack {rel(d.ack_sent)}{' (known)' if ack_known(d) else ''}"
        )

    # Publishing.
    r.attempted = len(attempts)
    by_outcome: dict[str, int] = defaultdict(int)
    for a in attempts.values():
        by_outcome[a.outcome] += 1
    r.confirmed = by_outcome["confirmed"]
    r.nacked = by_outcome["nacked"]
    r.unroutable = by_outcome["unroutable"]
    r.unknown = r.attempted - r.confirmed - r.nacked - r.unroutable
    confirmed = {b for b, a in attempts.items() if a.outcome == "confirmed"}
    times = sorted(a.done for a in attempts.values() if a.outcome == "confirmed" and a.done)
    for before, after in zip([t0, *times], times, strict=False):
        if after - before > r.longest_without_confirm:
            r.longest_without_confirm, r.longest_without_confirm_at = after - before, before - t0

    # Delivering.
    per_body: dict[bytes, list[Delivery]] = defaultdict(list)
    for d in deliveries:
        per_body[d.body].append(d)
    for ds in per_body.values():
        ds.sort(key=lambda d: (d.at, d.seq))
    r.deliveries = len(deliveries)
    r.delivered = len(per_body)
    for body in sorted(confirmed - per_body.keys()):
        r.lost += 1
        r.lost_bodies.add(body)
        a = attempts[body]
        r._example(
            "lost",
            f"{body.decode()} to {a.queue} via {a.node}, sent {rel(a.sent)}, "
            f"confirmed {rel(a.done)}",
        )
    for body, ds in per_body.items():
        a = attempts.get(body)
        if a is None:
            r.unexpected += 1
            r._example("unexpected", f"{body!r}: {where(ds[0])}")
            continue
        wrong_queue = [d for d in ds if d.queue != a.queue]
        if wrong_queue:
            r.unexpected += 1
            r.misrouted += 1
            r._example(
                "misrouted", f"{body.decode()} published to {a.queue}, from {wrong_queue[0].queue}"
            )
        if body not in confirmed:
            r.unconfirmed_delivered += 1

    # Duplicates, flags, two holders.
    last_delivery: dict[int, float] = {}
    for d in deliveries:
        last_delivery[d.sid] = max(d.at, last_delivery.get(d.sid, d.at))
    for body, ds in per_body.items():
        name = body.decode(errors="replace")
        if ds[0].redelivered:
            r.first_flagged_redelivered += 1
        for i in range(1, len(ds)):
            d = ds[i]
            r.duplicates += 1
            acked_before = [p for p in ds[:i] if p.ack_sent is not None and p.ack_sent < d.at]
            if any(ack_known(p) for p in acked_before):
                r.acked_then_redelivered += 1
                p = next(p for p in acked_before if ack_known(p))
                r._example(
                    "acked-then-redelivered",
                    f"{name}: first {where(p)}; again {where(d)}",
                )
            elif acked_before:
                r.ack_unknown_then_redelivered += 1
            else:
                r.unacked_then_redelivered += 1
        clear = [d for d in ds if not d.redelivered]
        wrong = max(0, len(clear) - 1)
        if len(clear) == 1 and clear[0] is not ds[0] and clear[0].at > ds[0].at + REORDER_SLACK:
            wrong = 1
        if wrong:
            r.wrong_redelivered += wrong
            r._example("wrong-redelivered", f"{name}: " + "; ".join(where(d) for d in ds))
        held = False
        for i in range(1, len(ds)):
            d = ds[i]
            for p in ds[:i]:
                s = sessions[p.sid]
                if p.ack_sent is not None and p.ack_sent <= d.at + REORDER_SLACK:
                    continue  # released by an ack (or too close to tell)
                if s.closed is not None and s.closed <= d.at + REORDER_SLACK:
                    continue  # released by its connection's end
                if d.at - p.at < REORDER_SLACK:
                    continue
                alive_after = (s.syncs and s.syncs[-1] > d.at) or last_delivery[p.sid] > d.at
                if not alive_after:
                    continue
                held = True
                near_fault = faulty(None, p.at, d.at)
                if not near_fault:
                    r.held_by_two_outside_faults += 1
                r._example(
                    "held-by-two" + ("" if near_fault else " (away from faults)"),
                    f"{name}: {where(p)}; and {where(d)}",
                )
                break
            if held:
                break
        if held:
            r.held_by_two += 1

    # Order of first deliveries, per session and (publisher, queue).
    first_seen = {body: ds[0] for body, ds in per_body.items()}
    redelivery_times: dict[str, list[float]] = defaultdict(list)
    for ds in per_body.values():
        for i, d in enumerate(ds):
            if d.redelivered or i > 0:
                redelivery_times[d.queue].append(d.at)
    for times in redelivery_times.values():
        times.sort()
    highest: dict[tuple[int, int, str], tuple[int, Delivery]] = {}
    for d in deliveries:  # in the order received (per session, that is the wire's order)
        a = attempts.get(d.body)
        if a is None or a.outcome != "confirmed" or d.redelivered or first_seen[d.body] is not d:
            continue
        key = (d.sid, a.publisher, a.queue)
        top = highest.get(key)
        if top is None or a.n > top[0]:
            highest[key] = (a.n, d)
            continue
        m, later = top
        lo, hi = later.at - REORDER_SLACK, d.at + REORDER_SLACK
        times = redelivery_times[a.queue]
        redelivery_between = bisect.bisect_left(times, lo) < bisect.bisect_right(times, hi)
        if redelivery_between or faulty(None, lo, hi):
            r.order_excused += 1
        else:
            r.order_violations += 1
            r._example(
                "order",
                f"p{a.publisher}-{a.n} ({where(d)}) after p{a.publisher}-{m} ({where(later)})",
            )
    return r


# -- the clients ---------------------------------------------------------------------------------

CONNECTION_ERRORS = (pex.AMQPError, OSError, AssertionError, ValueError, RuntimeError)


class _Client(threading.Thread):
    def __init__(self, wl: TotalQueue, name: str, index: int) -> None:
        super().__init__(name=f"total-queue-{name}", daemon=True)
        self.wl = wl
        self.client = name
        self.rng = random.Random(f"{wl.seed}-{name}")
        # Each client has a home node (clients of a kind on different nodes, from a node the
        # seed picks). When its connection fails it tries home first, then other nodes at random
        # (the clients of a node that died do not all crowd onto the same next one); away from
        # home, it goes back there once home answers again (`homesick`), so clients stay spread
        # over the nodes, as they are behind a load balancer, through a rolling restart too.
        n = len(wl.endpoints)
        self.home = wl.endpoints[(wl.first_endpoint + index) % n]
        self._next = (wl.first_endpoint + index) % n
        self._away_since = 0.0
        self.conn: pika.BlockingConnection | None = None
        self.node = ""
        self.busy_since: float | None = None  # a blocking call under way (for the watchdog)
        self.busy_what = ""
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def connect(self) -> pika.BlockingConnection | None:
        """Connect to the next endpoint in turn; None (after a short pause) when it fails."""
        n = len(self.wl.endpoints)
        ep = self.wl.endpoints[self._next % n]
        if n > 1:
            self._next += self.rng.randrange(1, n)  # if this fails: any other node
        params = pika.ConnectionParameters(
            ep.host,
            ep.port,
            credentials=pika.PlainCredentials(self.wl.user, self.wl.password),
            heartbeat=self.wl.heartbeat,
            connection_attempts=1,
            socket_timeout=3,
            stack_timeout=8,
            blocked_connection_timeout=30,
        )
        try:
            self.conn = pika.BlockingConnection(params)
        except CONNECTION_ERRORS:
            self.conn = None
            self.stop_event.wait(0.3)
            return None
        self.node = ep.name
        self._next = self.wl.endpoints.index(self.home)  # after the next failure: home first
        self._away_since = 0.0 if ep == self.home else time.monotonic()
        return self.conn

    def homesick(self) -> bool:
        """Away from home for a while, and home accepts connections again: time to go back
        (checked between operations, with nothing in flight)."""
        if not self._away_since or time.monotonic() - self._away_since < HOMESICK_AFTER:
            return False
        self._away_since = time.monotonic()  # check again later if home is still down
        try:
            with socket.create_connection((self.home.host, self.home.port), timeout=0.5):
                return True
        except OSError:
            return False

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except CONNECTION_ERRORS:
                pass

    def busy(self, what: str) -> None:
        self.busy_what = what
        self.busy_since = time.monotonic()

    def idle(self) -> None:
        self.busy_since = None

    def abort_if_stuck(self, now: float) -> None:
        since = self.busy_since
        if since is None or now - since < self.wl.op_timeout:
            return
        self.busy_since = None
        conn = self.conn
        with self.wl.history.lock:
            self.wl.history.stuck.append(
                f"{self.client}@{self.node}: {self.busy_what} blocked {now - since:.1f}s from "
                f"{since - self.wl.history.t0:.2f}s"
            )
        try:
            sock = conn._impl._transport._sock  # type: ignore[union-attr]
            sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # noqa: BLE001 - gone already
            pass

    def run(self) -> None:
        try:
            self.work()
        except BaseException as e:  # noqa: BLE001 - reported by the workload
            self.error = e
        finally:
            self.drop()


class Publisher(_Client):
    def __init__(self, wl: TotalQueue, index: int) -> None:
        super().__init__(wl, f"p{index}", index)
        self.index = index
        self.queue = wl.queues[index % len(wl.queues)]
        self.n = 0

    def work(self) -> None:
        h = self.wl.history
        interval = 1.0 / self.wl.publish_rate if self.wl.publish_rate else 0.0
        ch = None
        while not self.stop_event.is_set():
            if self.conn is None:
                ch = None
                if self.connect() is None:
                    continue
                try:
                    ch = self.conn.channel()
                    ch.confirm_delivery()
                except CONNECTION_ERRORS:
                    self.drop()
                    continue
            self.n += 1
            body = b"p%d-%d" % (self.index, self.n)
            a = Attempt(body, self.index, self.n, self.queue, self.node, time.monotonic())
            h.attempt(a)
            self.busy("publish")
            try:
                ch.basic_publish(
                    "",
                    self.queue,
                    body,
                    pika.BasicProperties(delivery_mode=2),
                    mandatory=True,
                )
                a.outcome = "confirmed"
            except pex.NackError:
                a.outcome = "nacked"
            except pex.UnroutableError:
                a.outcome = "unroutable"
            except CONNECTION_ERRORS:
                a.outcome = "unknown"
                self.idle()
                a.done = time.monotonic()
                self.drop()
                continue
            finally:
                self.idle()
            a.done = time.monotonic()
            if self.homesick():
                self.drop()  # nothing in flight: reconnect at home
                continue
            if interval:
                try:
                    self.conn.sleep(max(0.0, interval - (a.done - a.sent)))
                except CONNECTION_ERRORS:
                    self.drop()


class Consumer(_Client):
    def __init__(self, wl: TotalQueue, index: int) -> None:
        super().__init__(wl, f"c{index}", index)
        self.session: Session | None = None
        self.last_delivery = time.monotonic()

    def work(self) -> None:
        while not self.stop_event.is_set():
            if self.conn is None and self.connect() is None:
                continue
            s = self.wl.history.session(self.client, self.node)
            self.session = s
            try:
                self.consume(s)
                s.clean = True
            except CONNECTION_ERRORS as e:
                s.error = repr(e)[:200]
                self.busy("close after an error")
                self.drop()
                self.idle()
            finally:
                s.closed = time.monotonic()

    def consume(self, s: Session) -> None:
        wl, h, rng = self.wl, self.wl.history, self.rng
        assert self.conn is not None
        ch = self.conn.channel()
        held: dict[int, tuple[float, Delivery]] = {}  # tag -> (ack due, delivery)
        tags: dict[str, str] = {}  # consumer tag -> queue
        cancelled: list[str] = []

        def on_message(_ch, method, _props, body) -> None:
            d = h.deliver(
                body,
                tags.get(method.consumer_tag, method.routing_key),
                s.sid,
                bool(method.redelivered),
            )
            self.last_delivery = d.at
            delay = rng.uniform(0, wl.max_ack_delay)
            if rng.random() < wl.slow_ack_fraction:
                delay = rng.uniform(*wl.slow_ack_delay)  # held across a failover, now and then
            held[method.delivery_tag] = (d.at + delay, d)

        def on_cancel(frame) -> None:
            cancelled.append(frame.method.consumer_tag)

        def sync() -> None:
            self.busy("basic.qos round trip")
            ch.basic_qos(prefetch_count=wl.prefetch)
            self.idle()
            s.syncs.append(time.monotonic())

        def ack_due(everything: bool) -> int:
            now = time.monotonic()
            n = 0
            for tag, (due, d) in sorted(held.items()):
                if everything or due <= now:
                    d.ack_sent = time.monotonic()
                    try:
                        ch.basic_ack(tag)
                    except BaseException:
                        d.ack_sent = None
                        raise
                    del held[tag]
                    n += 1
            return n

        ch.add_on_cancel_callback(on_cancel)
        sync()
        for q in wl.queues:
            tags[ch.basic_consume(q, on_message)] = q
        unsynced = 0
        last_sync = time.monotonic()
        while not self.stop_event.is_set() and not self.homesick():
            self.busy("process_data_events")
            self.conn.process_data_events(time_limit=0.05)
            self.idle()
            while cancelled:
                q = tags.pop(cancelled.pop(), None)
                if q is not None:
                    tags[ch.basic_consume(q, on_message)] = q
            unsynced += ack_due(False)
            if unsynced and time.monotonic() - last_sync > 0.25:
                sync()
                unsynced, last_sync = 0, time.monotonic()
        # Stopping (or going home): no more deliveries (pika requeues what arrived but was not
        # dispatched), ack everything held, prove the acks were read, close.
        for tag in list(tags):
            self.busy("basic.cancel")
            ch.basic_cancel(tag)
            self.idle()
        ack_due(True)
        sync()
        self.busy("connection.close")
        conn, self.conn = self.conn, None
        conn.close()
        self.idle()
        s.syncs.append(time.monotonic())


class TotalQueue:
    """The workload and its history. Typical use:

    wl = TotalQueue(endpoints, queues, seed=seed)
    wl.declare()
    wl.start()
    ... faults (recorded in a FaultLog), then heal ...
    result = wl.finish(drain_from=endpoint, faults=faults.faults)
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        queues: Sequence[str],
        *,
        publishers: int = 2,
        consumers: int = 2,
        prefetch: int = 20,
        publish_rate: float = 50.0,
        max_ack_delay: float = 0.3,
        slow_ack_fraction: float = 0.02,
        slow_ack_delay: tuple[float, float] = (1.0, 4.0),
        seed: int | str = 0,
        heartbeat: int = 5,
        op_timeout: float = 30.0,
        user: str = "guest",
        password: str = "guest",
        log: Callable[[str], None] = print,
    ) -> None:
        self.endpoints = list(endpoints)
        self.queues = list(queues)
        self.prefetch = prefetch
        self.publish_rate = publish_rate
        self.max_ack_delay = max_ack_delay
        self.slow_ack_fraction = slow_ack_fraction
        self.slow_ack_delay = slow_ack_delay
        self.seed = seed
        self.heartbeat = heartbeat
        self.op_timeout = op_timeout
        self.user, self.password = user, password
        self.log = log
        self.history = History()
        self.first_endpoint = random.Random(f"{seed}-endpoints").randrange(len(self.endpoints))
        self.publishers = [Publisher(self, i) for i in range(publishers)]
        self.consumers = [Consumer(self, i) for i in range(consumers)]
        self._watchdog_stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, daemon=True, name="tq-watchdog")

    def _params(self, ep: Endpoint) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            ep.host,
            ep.port,
            credentials=pika.PlainCredentials(self.user, self.password),
            connection_attempts=3,
            retry_delay=0.5,
            socket_timeout=5,
            heartbeat=self.heartbeat,
        )

    def declare(self, arguments: dict | None = None, timeout: float = 30.0) -> None:
        """Declare the queues (quorum by default) through the first endpoint that answers."""
        deadline = time.monotonic() + timeout
        while True:
            for ep in self.endpoints:
                try:
                    conn = pika.BlockingConnection(self._params(ep))
                    ch = conn.channel()
                    for q in self.queues:
                        ch.queue_declare(q, durable=True, arguments=arguments or QUORUM)
                    conn.close()
                    return
                except CONNECTION_ERRORS as e:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"cannot declare {self.queues}: {e!r}")
            time.sleep(0.5)

    def start(self) -> None:
        self.history.t0 = time.monotonic()
        self._watchdog.start()
        for c in self.consumers:
            c.start()
        for p in self.publishers:
            p.start()

    def _watch(self) -> None:
        while not self._watchdog_stop.wait(0.5):
            now = time.monotonic()
            for c in (*self.publishers, *self.consumers):
                c.abort_if_stuck(now)

    def progress(self) -> str:
        h = self.history
        with h.lock:
            outcomes: dict[str, int] = defaultdict(int)
            for a in h.attempts.values():
                outcomes[a.outcome] += 1
            n = len(h.deliveries)
        return (
            f"t={time.monotonic() - h.t0:.1f}s published {dict(outcomes)}, deliveries {n}, "
            f"consumers on {[c.node or '-' for c in self.consumers]}, "
            f"publishers on {[p.node or '-' for p in self.publishers]}"
        )

    def stop_publishers(self, timeout: float = 60.0) -> None:
        for p in self.publishers:
            p.stop_event.set()
        for p in self.publishers:
            p.join(timeout)
            if p.is_alive():
                raise AssertionError(f"publisher {p.client} did not stop: {p.busy_what}")
            if p.error is not None:
                raise AssertionError(f"publisher {p.client} failed: {p.error!r}") from p.error

    def quiesce(self, idle: float = 3.0, timeout: float = 60.0) -> bool:
        """Let the consumers go on until none received anything for `idle` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = max(c.last_delivery for c in self.consumers) if self.consumers else 0.0
            if time.monotonic() - last >= idle:
                return True
            time.sleep(0.2)
        return False

    def stop_consumers(self, timeout: float = 60.0) -> None:
        for c in self.consumers:
            c.stop_event.set()
        for c in self.consumers:
            c.join(timeout)
            if c.is_alive():
                raise AssertionError(f"consumer {c.client} did not stop: {c.busy_what}")
            if c.error is not None:
                raise AssertionError(f"consumer {c.client} failed: {c.error!r}") from c.error
        self._watchdog_stop.set()

    def drain(self, endpoint: Endpoint, empty_wait: float = 1.5, timeout: float = 120.0) -> int:
        """Get (and ack) everything left in every queue through `endpoint`: a queue counts as
        empty after two empty answers `empty_wait` apart (a new leader may hold back deliveries
        of its predecessor for a moment). Returns how many messages it got."""
        h = self.history
        deadline = time.monotonic() + timeout
        got = 0
        while True:
            try:
                conn = pika.BlockingConnection(self._params(endpoint))
                break
            except CONNECTION_ERRORS:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        s = h.session("drain", endpoint.name)
        ch = conn.channel()
        for q in self.queues:
            empty = 0
            while empty < 2:
                if time.monotonic() > deadline:
                    raise AssertionError(f"draining {q} took longer than {timeout}s")
                method, _props, body = ch.basic_get(q, auto_ack=False)
                if method is None:
                    empty += 1
                    if empty == 1:
                        time.sleep(empty_wait)
                    continue
                empty = 0
                got += 1
                d = h.deliver(body, q, s.sid, bool(method.redelivered))
                d.ack_sent = time.monotonic()
                ch.basic_ack(method.delivery_tag)
            ch.basic_qos(prefetch_count=1)
            s.syncs.append(time.monotonic())
        conn.close()
        s.closed = time.monotonic()
        s.syncs.append(s.closed)
        s.clean = True
        return got

    def finish(
        self,
        drain_from: Endpoint,
        faults: Sequence[Fault] = (),
        quiesce_timeout: float = 60.0,
    ) -> TotalQueueResult:
        """Stop publishing, let the consumers catch up, stop them, drain, analyze."""
        self.stop_publishers()
        self.log(f"publishers stopped: {self.progress()}")
        if not self.quiesce(timeout=quiesce_timeout):
            self.log("consumers still receiving when stopped")
        self.stop_consumers()
        left = self.drain(drain_from)
        self.log(f"drained {left} message(s) from {drain_from.name}")
        return analyze(self.history, faults)

    def abort(self) -> None:
        """Stop every thread without waiting long (a failed test's cleanup)."""
        for c in (*self.publishers, *self.consumers):
            c.stop_event.set()
        self._watchdog_stop.set()
