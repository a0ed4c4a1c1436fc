"""cluster.replication: the replicated queue's log protocol without sockets — commit, truncation by
epoch, catch-up, fencing, election — and a randomized model of lossy networks, crashes and
failovers in which nothing committed is ever lost."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.cluster.replication.log import LogError, ReplicaLog
from merpati.cluster.replication.replica import (
    Fetch,
    FetchReply,
    NotLeader,
    Replica,
    choose_leader,
)

NAMES = ("a", "b", "c")


def group(leader: str = "a", epoch: int = 1) -> dict[str, Replica]:
    reps = {n: Replica(n) for n in NAMES}
    for n, r in reps.items():
        if n == leader:
            r.become_leader(epoch, NAMES)
        else:
            r.become_follower(epoch, leader)
    return reps


def sync(leader: Replica, follower: Replica, rounds: int = 5) -> None:
    """Fetch `rounds` times (flushing what comes): enough for the follower to have everything."""
    for _ in range(rounds):
        follower.on_reply(leader.on_fetch(follower.fetch()) or FetchReply(leader.epoch, "x"))
        follower.flushed(follower.log.end)


# -- the log ----------------------------------------------------------------------------------------


def test_the_log_keeps_where_each_epoch_starts_and_truncates_them_away() -> None:
    log = ReplicaLog()
    for epoch in (1, 1, 2, 2, 2, 5):
        log.append(epoch, b"x")
    assert log.epochs == [(1, 0), (2, 2), (5, 5)]
    assert log.epoch_end(1) == (1, 2)
    assert log.epoch_end(3) == (2, 5)  # no epoch 3: where the largest one below ends
    assert log.epoch_end(9) == (5, 6)
    assert log.epoch_end(0) == (0, 0)
    assert log.truncate(3) == 3
    assert log.epochs == [(1, 0), (2, 2)] and log.end == 3
    with pytest.raises(LogError):
        log.append(1, b"older epoch")


def test_compaction_forgets_entries_but_not_the_epoch_history() -> None:
    log = ReplicaLog()
    for epoch in (1, 1, 2, 2, 3, 3):
        log.append(epoch, b"e%d" % epoch)
    log.compact(4)
    assert log.start == 4 and log.end == 6
    assert [(e.offset, e.epoch) for e in log.entries] == [(4, 3), (5, 3)]
    assert log.read(0, 10) == log.entries  # nothing before start to read
    # Below start the epoch history answers.
    assert [log.epoch_at(o) for o in range(-1, 6)] == [0, 1, 1, 2, 2, 3, 3]
    assert log.epochs == [(1, 0), (2, 2), (3, 4)]
    assert log.epoch_end(2) == (2, 4) and log.position() == (3, 6)
    log.compact(3)  # below start: nothing to do
    assert log.start == 4
    log.compact(99)  # past the end: up to the end
    assert (log.start, log.end, log.entries) == (6, 6, [])
    assert log.epoch_at(5) == 3
    assert log.append(3, b"next").offset == 6 and log.epochs[-1] == (3, 4)


def test_reset_empties_the_log_at_a_snapshots_offset_with_its_epoch_history() -> None:
    log = ReplicaLog()
    for epoch in (1, 1, 1):
        log.append(epoch, b"old")
    # The history comes from JSON (lists); epochs that start after `start` are not the snapshot's.
    log.reset(7, [[1, 0], [2, 5], [4, 7], [6, 9]])
    assert (log.start, log.end, log.entries) == (7, 7, [])
    assert log.epochs == [(1, 0), (2, 5), (4, 7)]
    assert log.epoch_at(4) == 1 and log.epoch_at(6) == 2
    with pytest.raises(LogError):
        log.epoch_at(7)  # no entry there yet
    assert log.append(4, b"x") == log.entries[0] and log.entries[0].offset == 7
    assert log.epochs == [(1, 0), (2, 5), (4, 7)]  # epoch 4 already starts at 7


def test_truncating_below_the_logs_start_is_refused() -> None:
    log = ReplicaLog()
    for epoch in (1, 1, 2, 2):
        log.append(epoch, b"x")
    log.compact(2)
    with pytest.raises(LogError, match="before the log's start"):
        log.truncate(1)
    assert log.end == 4 and log.epochs == [(1, 0), (2, 2)]  # unchanged
    assert log.truncate(9) == 0
    assert log.truncate(2) == 2  # down to start: allowed, empties it
    assert (log.start, log.end, log.epochs) == (2, 2, [(1, 0)])


# -- commit -----------------------------------------------------------------------------------------


def test_commit_needs_a_majority_with_the_leaders_own_flush() -> None:
    reps = group()
    a, b = reps["a"], reps["b"]
    a.append(b"m1")
    a.append(b"m2")  # the log: marker, m1, m2
    assert a.commit == 0
    sync(a, b)  # b holds all three durably, a has flushed nothing yet
    assert b.log.end == 3 and a.commit == 0
    a.flushed(3)
    assert a.commit == 3  # a and b: two of three
    assert b.fetch().offset == 3
    b.on_reply(a.on_fetch(b.fetch()) or FetchReply(1, "b"))
    assert b.commit == 0  # parked (nothing new); the next reply brings the commit
    a.append(b"m3")
    (reply,) = a.wake()
    b.on_reply(reply)
    assert b.commit == 3 and b.log.end == 4


def test_a_fetch_with_nothing_new_waits_at_the_leader_until_an_append() -> None:
    reps = group()
    a, c = reps["a"], reps["c"]
    a.flushed(1)
    sync(a, c)
    assert a.on_fetch(c.fetch()) is None and "c" in a.parked
    a.append(b"m")
    replies = a.wake()
    assert [r.replica for r in replies] == ["c"] and replies[0].entries[0].data == b"m"


def test_an_older_epochs_entries_commit_only_with_one_of_the_leaders_own() -> None:
    """Raft's figure 8: entries of epoch 1 on a majority are not committed by counting them
    under epoch 3; they commit once the epoch-3 marker is on a majority too."""
    a, b = Replica("a"), Replica("b")
    a.become_leader(1, NAMES)
    a.append(b"old")
    # a leads epoch 3 now, with its epoch-1 entries; b got them earlier, c has nothing.
    b.log.extend(a.log.read(0, 10))
    b.flushed(b.log.end)
    a.become_follower(2, "c")
    assert a.become_leader(3, NAMES)
    a.flushed(2)  # marker(1), old(1) durable here; the epoch-3 marker not yet
    b.become_follower(3, "a")
    reply = a.on_fetch(b.fetch())  # b acknowledges offset 2: epoch-1 entries on a majority
    assert a.commit == 0, "an old epoch's entries committed by counting"
    b.on_reply(reply)
    b.flushed(b.log.end)
    a.flushed(a.log.end)
    a.on_fetch(b.fetch())
    assert a.commit == 3  # with the epoch-3 marker, the older entries commit too


# -- divergence and catch-up --------------------------------------------------------------------


def test_a_follower_with_a_deposed_leaders_entries_truncates_them_by_epoch() -> None:
    reps = group()
    a, b, c = reps["a"], reps["b"], reps["c"]
    a.append(b"m1")
    a.flushed(a.log.end)
    sync(a, b)
    sync(a, c)  # all hold marker, m1
    for data in (b"lost-1", b"lost-2"):  # never replicated: a is cut off
        a.append(data)
    a.flushed(a.log.end)
    # The controller makes b leader of epoch 2 (b and c answered; a did not).
    assert choose_leader(NAMES, {"b": b.log.position(), "c": c.log.position()}) in ("b", "c")
    b.become_leader(2, NAMES)
    b.flushed(b.log.end)
    c.become_follower(2, "b")
    sync(b, c)
    b.append(b"new")
    b.flushed(b.log.end)
    # a comes back as a follower: its lost-1, lost-2 go, it takes the new epoch's entries.
    assert a.become_follower(2, "b")
    reply = b.on_fetch(a.fetch())
    assert reply is not None and reply.diverging is not None and reply.diverging.end == 2
    a.on_reply(reply)
    assert a.log.end == 2
    sync(b, a)
    assert [e.data for e in a.log.entries] == [e.data for e in b.log.entries]
    assert [e.data for e in a.log.entries][-1] == b"new"


def test_a_follower_far_behind_catches_up_in_batches() -> None:
    from merpati.cluster.replication import replica as replica_mod

    reps = group()
    a, c = reps["a"], reps["c"]
    for i in range(2500):
        a.append(b"%d" % i)
    a.flushed(a.log.end)
    rounds = 0
    while c.log.end < a.log.end:
        c.on_reply(a.on_fetch(c.fetch()))
        c.flushed(c.log.end)
        rounds += 1
    assert rounds == -(-a.log.end // replica_mod.FETCH_LIMIT)
    assert a.commit == 2000  # c acknowledged what it asked for last time
    assert a.on_fetch(c.fetch()) is None  # its next fetch acknowledges the rest, and waits
    assert a.commit == a.log.end


def test_a_follower_behind_the_leaders_compacted_log_is_told_to_read_a_snapshot() -> None:
    reps = group()
    a, b = reps["a"], reps["b"]
    for i in range(5):
        a.append(b"m%d" % i)
    a.flushed(a.log.end)
    a.log.compact(4)
    assert b.fetch().offset == 0
    reply = a.on_fetch(b.fetch())
    assert reply == FetchReply(1, "b", snapshot=True)
    assert a.match["b"] == 0 and a.commit == 0  # not an acknowledgement
    assert b.on_reply(reply) == [] and b.log.end == 0  # the caller reads a snapshot


def test_position_is_the_epoch_and_end_of_what_is_durable() -> None:
    b = Replica("b")
    assert b.position() == (0, 0)
    for epoch in (1, 1, 3, 3):
        b.log.append(epoch, b"x")
    b.flushed(2)  # only the epoch-1 entries are durable
    assert b.position() == (1, 2) and b.log.position() == (3, 4)
    b.flushed(3)
    assert b.position() == (3, 3)
    b.flushed(99)  # never past the log's end
    assert b.position() == (3, 4)
    b.flushed(1)  # never backwards
    assert b.flushed_to == 4


def test_a_follower_restored_from_a_snapshot_fetches_on_from_its_offset() -> None:
    reps = group()
    a, b = reps["a"], reps["b"]
    for i in range(6):
        a.append(b"m%d" % i)  # marker at 0 (epoch 1), m0..m5 at 1..6
    a.flushed(a.log.end)
    a.log.compact(5)
    b.log.append(1, b"stale")  # what the snapshot replaces
    b.restore(5, a.log.epochs)
    assert (b.log.start, b.log.end, b.flushed_to, b.commit) == (5, 5, 5, 5)
    fetch = b.fetch()
    assert (fetch.offset, fetch.last_epoch, fetch.epoch) == (5, 1, 1)
    assert b.position() == (1, 5)
    reply = a.on_fetch(fetch)
    assert reply is not None and not reply.snapshot and reply.diverging is None
    assert [e.data for e in b.on_reply(reply)] == [b"m4", b"m5"]
    assert a.match["b"] == 5 and a.commit == 5  # the fetch acknowledged the snapshot's offset


def test_the_fetch_after_a_restore_names_the_epoch_before_the_snapshots_offset() -> None:
    b = Replica("b")
    b.become_follower(6, "a")
    b.restore(9, [(1, 0), (2, 5), (4, 9), (6, 12)])
    assert b.log.epochs == [(1, 0), (2, 5), (4, 9)]
    assert b.fetch() == Fetch(6, "b", 9, 2)  # entry 8 is epoch 2's; epoch 4 starts at 9


# -- fencing ----------------------------------------------------------------------------------


def test_a_paused_leader_that_wakes_up_is_fenced() -> None:
    reps = group()
    a, b, c = reps["a"], reps["b"], reps["c"]
    a.flushed(1)
    # a is SIGSTOPped; the controller moves leadership to b.
    b.become_leader(2, NAMES)
    c.become_follower(2, "b")
    # a wakes up, still thinking it leads epoch 1: c's fetch (epoch 2) deposes it.
    assert a.leads
    assert a.on_fetch(c.fetch()) is None
    assert not a.leads and a.deposed
    with pytest.raises(NotLeader):
        a.append(b"too late")
    # Its answers to older fetches are ignored by followers of the newer epoch.
    stale = FetchReply(1, "c", ())
    assert c.on_reply(stale) == [] and c.epoch == 2
    # The controller's older decisions are ignored too.
    assert not c.become_follower(1, "a") and not b.become_leader(2, NAMES)
    assert a.become_follower(2, "b")


def test_a_fetch_from_an_unknown_replica_or_another_epoch_is_not_an_acknowledgement() -> None:
    reps = group()
    a = reps["a"]
    a.flushed(1)
    assert a.on_fetch(Fetch(1, "stranger", 1, 1)) is None
    reply = a.on_fetch(Fetch(0, "b", 1, 1))  # b behind by an epoch: answered, to learn it
    assert reply is not None and reply.epoch == 1
    assert a.commit == 1  # a and b hold the marker


def test_fence_deposes_a_leader_and_refuses_older_epochs() -> None:
    reps = group()
    a, c = reps["a"], reps["c"]
    a.append(b"m")
    a.flushed(a.log.end)
    stale_reply = a.on_fetch(c.fetch())  # epoch 1 entries, not yet delivered to c
    assert stale_reply is not None and stale_reply.entries
    a.fence(1)  # not newer: nothing changes
    assert a.leads
    a.fence(2)
    assert (a.epoch, a.role, a.leader, a.deposed, a.leads) == (2, "follower", None, True, False)
    with pytest.raises(NotLeader):
        a.append(b"after the fence")
    assert a.flushed(a.log.end) == [] and a.wake() == []
    # A fenced follower drops an epoch-1 answer, and its next fetch deposes an epoch-1 leader.
    c.fence(2)
    assert c.leader is None
    assert c.on_reply(stale_reply) == [] and c.log.end == 0
    b = reps["b"]
    assert b.on_fetch(Fetch(2, "c", 0, 0)) is None and not b.deposed  # b never led
    old = Replica("old")
    old.become_leader(1, ("old", "c"))
    assert old.on_fetch(c.fetch()) is None and old.deposed


def test_a_fenced_replica_may_lead_the_elections_epoch_once() -> None:
    reps = group()
    a, b = reps["a"], reps["b"]
    sync(a, b)
    b.fence(2)
    a.fence(2)
    assert b.become_leader(2, NAMES)
    assert b.leads and b.epoch == 2
    marker = b.log.entries[-1]
    assert (marker.offset, marker.epoch, marker.data) == (1, 2, b"")
    assert b.log.epochs == [(1, 0), (2, 1)]
    assert not b.become_leader(2, NAMES)  # the same decision again: no second marker
    c = reps["c"]
    c.fence(3)
    assert not c.become_leader(2, NAMES) and c.log.end == 0  # older than the fence: no marker
    assert b.log.end == 2
    # The deposed leader of epoch 1, fenced at 2, follows; it could have led 2 as well.
    assert a.become_follower(2, "b")
    other = group()["a"]
    other.fence(2)
    assert other.deposed and other.become_leader(2, NAMES) and other.leads


# -- election -------------------------------------------------------------------------------------


def test_election_waits_for_a_majority_and_takes_the_most_up_to_date() -> None:
    assert choose_leader(NAMES, {"a": (3, 10)}) is None
    assert choose_leader(NAMES, {"a": (3, 10), "b": (3, 12)}) == "b"
    assert choose_leader(NAMES, {"a": (4, 5), "b": (3, 12)}) == "a"  # a later epoch wins
    assert choose_leader(NAMES, {"a": (1, 1), "zz": (9, 9)}) is None  # not a replica


# -- a randomized model ---------------------------------------------------------------------------


class Model:
    """Three replicas over a network that delays, drops, duplicates and reorders; replicas crash
    (losing what they had not flushed) and pause; the controller fails the leader over."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.reps = group()
        self.epoch = 1
        self.leader = "a"
        self.down: set[str] = set()
        self.net: list[tuple[str, object]] = []  # (destination, message)
        self.committed: dict[int, bytes] = {}  # offset -> data, every entry ever committed
        self.counter = 0

    def send(self, dest: str, msg: object) -> None:
        self.net.append((dest, msg))

    def step(self) -> None:
        r = self.rnd.random()
        leader = self.reps[self.leader]
        if r < 0.2 and self.leader not in self.down and leader.leads:
            self.counter += 1
            leader.append(b"m%d" % self.counter)
            for reply in leader.wake():
                self.send(reply.replica, reply)
        elif r < 0.4:
            n = self.rnd.choice(NAMES)
            if n not in self.down:
                rep = self.reps[n]
                for reply in rep.flushed(self.rnd.randint(rep.flushed_to, rep.log.end)):
                    self.send(reply.replica, reply)
        elif r < 0.6:
            n = self.rnd.choice(NAMES)
            rep = self.reps[n]
            if n not in self.down and rep.role == "follower" and rep.leader:
                self.send(rep.leader, rep.fetch())
        elif r < 0.9 and self.net:
            i = self.rnd.randrange(len(self.net))
            dest, msg = self.net[i] if self.rnd.random() < 0.2 else self.net.pop(i)  # dup
            if dest in self.down or self.rnd.random() < 0.1:
                return  # lost
            rep = self.reps[dest]
            if isinstance(msg, Fetch):
                reply = rep.on_fetch(msg)
                if reply is not None:
                    self.send(msg.replica, reply)
            else:
                rep.on_reply(msg)
        elif r < 0.93:
            self.crash(self.rnd.choice(NAMES))
        elif r < 0.97:
            self.down.discard(self.rnd.choice(NAMES))
        elif r < 0.98 or self.leader in self.down:
            self.fail_over()
        self.record_commits()

    def crash(self, n: str) -> None:
        """n dies: what it had not flushed is gone; it comes back as a follower."""
        if len(self.down) >= 1:
            return  # keep a majority alive
        rep = self.reps[n]
        rep.log.truncate(rep.flushed_to)
        rep.commit = min(rep.commit, rep.log.end)
        self.down.add(n)
        if n == self.leader:
            rep.role = "follower"  # a restarted process does not lead until told
            rep.parked = {}

    def fail_over(self) -> None:
        up = [n for n in NAMES if n not in self.down]
        positions = {n: self.reps[n].log.position() for n in up}
        new = choose_leader(NAMES, positions)
        if new is None:
            return
        self.epoch += 1
        self.leader = new
        # The controller's decision reaches the replicas that are up (a paused old leader
        # learns it later, or is fenced first).
        for n in up:
            if n == new:
                assert self.reps[n].become_leader(self.epoch, NAMES)
            else:
                self.reps[n].become_follower(self.epoch, new)
        for n in NAMES:
            if n in self.down:
                self.reps[n].become_follower(self.epoch, new)

    def record_commits(self) -> None:
        for rep in self.reps.values():
            if rep.role == "leader" and not rep.deposed:
                for e in rep.log.read(0, rep.commit):
                    seen = self.committed.setdefault(e.offset, e.data)
                    assert seen == e.data, f"offset {e.offset} committed twice, differently"

    def check(self) -> None:
        # Every committed entry is in the log of the current leader, unchanged.
        leader = self.reps[self.leader]
        for offset, data in self.committed.items():
            assert offset < leader.log.end, f"committed offset {offset} lost by {self.leader}"
            assert leader.log.entries[offset].data == data
        # Committed prefixes agree on every replica.
        for rep in self.reps.values():
            upto = min(rep.commit, rep.log.end)
            for e in rep.log.read(0, upto):
                if e.offset in self.committed:
                    assert self.committed[e.offset] == e.data


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_nothing_committed_is_lost_across_crashes_partitions_and_failovers(seed: int) -> None:
    m = Model(random.Random(seed))
    for _ in range(400):
        m.step()
    # Heal: everyone up, a leader elected, the followers caught up.
    m.down.clear()
    m.fail_over()
    leader = m.reps[m.leader]
    leader.flushed(leader.log.end)
    for n in NAMES:
        if n != m.leader:
            # One round per epoch to undo at most, then one per batch of entries.
            sync(leader, m.reps[n], rounds=len(leader.log.epochs) + 5)
    leader.flushed(leader.log.end)
    m.record_commits()
    m.check()
    assert leader.commit == leader.log.end  # all caught up: everything commits
    for n in NAMES:
        assert [e.data for e in m.reps[n].log.entries] == [e.data for e in leader.log.entries]


def test_a_follower_that_went_on_into_an_epoch_the_leader_never_had_truncates_to_its_own_end() -> (
    None
):
    """Found by the model: the follower's last epoch (3) is unknown to the leader, whose epoch 2
    runs on past the follower's end. Truncating to the leader's answer alone would not move."""
    leader, follower = Replica("c"), Replica("b")
    for _ in range(22):
        leader.log.append(2, b"two")
    leader.log.append(5, b"five")
    follower.log.extend(leader.log.read(0, 17))
    follower.log.append(3, b"three (a deposed leader's)")
    follower.flushed_to = follower.log.end
    leader.epoch, leader.role, leader.leader = 5, "leader", "c"
    leader.replicas, leader.match = ("b", "c"), {"b": 0}
    follower.become_follower(5, "c")
    reply = leader.on_fetch(follower.fetch())
    assert reply is not None and reply.diverging is not None
    assert (reply.diverging.epoch, reply.diverging.end) == (2, 18)
    follower.on_reply(reply)
    assert follower.log.end == 17  # where epoch 2 ends in its own log
    sync(leader, follower, rounds=2)
    assert [e.data for e in follower.log.entries] == [e.data for e in leader.log.entries]


def test_a_leader_counts_commits_by_its_current_replica_set():
    leader = Replica("a")
    leader.become_leader(1, ("a", "b", "c"))
    leader.flushed(leader.log.end)
    entry = leader.append(b"x")
    leader.flushed(leader.log.end)
    assert leader.commit <= entry.offset  # a alone is not a majority of three
    # b leaves: a and c are two, and a majority needs both.
    leader.set_replicas(("a", "c"))
    assert set(leader.match) == {"c"}
    assert leader.commit <= entry.offset
    leader.on_fetch(Fetch(1, "c", leader.log.end, 1))
    assert leader.commit == leader.log.end
    # d joins empty; a majority of a, c, d is two: a alone does not commit the next entry.
    leader.set_replicas(("a", "c", "d"))
    assert leader.match["d"] == 0
    nxt = leader.append(b"y")
    leader.flushed(leader.log.end)
    assert leader.commit <= nxt.offset
    leader.on_fetch(Fetch(1, "d", leader.log.end, 1))
    assert leader.commit == leader.log.end
