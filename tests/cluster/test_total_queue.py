"""Jepsen-style "total queue" runs against quorum queues: publishers with confirms and consumers
with manual acks on every node while nodes are killed, paused and cut off; afterwards everything
is healed, the queues drained, and the history checked (tests/support/total_queue.py).

A run is a module-scoped fixture; each property is a test of its own reading that run's result,
so a failing property shows by name while the others are still checked.

The short run is part of the normal suite (about a minute): 3 nodes, 3 queues, 2 publishers,
2 consumers; a queue's leader killed and restarted, another's paused and woken, a third's cut
off by a partition. It runs with each node in its own network namespace; where namespaces cannot
be made, the same run without the partition runs on loopback (and the namespace run is skipped,
saying why).

The `chaos` runs take random schedules (faults one at a time: SIGKILL, SIGSTOP, SIGTERM,
partitions with and without the clients, a single cut link), several rounds, only with
`pytest -m chaos`:

    MERPATI_CHAOS_SEED=1234 MERPATI_CHAOS_ROUNDS=10 MERPATI_CHAOS_SECONDS=90 \\
        .venv/bin/python -m pytest -m chaos tests/cluster/test_total_queue.py -s

Each round prints its seed and schedule; the seed alone reproduces the schedule (the timing of
the faults against the traffic is the machine's). MERPATI_TQ_LOG_LEVEL=debug makes the nodes
log more.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator

import pika
import pytest

from tests.cluster.conftest import start_cluster, start_netns_cluster
from tests.support import netns
from tests.support.clients import connect
from tests.support.names import uid
from tests.support.nemesis import Nemesis, endpoints, qpath, random_schedule, run_schedule
from tests.support.total_queue import QUORUM, FaultLog, TotalQueue, TotalQueueResult, analyze

NODE_FLAGS = (
    ("--log-level", os.environ["MERPATI_TQ_LOG_LEVEL"])
    if os.environ.get("MERPATI_TQ_LOG_LEVEL")
    else ()
)


class Run:
    """What a total-queue run found: the checker's result, and whether every queue had all its
    replicas back in sync after the healing (None: yes; else what was seen)."""

    def __init__(self, label: str, result: TotalQueueResult, unsettled: str | None) -> None:
        self.label = label
        self.result = result
        self.unsettled = unsettled

    def __str__(self) -> str:
        text = f"{self.label}\n{self.result.summary}"
        if self.unsettled:
            text += f"\nnot settled: {self.unsettled}"
        return text


def run_total_queue(
    cluster,
    schedule: Callable[[Nemesis, list[str]], None],
    *,
    label: str,
    net=None,
    seed: int | str = 0,
    queues: int = 3,
    publishers: int = 2,
    consumers: int = 2,
    publish_rate: float = 40.0,
    settle_timeout: float = 10.0,
) -> Run:
    """Run the workload while `schedule(nemesis, queue_names)` makes faults; heal, stop the
    publishers, wait for the replicas to be in sync again, let the consumers finish, drain from
    a node that is up, check."""
    faults = FaultLog()
    nem = Nemesis(cluster, faults, net)
    names = [uid(f"tq{i}-") for i in range(queues)]
    wl = TotalQueue(
        endpoints(cluster),
        names,
        publishers=publishers,
        consumers=consumers,
        publish_rate=publish_rate,
        seed=seed,
        op_timeout=20.0,
    )
    wl.declare()
    stop_reporting = threading.Event()

    def report() -> None:
        while not stop_reporting.wait(5.0):
            print(f"[workload] {wl.progress()}", flush=True)

    reporter = threading.Thread(target=report, daemon=True)
    wl.start()
    nem.t0 = wl.history.t0
    reporter.start()
    unsettled = None
    try:
        schedule(nem, names)
        nem.heal_all()
        faults.end_all()
        wl.stop_publishers()
        nem.say(f"publishers stopped: {wl.progress()}")
        try:
            nem.say(f"settled after {nem.wait_settled(names, settle_timeout):.1f}s")
        except AssertionError as e:
            unsettled = str(e)
            nem.say(f"NOT SETTLED: {unsettled}")
        if not wl.quiesce(timeout=60):
            nem.say("consumers still receiving when stopped")
        wl.stop_consumers()
        survivor = next(ep for ep in endpoints(cluster) if ep.name in nem.up())
        nem.say(f"drained {wl.drain(survivor)} message(s) from {survivor.name}")
        result = analyze(wl.history, faults.faults)
        if result.lost:
            # Confirmed, never delivered: gone, or still held by the queue (its leader's store
            # has it) but never handed out?
            held: set[bytes] = set()
            for q in names:
                leader = nem.leader_of(q)
                if leader is not None:
                    held |= nem.stored(leader, q)
            result.stranded = len(result.lost_bodies & held)
        if result.lost or result.unexpected or result.wrong_redelivered:
            # For the post-mortem: what the queues say they hold now, and the whole history.
            result.notes.append(nem.queue_views(names))
            result.notes.append(nem.replica_views(names))
            where = next(iter(cluster.nodes.values())).dir / "total-queue-history.json"
            wl.history.dump(where)
            result.notes.append(f"history written to {where}")
    except BaseException:
        wl.abort()
        nem.heal_all()
        raise
    finally:
        stop_reporting.set()
    if unsettled:
        result.notes.append(f"replicas not in sync {settle_timeout:.0f}s after healing")
    run = Run(label, result, unsettled)
    print(run, flush=True)
    return run


@contextlib.contextmanager
def a_cluster(where: str, keep: Callable[[], bool]) -> Iterator[tuple]:
    """(cluster, network or None) for a run: in namespaces ("netns") or on loopback; everything
    is stopped and removed afterwards, the nodes' directories kept when `keep()` says so."""
    net = None
    if where == "netns":
        reason = netns.unavailable_reason()
        if reason is not None:
            pytest.skip(f"network partitions need network namespaces: {reason}")
        net = netns.Network(["n1", "n2", "n3"]).setup()
    try:
        cluster = start_netns_cluster(net, NODE_FLAGS) if net else start_cluster(extra=NODE_FLAGS)
        try:
            yield cluster, net
        finally:
            cluster.stop()
            cluster.discard(keep=keep())
    finally:
        if net is not None:
            problems = net.teardown()
            assert not problems, f"test network not fully removed: {problems}"


def anomalous(run: Run | None) -> bool:
    """A run worth keeping the nodes' directories of (what the checks will complain about)."""
    if run is None:
        return True
    r = run.result
    return bool(
        run.unsettled or r.lost or r.unexpected or r.wrong_redelivered or r.acked_then_redelivered
    )


# -- the checks, each its own test ---------------------------------------------------------------


def check_nothing_lost(run: Run) -> None:
    """No confirmed message is gone: each was delivered, or is at least still in the queue (see
    check_nothing_stranded for those)."""
    r = run.result
    assert r.confirmed > 100, f"the workload hardly ran\n{run}"
    assert r.lost - (r.stranded or 0) == 0, f"confirmed messages were lost\n{run}"


def check_nothing_stranded(run: Run) -> None:
    """Every confirmed message was delivered: none stays in the queue, held back from every
    consumer (and from the final drain)."""
    assert run.result.lost == 0, f"confirmed messages never delivered\n{run}"


def check_nothing_unexpected(run: Run) -> None:
    assert run.result.unexpected == 0, f"messages nobody published were delivered\n{run}"


def check_redelivered_flags(run: Run) -> None:
    assert run.result.wrong_redelivered == 0, f"a redelivery without the redelivered flag\n{run}"


def check_acked_stay_acked(run: Run) -> None:
    """While at most a minority of the nodes is faulty (every schedule here), an ack a healthy
    node read (and held on to for a while) is never undone."""
    assert run.result.acked_then_redelivered == 0, f"acknowledged messages came back\n{run}"


def check_replicas_in_sync(run: Run) -> None:
    assert run.unsettled is None, f"replicas not back in sync after healing\n{run}"


# -- the short run (normal suite) ----------------------------------------------------------------


def leader_or_any(nem: Nemesis, queue: str) -> str:
    return nem.leader_of(queue) or sorted(nem.up())[0]


def short_schedule(partition: bool) -> Callable[[Nemesis, list[str]], None]:
    """Calm, a leader killed (and restarted), a leader paused and woken, a leader cut off."""

    def schedule(nem: Nemesis, queues: list[str]) -> None:
        time.sleep(4)
        victim = leader_or_any(nem, queues[0])
        nem.kill(victim)
        time.sleep(3)
        nem.restart(victim)
        time.sleep(3)
        victim = leader_or_any(nem, queues[1 % len(queues)])
        nem.pause(victim)
        time.sleep(5)
        nem.resume(victim)
        time.sleep(3)
        if partition:
            victim = leader_or_any(nem, queues[2 % len(queues)])
            nem.partition([victim])
            time.sleep(6)
            nem.heal_network()
            time.sleep(3)

    return schedule


def short_run(where: str) -> Iterator[Run]:
    if where == "loopback" and netns.unavailable_reason() is None:
        pytest.skip("covered by the run in network namespaces (they work here)")
    run = None
    with a_cluster(where, lambda: anomalous(run)) as (cluster, net):
        run = run_total_queue(
            cluster,
            short_schedule(partition=net is not None),
            net=net,
            label=f"short run ({where})",
        )
        yield run


@pytest.fixture(scope="module")
def short_run_netns() -> Iterator[Run]:
    yield from short_run("netns")


@pytest.fixture(scope="module")
def short_run_loopback() -> Iterator[Run]:
    yield from short_run("loopback")


WHERE = pytest.mark.parametrize("where", ["netns", "loopback"])


@WHERE
def test_short_run_loses_no_confirmed_message(where, request):
    check_nothing_lost(request.getfixturevalue(f"short_run_{where}"))


@WHERE
def test_short_run_delivers_every_confirmed_message(where, request):
    check_nothing_stranded(request.getfixturevalue(f"short_run_{where}"))


@WHERE
def test_short_run_delivers_only_what_was_published(where, request):
    check_nothing_unexpected(request.getfixturevalue(f"short_run_{where}"))


@WHERE
def test_short_run_flags_every_redelivery(where, request):
    check_redelivered_flags(request.getfixturevalue(f"short_run_{where}"))


@WHERE
def test_short_run_acknowledged_messages_stay_acknowledged(where, request):
    check_acked_stay_acked(request.getfixturevalue(f"short_run_{where}"))


@WHERE
def test_short_run_replicas_back_in_sync_after_healing(where, request):
    check_replicas_in_sync(request.getfixturevalue(f"short_run_{where}"))


# -- chaos: random schedules, many rounds (pytest -m chaos) --------------------------------------

CHAOS_ROUNDS = int(os.environ.get("MERPATI_CHAOS_ROUNDS", "5"))
CHAOS_SECONDS = float(os.environ.get("MERPATI_CHAOS_SECONDS", "60"))


def chaos_seed(round_: int) -> int:
    base = os.environ.get("MERPATI_CHAOS_SEED")
    if base is None:
        base = str(random.SystemRandom().randrange(10**6))
        os.environ["MERPATI_CHAOS_SEED"] = base  # every round of this session from the same
    return int(base) + round_


def chaos_round(cluster, net, where: str, round_: int) -> Run:
    seed = chaos_seed(round_)
    rng = random.Random(seed)
    queues = rng.choice([2, 3, 4])
    publishers = rng.choice([2, 3, 4])
    consumers = rng.choice([1, 2, 3])
    steps = random_schedule(
        rng, list(cluster.nodes), [f"#{i}" for i in range(queues)], CHAOS_SECONDS, net is not None
    )
    label = (
        f"chaos round {round_} ({where}): seed {seed} (MERPATI_CHAOS_SEED={seed} "
        f"MERPATI_CHAOS_ROUNDS=1 reproduces it): {queues} queues, {publishers} publishers, "
        f"{consumers} consumers"
    )
    print(f"\n{label}", flush=True)
    for s in steps:
        print(f"  {s}", flush=True)

    def schedule(nem: Nemesis, names: list[str]) -> None:
        for s in steps:  # the schedule names queues #0, #1, ...: this run's names
            if s.target.startswith("leader:#"):
                s.target = "leader:" + names[int(s.target[len("leader:#") :])]
        time.sleep(2)
        run_schedule(nem, steps)

    return run_total_queue(
        cluster,
        schedule,
        net=net,
        label=label + "\n  " + "\n  ".join(str(s) for s in steps),
        seed=seed,
        queues=queues,
        publishers=publishers,
        consumers=consumers,
    )


CHAOS_PARAMS = [(w, r) for w in ("netns", "loopback") for r in range(CHAOS_ROUNDS)]


@pytest.fixture(scope="module", params=CHAOS_PARAMS, ids=[f"{w}-{r}" for w, r in CHAOS_PARAMS])
def chaos_run(request) -> Iterator[Run]:
    where, round_ = request.param
    run = None
    with a_cluster(where, lambda: anomalous(run)) as (cluster, net):
        run = chaos_round(cluster, net, where, round_)
        yield run


@pytest.mark.chaos
def test_chaos_loses_no_confirmed_message(chaos_run):
    check_nothing_lost(chaos_run)


@pytest.mark.chaos
def test_chaos_delivers_every_confirmed_message(chaos_run):
    check_nothing_stranded(chaos_run)


@pytest.mark.chaos
def test_chaos_delivers_only_what_was_published(chaos_run):
    check_nothing_unexpected(chaos_run)


@pytest.mark.chaos
def test_chaos_flags_every_redelivery(chaos_run):
    check_redelivered_flags(chaos_run)


@pytest.mark.chaos
def test_chaos_acknowledged_messages_stay_acknowledged(chaos_run):
    check_acked_stay_acked(chaos_run)


@pytest.mark.chaos
def test_chaos_replicas_back_in_sync_after_healing(chaos_run):
    check_replicas_in_sync(chaos_run)


# -- the fetch-stream bug on its own -------------------------------------------------------------


@pytest.fixture
def loopback_cluster(request):
    c = start_cluster(extra=NODE_FLAGS)
    yield c
    c.stop()
    c.discard(keep=request.session.testsfailed > 0)


def test_a_follower_fetches_from_a_leader_whose_stream_broke_before(loopback_cluster):
    """A queue's leader is killed and restarted; a new quorum queue it then leads must get its
    followers.

    Each follower had a Fetch stream to that node; it broke with the kill, and its request
    generator stayed parked on the stream's wake-up event (the bug this found). The re-opened stream's first wake-up
    is taken by that stale generator, which writes the fetch into the dead call: the fetch is
    lost and the follower never asks that leader again. With both followers stuck, the queue
    commits nothing: a publisher waits for its confirm for ever. (SIGTERM instead of SIGKILL
    did the same.) Fixed: each call has its own wake-up event."""
    c = loopback_cluster
    nem = Nemesis(c)
    before = uid("before-")
    conn = connect(c["n1"])
    conn.channel().queue_declare(before, durable=True, arguments=QUORUM)
    conn.close()
    victim = nem.leader_of(before)  # the others follow it there: they have a Fetch stream to it
    nem.kill(victim)
    time.sleep(3)  # the queue fails over: its followers follow another node now
    nem.restart(victim)
    time.sleep(2)  # the others see it up again and open their Fetch streams to it anew
    # The restarted node leads no queue: a new one is placed there (else try another).
    survivor = next(n for n in c.nodes if n != victim)
    for _ in range(4):
        name = uid("after-")
        conn = connect(c[survivor])
        conn.channel().queue_declare(name, durable=True, arguments=QUORUM)
        conn.close()
        if nem.leader_of(name) == victim:
            break
    else:
        pytest.skip("no new queue was placed on the restarted node")
    took = nem.wait_settled([name], timeout=5)
    print(f"the new queue's followers in sync after {took:.1f}s")


# -- the ghost-consumer bug on its own -----------------------------------------------------------


def test_a_partitioned_leader_leaves_no_ghost_consumers():
    """A quorum queue's leader is cut off from the other nodes (its clients still reach it) long
    enough for another node to take the queue over; consumers on the two other nodes carry on.
    After the partition heals, every message published is delivered, and once the consumers
    have gone the queue has none left.

    What happens: the cut-off leader still holds the forwarding proxies of the other nodes'
    consumers (their Consume streams died silently); when it learns of the new leader it moves
    them there, beside the same consumers subscribed again by their own nodes. Half of what is
    published afterwards goes to these ghosts and stays unacknowledged for good."""
    with a_cluster("netns", lambda: True) as (c, net):
        nem = Nemesis(c, net=net)
        name = uid("ghost-")
        conn = connect(c["n1"])
        conn.channel().queue_declare(name, durable=True, arguments=QUORUM)
        conn.close()
        leader = nem.leader_of(name)
        others = [n for n in c.nodes if n != leader]
        got: list[bytes] = []
        stop = threading.Event()

        def consume(node: str) -> None:
            cc = connect(c[node], heartbeat=5)
            ch = cc.channel()
            ch.basic_qos(prefetch_count=20)

            def on(ch_, method, _props, body) -> None:
                got.append(body)
                ch_.basic_ack(method.delivery_tag)

            ch.basic_consume(name, on)
            while not stop.is_set():
                cc.process_data_events(time_limit=0.1)
            cc.close()

        threads = [threading.Thread(target=consume, args=(n,), daemon=True) for n in others]
        for t in threads:
            t.start()
        pub = connect(c[others[0]])
        pch = pub.channel()
        pch.confirm_delivery()
        time.sleep(1)
        nem.partition([leader])
        deadline = time.monotonic() + 20
        while nem.leader_of(name) in (leader, None) and time.monotonic() < deadline:
            time.sleep(0.5)
        nem.heal_network()
        time.sleep(2)
        sent = [b"m%d" % i for i in range(100)]
        for body in sent:
            for _ in range(100):
                try:
                    pch.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2))
                    break
                except pika.exceptions.NackError:
                    time.sleep(0.1)
        deadline = time.monotonic() + 5
        while set(sent) - set(got) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(10)
        pub.close()
        missing = sorted(set(sent) - set(got))
        info = nem.ask(qpath(name))
        assert not missing, (
            f"{len(missing)} of {len(sent)} confirmed messages never delivered: {missing[:10]}; "
            f"the queue now: {info and {k: info.get(k) for k in ('leader', 'consumers', 'messages_unacknowledged')}}"
        )
        assert info and info.get("consumers") == 0, (
            f"consumers left after every client went: {info}"
        )
