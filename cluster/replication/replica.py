"""The replication protocol of one replicated queue, as a state machine without I/O.

Theory of operation. The metadata Raft is the controller: it names each queue's replicas, its
leader and the leader's epoch (a number that only grows), and `become_leader` / `become_follower`
carry that decision to a replica. Data never goes through the controller:

- The leader appends what happens to the queue (enqueues, settlements) to its log.
- Followers pull: a `Fetch` says "I have durably everything before `offset`, and the entry before
  it is of epoch `last_epoch`". The leader checks that claim against its own log. If it holds,
  the fetch is also an acknowledgement, and the reply carries the entries from `offset` on. If it
  does not, the reply names where the follower's last epoch ends in the leader's log
  (`Diverging`), and the follower truncates to that and fetches again: truncation by epoch, never
  by high-water mark (KIP-101). A fetch that finds nothing new waits at the leader (`parked`)
  until something is appended.
- `commit` is the end of the prefix that a majority of the replicas, the leader included (its own
  store commit, `flushed`), hold durably, counted only up to an entry of the leader's own epoch:
  a new leader writes a marker entry first, and older entries commit with it (Raft's rule; a
  leader that counted an old epoch's entries could see them overwritten after another failover).
  A publisher's confirm waits until `commit` passes its entry.
- Fencing: every message carries the sender's epoch. A replica that has seen epoch E ignores a
  leader of an older epoch, and a leader that hears of a newer one is `deposed`: it can neither
  commit nor be obeyed again, so a paused process that wakes up thinking it leads does no harm.

Election is the controller's (`choose_leader`): among the replicas that answer, a majority at
least, the one with the highest (last epoch, end offset). It holds every committed entry: a
committed entry is on a majority, which shares a replica with any majority that answered, and
that replica's position is at most the chosen one's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .log import Entry, ReplicaLog

# Entries sent in one fetch reply at most.
FETCH_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Fetch:
    epoch: int  # the follower's epoch
    replica: str
    offset: int  # the follower holds every entry before it, durably
    last_epoch: int  # the epoch of its entry at offset - 1 (0: none)


@dataclass(frozen=True, slots=True)
class Diverging:
    """The follower's log departs from the leader's at `end`: truncate to it, fetch again."""

    epoch: int  # the largest epoch the leader has at or below the follower's last epoch
    end: int


@dataclass(frozen=True, slots=True)
class FetchReply:
    epoch: int  # the leader's epoch
    replica: str  # the follower it answers
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    diverging: Diverging | None = None
    # The follower's offset is before the leader's log start (compacted): it needs a snapshot of
    # the queue's state, then fetches on from the snapshot's offset.
    snapshot: bool = False


class Replica:
    """One replica of one queue: its log and its role (follower until told otherwise)."""

    def __init__(self, name: str, log: ReplicaLog | None = None) -> None:
        self.name = name
        self.log = log or ReplicaLog()
        self.epoch = 0  # the highest epoch this replica has seen
        self.role = "follower"
        self.leader: str | None = None
        self.deposed = False  # a leader that learnt of a newer epoch
        self.commit = 0
        self.flushed_to = 0  # the end of what the caller has made durable here
        # Leader only: the replicas and what each holds durably (its last fetch offset).
        self.replicas: tuple[str, ...] = ()
        self.match: dict[str, int] = {}
        self.parked: dict[str, Fetch] = {}

    # -- roles (the controller's decisions) -----------------------------------------------------

    def become_leader(self, epoch: int, replicas: Iterable[str]) -> bool:
        """Lead from `epoch` on (False: a stale decision, ignored). Writes the epoch's marker.
        `epoch` may equal the one this replica has seen: the controller fences the replicas at
        an election's epoch (`fence`) before it names the leader of that epoch."""
        if epoch < self.epoch or (epoch == self.epoch and self.role == "leader"):
            return False
        self.epoch = epoch
        self.role = "leader"
        self.leader = self.name
        self.deposed = False
        self.replicas = tuple(replicas)
        self.match = {r: 0 for r in self.replicas if r != self.name}
        self.parked = {}
        self.log.append(epoch, b"")
        return True

    def become_follower(self, epoch: int, leader: str) -> bool:
        """Follow `leader` in `epoch` (False: a stale decision, ignored)."""
        if epoch < self.epoch or (epoch == self.epoch and self.leads):
            return False
        self.epoch = epoch
        self.role = "follower"
        self.leader = leader
        self.parked = {}
        self.match = {}
        return True

    def set_replicas(self, replicas: Iterable[str]) -> None:
        """The replica set changed (one node more or less); a leader counts commits by it."""
        self.replicas = tuple(replicas)
        if self.role != "leader":
            return
        self.match = {r: self.match.get(r, 0) for r in self.replicas if r != self.name}
        for r in list(self.parked):
            if r not in self.match:
                del self.parked[r]
        if self.leads:
            self._advance_commit()

    def fence(self, epoch: int) -> None:
        """An election for `epoch` is under way: from now on this replica neither follows nor
        acknowledges a leader of an older epoch (its fetches carry `epoch`, which deposes that
        leader), so nothing can commit behind the controller's back while it chooses."""
        if epoch > self.epoch:
            self.epoch = epoch
            if self.role == "leader":
                self.deposed = True
            self.role = "follower"
            self.leader = None

    @property
    def leads(self) -> bool:
        """True while this replica may confirm, deliver and answer fetches."""
        return self.role == "leader" and not self.deposed

    # -- leader ---------------------------------------------------------------------------------

    def append(self, data: bytes) -> Entry:
        """Append an operation (leader only); its confirm waits until `commit` passes it."""
        if not self.leads:
            raise NotLeader(self.name, self.epoch)
        return self.log.append(self.epoch, data)

    def flushed(self, end: int) -> list[FetchReply]:
        """The caller made the log durable up to `end` here. On the leader this counts toward
        commit, and wakes the parked fetches; returns the replies to send."""
        self.flushed_to = max(self.flushed_to, min(end, self.log.end))
        if not self.leads:
            return []
        self._advance_commit()
        return self._wake()

    def on_fetch(self, fetch: Fetch) -> FetchReply | None:
        """A follower's fetch: the reply to send now, or None (parked until there is news, or
        ignored because this replica does not lead that epoch)."""
        if fetch.epoch > self.epoch:
            # A replica already follows a newer leader. Only the controller says who leads
            # (become_*), but a leader that hears of a newer epoch stops confirming now.
            if self.role == "leader":
                self.deposed = True
            return None
        if not self.leads or fetch.replica not in self.match:
            return None
        log = self.log
        if fetch.offset < log.start:
            return FetchReply(self.epoch, fetch.replica, snapshot=True)
        if fetch.offset > log.end or (
            fetch.offset > log.start and log.epoch_at(fetch.offset - 1) != fetch.last_epoch
        ):
            epoch, end = log.epoch_end(fetch.last_epoch)
            return FetchReply(
                self.epoch, fetch.replica, diverging=Diverging(epoch, min(end, fetch.offset))
            )
        self.parked.pop(fetch.replica, None)
        if fetch.offset > self.match[fetch.replica]:
            self.match[fetch.replica] = fetch.offset
            self._advance_commit()
        entries = tuple(log.read(fetch.offset, FETCH_LIMIT))
        if not entries and fetch.epoch == self.epoch and self.commit <= fetch.offset:
            self.parked[fetch.replica] = fetch  # nothing new: answer when there is
            return None
        # The follower's log is the leader's only up to what this reply brings it: commit no
        # further there.
        commit = min(self.commit, fetch.offset + len(entries))
        return FetchReply(self.epoch, fetch.replica, entries, commit)

    def wake(self) -> list[FetchReply]:
        """After appends: answer the parked fetches that now have entries to take."""
        return self._wake() if self.leads else []

    def _wake(self) -> list[FetchReply]:
        out = []
        for fetch in list(self.parked.values()):
            if self.log.end > fetch.offset or self.commit > fetch.offset:
                del self.parked[fetch.replica]
                reply = self.on_fetch(fetch)
                if reply is not None:
                    out.append(reply)
        return out

    def compact_floor(self) -> int:
        """The offset before which no replica needs entries any more (leader: what every
        follower holds; a follower never serves fetches)."""
        if self.role != "leader":
            return self.commit
        return min([self.commit, *self.match.values()])

    def _advance_commit(self) -> None:
        held = sorted([self.flushed_to, *self.match.values()], reverse=True)
        majority = len(self.replicas) // 2 + 1
        candidate = held[majority - 1] if len(held) >= majority else 0
        # Only an entry of this epoch commits by counting (older ones commit with it).
        if candidate > self.commit and self.log.epoch_at(candidate - 1) == self.epoch:
            self.commit = candidate

    # -- follower -------------------------------------------------------------------------------

    def position(self) -> tuple[int, int]:
        """(last epoch, end offset) of what is durable here: what an election compares."""
        return self.log.epoch_at(self.flushed_to - 1), self.flushed_to

    def restore(self, start: int, epochs: list[tuple[int, int]]) -> None:
        """The queue's state was replaced by a snapshot taken at `start`: the log continues
        there (follower only)."""
        self.log.reset(start, epochs)
        self.flushed_to = self.commit = start

    def fetch(self) -> Fetch:
        """What to ask the leader next: everything after what is durable here."""
        offset = self.flushed_to
        return Fetch(self.epoch, self.name, offset, self.log.epoch_at(offset - 1))

    def on_reply(self, reply: FetchReply) -> list[Entry]:
        """The leader's answer: the entries to make durable before the next fetch (then call
        `flushed(log.end)`); [] when there is nothing to write."""
        if reply.epoch < self.epoch or self.role != "follower":
            return []  # a deposed leader's answer: fenced
        if reply.epoch > self.epoch:
            self.epoch = reply.epoch
        if reply.snapshot:
            return []  # the caller fetches a snapshot (cluster.replication.member)
        if reply.diverging is not None:
            # Where the leader's epoch ends there, or where that epoch ends here if this log
            # went on into an epoch the leader never had (KIP-279): else the same fetch would
            # diverge again.
            d = reply.diverging
            self.log.truncate(min(d.end, self.log.epoch_end(d.epoch)[1]))
            self.flushed_to = min(self.flushed_to, self.log.end)
            self.commit = min(self.commit, self.log.end)
            return []
        log = self.log
        fresh: list[Entry] = []
        for e in reply.entries:
            if e.offset < log.end:
                if log.epoch_at(e.offset) == e.epoch:
                    continue  # held already (same offset and epoch: the same entry)
                log.truncate(e.offset)  # not yet durable leftovers of an older leader
                self.flushed_to = min(self.flushed_to, log.end)
            if e.offset != log.end:
                break  # a gap (an answer to an older fetch): the next fetch asks again
            log.extend([e])
            fresh.append(e)
        # reply.commit never passes what the leader checked of this log plus what it brought.
        self.commit = max(self.commit, min(reply.commit, log.end))
        return fresh


class NotLeader(Exception):
    def __init__(self, name: str, epoch: int) -> None:
        super().__init__(f"replica {name} does not lead (epoch {epoch})")


@dataclass
class Election:
    """The controller's choice of a new leader (see the module docstring)."""

    replicas: tuple[str, ...]
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def report(self, replica: str, position: tuple[int, int]) -> None:
        if replica in self.replicas:
            self.positions[replica] = position

    def choose(self) -> str | None:
        """The replica to lead, once a majority has reported (None: not yet, wait)."""
        if len(self.positions) < len(self.replicas) // 2 + 1:
            return None
        return max(self.positions, key=lambda r: (self.positions[r], r))


def choose_leader(replicas: Iterable[str], positions: dict[str, tuple[int, int]]) -> str | None:
    e = Election(tuple(replicas))
    for r, p in positions.items():
        e.report(r, p)
    return e.choose()
