"""The total-queue checker's analysis (tests/support/total_queue.py) on histories written by hand:
each anomaly is found, and put in the right kind, and the normal cases are not flagged."""

from __future__ import annotations

from tests.support.total_queue import Attempt, Delivery, Fault, History, Session, analyze

Q = "q1"


class Story:
    """A history built by hand, with times in seconds from 0."""

    def __init__(self) -> None:
        self.h = History()
        self.h.t0 = 0.0

    def publish(self, n: int, outcome: str = "confirmed", publisher: int = 0, queue: str = Q):
        body = b"p%d-%d" % (publisher, n)
        self.h.attempts[body] = Attempt(body, publisher, n, queue, "n1", n, n + 0.01, outcome)
        return body

    def session(
        self,
        sid: int,
        node: str = "n2",
        closed: float | None = 100.0,
        clean: bool = True,
        syncs: tuple[float, ...] = (),
    ) -> Session:
        s = Session(sid, f"c{sid}", node, 0.0, closed, clean, sorted(syncs))
        self.h.sessions[sid] = s
        return s

    def deliver(
        self,
        body: bytes,
        sid: int,
        at: float,
        redelivered: bool = False,
        ack: float | None = None,
        queue: str = Q,
    ) -> Delivery:
        d = Delivery(len(self.h.deliveries), body, queue, sid, at, redelivered, ack)
        self.h.deliveries.append(d)
        return d

    def analyze(self, faults=()):
        return analyze(self.h, faults)


def test_everything_delivered_once_and_acked_is_clean():
    st = Story()
    st.session(1, syncs=(50.0,))
    for n in range(1, 6):
        st.deliver(st.publish(n), 1, 10 + n, ack=10.5 + n)
    r = st.analyze()
    assert (r.attempted, r.confirmed, r.delivered, r.deliveries) == (5, 5, 5, 5)
    assert r.lost == r.unexpected == r.duplicates == r.wrong_redelivered == 0
    assert r.held_by_two == r.order_violations == 0
    assert "lost 0" in r.summary
    # Confirms at 1.01, 2.01, ... 5.01 s: the longest stretch without one is the first.
    assert round(r.longest_without_confirm, 2) == 1.01 and r.longest_without_confirm_at == 0


def test_lost_counts_only_confirmed_messages():
    st = Story()
    st.session(1, syncs=(50.0,))
    st.publish(1)  # confirmed, never delivered: lost
    st.publish(2, "nacked")  # not confirmed, not delivered: fine
    st.deliver(st.publish(3, "unknown"), 1, 20, ack=21)  # not confirmed, delivered: fine
    r = st.analyze()
    assert r.lost == 1 and r.examples["lost"][0].startswith("p0-1 to q1")
    assert (r.confirmed, r.nacked, r.unknown) == (1, 1, 1)
    assert r.unconfirmed_delivered == 1 and r.unexpected == 0


def test_unexpected_and_misrouted():
    st = Story()
    st.session(1, syncs=(50.0,))
    st.deliver(b"p9-1", 1, 10, ack=11)  # never published
    st.deliver(st.publish(1), 1, 12, ack=13, queue="q2")  # published to q1
    r = st.analyze()
    assert r.unexpected == 2 and r.misrouted == 1
    assert r.lost == 0


def test_redelivery_after_a_known_ack_is_acked_then_redelivered():
    st = Story()
    body = st.publish(1)
    st.session(1, node="n2", syncs=(11.1, 20.0))  # the ack was read at 11.1, lived on
    st.session(2, node="n3", syncs=(30.0,))
    st.deliver(body, 1, 10, ack=11)
    st.deliver(body, 2, 15, redelivered=True, ack=16)
    r = st.analyze()
    assert r.duplicates == 1 and r.acked_then_redelivered == 1
    assert r.wrong_redelivered == 0 and r.held_by_two == 0
    assert "acked-then-redelivered" in r.examples


def test_an_ack_whose_connection_died_or_whose_node_was_faulty_is_unknown():
    for closed, clean, syncs, faults in [
        (11.5, False, (11.1,), ()),  # died within ACK_GRACE of the round trip
        (30.0, False, (5.0,), ()),  # no round trip after the ack before it died
        (100.0, True, (11.1, 50.0), [Fault("pause", ("n2",), 11.5, 14.0)]),  # its node paused
    ]:
        st = Story()
        body = st.publish(1)
        st.session(1, node="n2", closed=closed, clean=clean, syncs=syncs)
        st.session(2, node="n3", syncs=(30.0,))
        st.deliver(body, 1, 10, ack=11)
        st.deliver(body, 2, 15, redelivered=True, ack=16)
        r = st.analyze(faults)
        assert r.acked_then_redelivered == 0, (closed, syncs, faults)
        assert r.ack_unknown_then_redelivered == 1, (closed, syncs, faults)
    # A fault on another node does not make the ack unknown.
    st = Story()
    body = st.publish(1)
    st.session(1, node="n2", syncs=(11.1, 50.0))
    st.session(2, node="n3", syncs=(30.0,))
    st.deliver(body, 1, 10, ack=11)
    st.deliver(body, 2, 15, redelivered=True, ack=16)
    assert st.analyze([Fault("kill", ("n1",), 10.5, 12.0)]).acked_then_redelivered == 1


def test_redelivery_of_an_unacked_delivery_is_normal():
    st = Story()
    body = st.publish(1)
    st.session(1, closed=12.0, clean=False, syncs=(5.0,))  # died holding it
    st.session(2, syncs=(30.0,))
    st.deliver(body, 1, 10)
    st.deliver(body, 2, 13, redelivered=True, ack=14)
    r = st.analyze()
    assert r.duplicates == 1 and r.unacked_then_redelivered == 1
    assert r.acked_then_redelivered == r.wrong_redelivered == r.held_by_two == 0


def test_a_second_delivery_without_the_redelivered_flag_is_wrong():
    st = Story()
    body = st.publish(1)
    st.session(1, closed=12.0, clean=False)
    st.session(2, syncs=(30.0,))
    st.deliver(body, 1, 10)
    st.deliver(body, 2, 13, redelivered=False, ack=14)
    r = st.analyze()
    assert r.wrong_redelivered == 1 and "wrong-redelivered" in r.examples
    # Flagged on its first delivery: allowed, only counted.
    st2 = Story()
    st2.session(1, syncs=(30.0,))
    st2.deliver(st2.publish(1), 1, 10, redelivered=True, ack=11)
    r2 = st2.analyze()
    assert r2.wrong_redelivered == 0 and r2.first_flagged_redelivered == 1


def test_held_by_two_live_consumers_at_once():
    st = Story()
    body = st.publish(1)
    st.session(1, node="n2", syncs=(5.0, 20.0))  # alive after the second delivery
    st.session(2, node="n3", syncs=(30.0,))
    st.deliver(body, 1, 10, ack=18)  # acked after the other got it
    st.deliver(body, 2, 13, redelivered=True, ack=14)
    r = st.analyze()
    assert r.held_by_two == 1 and r.held_by_two_outside_faults == 1
    assert r.unacked_then_redelivered == 1
    # The same during a fault window is reported apart.
    r = st.analyze([Fault("kill", ("n1",), 9.0, 11.0)])
    assert r.held_by_two == 1 and r.held_by_two_outside_faults == 0
    # Not when the first holder's connection showed no life after the second delivery.
    st.h.sessions[1].syncs = [5.0]
    st.h.sessions[1].closed, st.h.sessions[1].clean = 40.0, False
    assert st.analyze().held_by_two == 0


def test_first_deliveries_out_of_publish_order_in_one_session():
    st = Story()
    st.session(1, syncs=(50.0,))
    b1, b2, b3 = st.publish(1), st.publish(2), st.publish(3)
    st.deliver(b2, 1, 10, ack=10.1)
    st.deliver(b1, 1, 11, ack=11.1)
    st.deliver(b3, 1, 12, ack=12.1)
    r = st.analyze()
    assert r.order_violations == 1 and r.order_excused == 0
    # A redelivery of the queue in between excuses it.
    other = st.publish(7)
    st.session(2, closed=10.2, clean=False)
    st.deliver(other, 2, 9.0)
    st.deliver(other, 1, 10.5, redelivered=True, ack=10.6)
    r = st.analyze()
    assert r.order_violations == 0 and r.order_excused == 1
    # Different sessions, or different publishers, are not compared.
    st3 = Story()
    st3.session(1, syncs=(50.0,))
    st3.session(2, syncs=(50.0,))
    st3.deliver(st3.publish(2), 1, 10, ack=10.1)
    st3.deliver(st3.publish(1), 2, 11, ack=11.1)
    st3.deliver(st3.publish(1, publisher=1), 1, 12, ack=12.1)
    assert st3.analyze().order_violations == 0


def test_the_history_dumps_as_json(tmp_path):
    import json

    st = Story()
    st.session(1, syncs=(50.0,))
    st.deliver(st.publish(1), 1, 10, ack=11)
    st.h.dump(tmp_path / "h.json")
    out = json.loads((tmp_path / "h.json").read_text())
    assert out["attempts"][0]["body"] == "p0-1" and out["deliveries"][0]["ack_sent"] == 11
