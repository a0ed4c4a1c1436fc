"""One replica's copy of a replicated queue's log: entries numbered by offset, each stamped with the
leader epoch that wrote it.

The epoch history (`epochs`: the first offset each epoch wrote) is what divergence is settled by,
as Kafka does since KIP-101 and Raft does with its log-matching property: a follower that asks
"where does my last epoch end in your log?" learns the offset up to which it agrees with the
leader, and truncates the rest. A high-water mark alone is not enough: after two fast failovers a
follower could keep entries no leader has, or drop entries a majority confirmed.

Sans-I/O and in memory: the replica roles (cluster/replication/replica.py) decide, the caller
persists what `appended` and `truncated` tell it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    offset: int
    epoch: int
    data: bytes  # b"": the marker a new leader writes at the start of its epoch


class LogError(Exception):
    """An append that would break the log's order (a bug in the caller, never a peer's input)."""


class ReplicaLog:
    def __init__(self) -> None:
        self.entries: list[Entry] = []  # entries[i].offset == start + i
        self.start = 0  # the offset of entries[0] (a snapshot or compaction may raise it)
        # (epoch, first offset it wrote), increasing in both.
        self.epochs: list[tuple[int, int]] = []

    @property
    def end(self) -> int:
        """The offset the next entry takes."""
        return self.start + len(self.entries)

    @property
    def last_epoch(self) -> int:
        return self.epochs[-1][0] if self.epochs else 0

    def position(self) -> tuple[int, int]:
        """(last epoch, end offset): how up to date this copy is (compared as a tuple)."""
        return self.last_epoch, self.end

    def epoch_at(self, offset: int) -> int:
        """The epoch of the entry at `offset` (0 for none: before the log's first entry). Below
        `start` (compacted away) the epoch history still answers."""
        if offset < 0:
            return 0
        if offset >= self.end:
            raise LogError(f"no entry at {offset}: the log ends at {self.end}")
        if offset >= self.start:
            return self.entries[offset - self.start].epoch
        epoch = 0
        for e, first in self.epochs:
            if first > offset:
                break
            epoch = e
        return epoch

    def compact(self, offset: int) -> None:
        """Forget the entries before `offset` (applied to the queue's state, held by every
        replica or given up on); the epoch history stays, truncation still goes by it."""
        offset = min(offset, self.end)
        if offset > self.start:
            del self.entries[: offset - self.start]
            self.start = offset

    def reset(self, start: int, epochs: list[tuple[int, int]]) -> None:
        """Empty, continuing at `start` with the given epoch history (a snapshot's)."""
        self.entries = []
        self.start = start
        self.epochs = [tuple(e) for e in epochs if e[1] <= start]  # type: ignore[misc]

    def append(self, epoch: int, data: bytes) -> Entry:
        if epoch < self.last_epoch:
            raise LogError(f"epoch {epoch} is older than the log's last epoch {self.last_epoch}")
        if epoch > self.last_epoch:
            self.epochs.append((epoch, self.end))
        entry = Entry(self.end, epoch, data)
        self.entries.append(entry)
        return entry

    def extend(self, entries: list[Entry]) -> None:
        """Entries a leader sent, continuing this log at its end."""
        for e in entries:
            if e.offset != self.end:
                raise LogError(f"entry at {e.offset} does not continue the log at {self.end}")
            self.append(e.epoch, e.data)

    def read(self, offset: int, limit: int) -> list[Entry]:
        i = max(0, offset - self.start)
        return self.entries[i : i + limit]

    def epoch_end(self, epoch: int) -> tuple[int, int]:
        """Where `epoch` ends in this log: (the largest epoch here not above it, the offset after
        that epoch's last entry). A follower whose last epoch is `epoch` agrees with this log up
        to that offset (Kafka's OffsetsForLeaderEpoch)."""
        for i in range(len(self.epochs) - 1, -1, -1):
            e, _first = self.epochs[i]
            if e <= epoch:
                after = self.epochs[i + 1][1] if i + 1 < len(self.epochs) else self.end
                return e, after
        return 0, self.start

    def truncate(self, offset: int) -> int:
        """Drop every entry at `offset` and after; returns how many went."""
        if offset >= self.end:
            return 0
        if offset < self.start:
            # Entries before `start` were applied: only committed entries are, and a committed
            # entry never diverges. Reaching here means this copy cannot be trusted.
            raise LogError(f"cannot truncate to {offset}, before the log's start {self.start}")
        dropped = self.end - offset
        del self.entries[offset - self.start :]
        while self.epochs and self.epochs[-1][1] >= offset:
            self.epochs.pop()
        return dropped
