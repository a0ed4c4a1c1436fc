"""The management API's rate history (node/management/rates.py): rings sampled from counters on a
timer, and RabbitMQ's `*_details` built from them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from merpati.node.management.rates import KEEP, RateHistory, RatesQuery
from merpati.node.metrics.counters import NodeCounters


class FakeLocalQueue:
    """What the sampler reads of a LocalQueue: its sequence number and depth."""

    def __init__(self) -> None:
        self.seq = 0
        self.ready = 0
        self.unacked = 0

    @property
    def last_seq(self) -> int:
        return self.seq

    def stats_now(self) -> tuple[int, int]:
        return self.ready, 0


class FakeRemoteQueue:
    """A queue led elsewhere: no stats_now, only what this node last heard."""

    def __init__(self, ready: int, unacked: int) -> None:
        self.message_count = ready
        self.unacked = unacked


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(queues: dict[str, dict[str, Any]] | None = None) -> tuple[RateHistory, Any, Clock]:
    broker = SimpleNamespace(counters=NodeCounters(), queues=queues or {}, led_depth=(0, 0))
    clock = Clock()
    return RateHistory(SimpleNamespace(broker=broker), clock=clock), broker, clock


def test_node_rate_is_the_change_per_second_over_the_last_interval():
    rates, broker, clock = make()
    rates.sample()
    broker.counters.published += 50
    broker.counters.delivered_ack += 20
    broker.counters.get_ack += 5
    clock.now += 5
    rates.sample()
    stats, totals = rates.node_details(RatesQuery())
    assert stats["publish_details"] == {"rate": 10.0}
    assert stats["deliver_details"] == {"rate": 4.0}
    assert stats["deliver_get_details"] == {"rate": 5.0}  # deliveries and gets together
    assert stats["ack_details"] == {"rate": 0.0}
    assert totals["messages_details"] == {"rate": 0.0}


def test_samples_newest_first_with_avg_rate_and_avg():
    rates, broker, clock = make()
    clock.now = 1000.0
    for _ in range(7):  # t = 1000, 1005, ..., 1030: publish grows by 10 per 5 s
        rates.sample()
        broker.counters.published += 10
        clock.now += 5
    clock.now = 1030.0
    stats, _ = rates.node_details(RatesQuery(age=20, incr=10))
    d = stats["publish_details"]
    assert d["samples"] == [
        {"sample": 60, "timestamp": 1_030_000},
        {"sample": 40, "timestamp": 1_020_000},
        {"sample": 20, "timestamp": 1_010_000},
    ]
    assert d["rate"] == 2.0
    assert d["avg_rate"] == 2.0  # (60 - 20) / 20 s
    assert d["avg"] == 40.0


def test_samples_hold_the_last_value_between_samples_and_stop_at_the_first():
    rates, broker, clock = make()
    clock.now = 1000.0
    rates.sample()
    broker.counters.published = 7
    clock.now = 1012.0
    rates.sample()
    clock.now = 1013.0
    d = rates.node_details(RatesQuery(age=60, incr=2))[0]["publish_details"]
    # 1012 is the newest aligned time; 1000..1010 hold the first sample's 0; nothing before 1000.
    assert [s["timestamp"] // 1000 for s in d["samples"]] == list(range(1012, 998, -2))
    assert [s["sample"] for s in d["samples"]] == [7, 0, 0, 0, 0, 0, 0]


def test_queue_totals_count_the_queues_this_node_leads():
    local = FakeLocalQueue()
    local.ready, local.unacked = 3, 2
    rates, broker, clock = make({"/": {"a": local, "b": FakeRemoteQueue(10, 1)}})
    rates.sample()
    clock.now += 5
    local.ready = 13
    rates.sample()
    _, totals = rates.node_details(RatesQuery(age=5, incr=5))
    # The remote queue's figures here are a stale hint: its leader counts it (and tells us).
    assert totals["messages_details"]["samples"][0]["sample"] == 15
    assert totals["messages_ready_details"]["rate"] == 2.0
    assert totals["messages_unacknowledged_details"]["samples"][0]["sample"] == 2
    assert broker.led_depth == (13, 2)  # what the Ping tells the peers


def test_idle_queues_get_no_ring_and_an_active_one_does():
    idle, busy = FakeLocalQueue(), FakeLocalQueue()
    rates, _broker, clock = make({"/": {"idle": idle, "busy": busy}})
    rates.sample()
    busy.seq, busy.ready = 25, 25
    clock.now += 5
    rates.sample()
    assert rates.queues[("/", "idle")].ring is None
    stats, depth = rates.queue_details("/", "busy", RatesQuery())
    assert stats == {"publish": 25, "publish_details": {"rate": 5.0}}
    assert depth["messages_ready_details"] == {"rate": 5.0}  # from the idle sample before
    stats, depth = rates.queue_details("/", "idle", RatesQuery(age=10, incr=5), (0, 0, 0))
    assert stats["publish_details"]["rate"] == 0.0
    assert [s["sample"] for s in depth["messages_details"]["samples"]] == [0, 0]


def test_a_queue_idle_for_a_whole_window_loses_its_ring_but_keeps_its_count():
    q = FakeLocalQueue()
    rates, _broker, clock = make({"/": {"q": q}})
    rates.sample()
    q.seq = 4
    for _ in range(KEEP + 1):
        clock.now += 5
        rates.sample()
    track = rates.queues[("/", "q")]
    assert track.ring is None and track.published == 4
    q.seq = 6
    clock.now += 5
    rates.sample()
    assert track.ring is not None and track.published == 6


def test_a_new_handle_numbering_anew_never_counts_backwards():
    old = FakeLocalQueue()
    old.seq = 100
    queues = {"/": {"q": old}}
    rates, _broker, clock = make(queues)
    rates.sample()
    old.seq = 110
    clock.now += 5
    rates.sample()
    new = FakeLocalQueue()
    new.seq = 1 << 28  # a quorum queue's next epoch
    queues["/"]["q"] = new
    clock.now += 5
    rates.sample()
    new.seq += 5
    clock.now += 5
    rates.sample()
    assert rates.queues[("/", "q")].published == 15


def test_deleted_queues_are_forgotten():
    queues = {"/": {"q": FakeLocalQueue()}}
    rates, _broker, _clock = make(queues)
    rates.sample()
    assert ("/", "q") in rates.queues
    del queues["/"]["q"]
    rates.sample()
    assert ("/", "q") not in rates.queues


@pytest.mark.parametrize(
    "query, reason",
    [
        ({"msg_rates_age": "x"}, "numbers"),
        ({"msg_rates_age": "60", "msg_rates_incr": "0"}, "msg_rates_incr > 0"),
        ({"msg_rates_age": "-1"}, ">= 0"),
        ({"msg_rates_age": "100000", "msg_rates_incr": "1"}, "at most"),
    ],
)
def test_bad_rate_queries_say_why(query, reason):
    with pytest.raises(ValueError, match=reason):
        RatesQuery.parse(query)


def test_rate_query_defaults():
    assert RatesQuery.parse({}).age == 0
    q = RatesQuery.parse({"msg_rates_age": "60"})
    assert (q.age, q.incr) == (60.0, 5.0)


def test_peers_rates_come_from_their_pings_and_add_up_to_the_cluster():
    peer = SimpleNamespace(message_counters={}, state="up")
    rates, broker, clock = make()
    rates.node.cluster = SimpleNamespace(forwarding=SimpleNamespace(peers={"n2": peer}))
    rates.sample()  # n2 not heard from yet: no ring
    assert rates.peer_details("n2", RatesQuery()) is None
    peer.message_counters = {"publish": 1000, "ack": 10}
    clock.now += 5
    rates.sample()
    peer.message_counters = {"publish": 1100, "ack": 60, "messages_ready": 7}
    broker.counters.published += 50
    clock.now += 5
    rates.sample()
    _, depth = rates.node_details(RatesQuery(age=5, incr=5), cluster=True)
    assert depth["messages_ready_details"]["samples"][0]["sample"] == 7  # n2's queues
    n2 = rates.peer_details("n2", RatesQuery())
    assert n2["publish"] == 1100 and n2["publish_details"] == {"rate": 20.0}
    assert n2["ack_details"] == {"rate": 10.0}
    cluster, _ = rates.node_details(RatesQuery(), cluster=True)
    assert cluster["publish_details"] == {"rate": 30.0}  # 50 here + 100 there in 5 s
    assert rates.peer_counts()["publish"] == 1100
    # n2 restarts: its counters start again from zero, the cluster's never go back.
    peer.message_counters = {"publish": 25, "ack": 0}
    clock.now += 5
    rates.sample()
    assert rates.peer_details("n2", RatesQuery())["publish"] == 1125
    cluster, _ = rates.node_details(RatesQuery(), cluster=True)
    assert cluster["publish_details"] == {"rate": 5.0}
    # Removed from the cluster: its ring goes, what it counted stays in the total.
    rates.node.cluster.forwarding.peers = {}
    clock.now += 5
    rates.sample()
    assert rates.peer_details("n2", RatesQuery()) is None
    assert rates.peer_counts()["publish"] == 1125
