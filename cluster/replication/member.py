"""This node's replica of one replicated (quorum) queue: the replication protocol
(replica.py) joined to the store, the broker and the links to the other replicas.

Theory of operation.
- Every replica keeps the queue's log durably in its store (table `qlog`) and applies the
  committed entries to the queue's rows (table `messages`, the same rows a classic queue has),
  in the store's writer thread, with synchronous=FULL and group commit. So the rows are the
  queue's committed state, and `replicas.applied` says up to which log offset.
- The leader serves the queue with a LocalQueue whose store is a `LeaderStore`: the queue's
  store calls (append, delete, delivered mark, purge) become one log entry per loop turn
  (cluster/replication/ops.py). A publisher confirm waits for a ledger token that is resolved
  once that entry is committed: durable on a majority of the replicas, the leader included.
- Followers pull (links.py) and write what they get before they ask again, which is what tells
  the leader they hold it.
- A new leader loads its queue from its rows plus its log's unapplied suffix (every committed
  entry is in it: the election chose the most complete replica), and deliveries it made before
  come again marked redelivered (the delivered mark travels in the log too).
- Each LocalQueue a replica ever leads gets its own LeaderStore (a generation): once this node
  no longer leads, what the old queue still does (a late ack) is dropped, never written into a
  later epoch's log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import ops
from .log import Entry, LogError
from .replica import Fetch, FetchReply, NotLeader, Replica

log = logging.getLogger("merpati.replication")

# Entries the leader keeps in memory for a follower that lags (beyond: it reads a snapshot).
MAX_BEHIND = 100_000
# How long a follower's snapshot holds back the leader's log compaction.
SNAPSHOT_PIN = 60.0
# Rows per snapshot chunk.
SNAPSHOT_ROWS = 2000
# Seq numbers start each epoch at epoch << SEQ_EPOCH_SHIFT at least, so a delivery of an older
# epoch (a late ack) can never name a message of a newer one (RabbitMQ #4305).
SEQ_EPOCH_SHIFT = 28


class LeaderStore:
    """What a leader's LocalQueue sees as its store: its operations become log entries."""

    keeps_every_message = True

    def __init__(self, member: QueueReplica, generation: int) -> None:
        self.member = member
        self.generation = generation
        self.qid = member.qid

    def queue_id(self, vhost: str, name: str, durable: bool) -> int:
        return self.member.qid

    def append(
        self,
        qid: int,
        seq: int,
        transient: bool,
        route: bytes,
        props: bytes,
        body: bytes,
        expires: float = 0.0,
    ) -> int:
        return self.member.op(self.generation, ops.enqueue(seq, expires, route, props, body), True)

    def delete(self, qid: int, seq: int) -> None:
        self.member.op(self.generation, ops.seq_op(ops.DEL, seq))

    def mark_delivered(self, qid: int, seq: int) -> None:
        self.member.delivered_op(self.generation, seq)

    def set_delivery_count(self, qid: int, seq: int, count: int) -> None:
        self.member.op(self.generation, ops.count_op(seq, count))

    def purge_after(self, qid: int, seq: int) -> None:
        self.member.op(self.generation, ops.seq_op(ops.PURGE, seq))

    def drop_queue(self, qid: int) -> None:
        """The queue was deleted: the replica goes with it (ClusterNode closes it)."""

    def page_in(self, qid: int, after_seq: int, limit: int, callback: Callable) -> None:
        # A replicated queue keeps every message in memory (it has no budget), so it never
        # pages; answering nothing tells a queue that believed otherwise to trust the store.
        asyncio.get_running_loop().call_soon(callback, [])


class QueueReplica:
    def __init__(self, links: Any, qdef: Any, node_id: str, store: Any, ledger: Any) -> None:
        self.links = links  # cluster.replication.links.ReplicaLinks
        self.vhost = qdef.vhost
        self.name = qdef.name
        self.incarnation = qdef.incarnation
        self.replicas: tuple[str, ...] = tuple(qdef.replicas)
        self.node_id = node_id
        self.store = store
        self.ledger = ledger
        self.qid = store.queue_id(qdef.vhost, qdef.name, True)
        self.replica = Replica(node_id)
        self.applied = 0
        self.max_seq = 0  # the highest message seq the applied entries used
        self.closed = False
        # Leader: pending operations of this loop turn, their token, the tokens by entry offset.
        self.generation = 0
        self._ops: list[bytes] = []
        self._delivered = 0
        self._token = 0
        self._flush_scheduled = False
        self.tokens: deque[tuple[int, int]] = deque()
        self.dropped_deletes: list[int] = []  # see _step_down
        # Leader: where each follower's fetch stream is (for parked fetches answered later).
        self.streams: dict[str, Callable[[FetchReply], None]] = {}
        self.pins: dict[str, tuple[int, float]] = {}  # follower -> (snapshot offset, when)
        # Writes in flight are counted per truncation generation: a commit callback of entries
        # written before a truncation says nothing about the entries written after it.
        self._cut_generation = 0
        self.snapshotting = False

    @property
    def key(self) -> tuple[str, str, str]:
        return self.vhost, self.name, self.incarnation

    def status(self) -> dict[str, Any]:
        """This replica as operators see it (the leader also knows how far each follower is)."""
        r = self.replica
        out: dict[str, Any] = {
            "role": "leader" if r.leads else r.role,
            "epoch": r.epoch,
            "leader": r.leader,
            "log_end": r.log.end,
            "durable": r.flushed_to,
            "commit": r.commit,
            "applied": self.applied,
            "snapshotting": self.snapshotting,
        }
        if r.leads:
            out["followers"] = {
                name: {"durable": match, "lag": max(0, r.log.end - match)}
                for name, match in sorted(r.match.items())
            }
        return out

    # -- opening --------------------------------------------------------------------------------

    def open(self, min_epoch: int = 0) -> None:
        """Load what the store holds of this replica (or start empty)."""
        meta, entries = self.store.load_replica(self.qid)
        store = self.store
        if meta is None or meta[0] != self.incarnation:
            if meta is not None:
                log.info(
                    "replica of queue '%s' in vhost '%s': dropping an earlier queue's data "
                    "(incarnation %s, now %s)",
                    self.name,
                    self.vhost,
                    meta[0],
                    self.incarnation,
                )
            store.purge_after(self.qid, 0)
            store.log_cut(self.qid, 0)
            self._save_meta()
            self.replica.epoch = min_epoch
            return
        incarnation, epoch, applied, history = meta
        self.replica.epoch = max(epoch, min_epoch)
        if applied < 0:
            # A snapshot was cut short: nothing here can be trusted; start over from nothing.
            store.purge_after(self.qid, 0)
            store.log_cut(self.qid, 0)
            applied, history, entries = 0, [], []
        history_list = history.get("e", []) if isinstance(history, dict) else history
        self.max_seq = history.get("s", 0) if isinstance(history, dict) else 0
        self.applied = applied
        rlog = self.replica.log
        rlog.reset(applied, [tuple(e) for e in history_list])
        for offset, e_epoch, data in entries:
            if offset < rlog.end:
                continue  # applied already (its cut did not commit before the stop)
            if offset != rlog.end or e_epoch < rlog.last_epoch:
                break
            rlog.append(e_epoch, data)
        self.replica.flushed_to = rlog.end
        self.replica.commit = applied
        self._save_meta()

    def _save_meta(self) -> None:
        history = {"e": [list(e) for e in self.replica.log.epochs], "s": self.max_seq}
        self.store.set_replica(
            self.qid, self.incarnation, self.replica.epoch, self.applied, history
        )

    # -- roles ----------------------------------------------------------------------------------

    def lead(self, epoch: int) -> bool:
        """Lead from `epoch` on: writes the epoch's marker entry (False: a stale decision)."""
        if not self.replica.become_leader(epoch, self.replicas):
            return False
        self.generation += 1
        self.streams = {}
        self._persist([self.replica.log.entries[-1]])
        return True

    def follow(self, epoch: int, leader: str) -> None:
        was_leading = self.replica.role == "leader"
        self.replica.become_follower(epoch, leader)
        if was_leading:
            self._step_down()
        self.links.follow(self, leader)

    def set_replicas(self, replicas: tuple[str, ...]) -> None:
        commit = self.replica.commit
        self.replicas = tuple(replicas)
        self.replica.set_replicas(replicas)
        if self.replica.commit > commit:
            self._advance()  # one replica fewer to wait for

    def fence(self, epoch: int) -> tuple[int, int]:
        """An election for `epoch`: stop following older leaders; returns this replica's
        (last epoch, end offset)."""
        was_leading = self.replica.role == "leader"
        self.replica.fence(epoch)
        if was_leading:
            self._step_down()
        self._save_meta()
        return self.replica.position()

    def _step_down(self) -> None:
        """No longer the leader: what waits for a commit here will not get it. The settlements
        among it (deletes) are kept for the next leader (`dropped_deletes`): a consumer here
        saw its ack taken, and the message must not come back."""
        self.generation += 1
        self.dropped_deletes = self._uncommitted_deletes()
        self._ops.clear()
        self._delivered = 0
        tokens = [t for _off, t in self.tokens]
        if self._token:
            tokens.append(self._token)
            self._token = 0
        self.tokens.clear()
        if tokens:
            self.ledger.resolve(tokens, ok=False, error=self._not_leader())
        self.streams = {}

    def _not_leader(self) -> str:
        return f"queue '{self.name}' in vhost '{self.vhost}' lost its leader; publish again"

    def close(self, drop: bool) -> None:
        """The replica goes (queue deleted: `drop` its data; node stopping: keep it)."""
        if self.closed:
            return
        self._step_down()
        self.closed = True
        self.links.forget(self)
        if drop:
            self.store.drop_queue(self.qid)

    # -- the leader's queue --------------------------------------------------------------------

    def leader_store(self) -> LeaderStore:
        return LeaderStore(self, self.generation)

    def load_rows(self) -> tuple[list[tuple], int, int, int, dict[int, int]]:
        """The queue's state for its new leader: (rows as a LocalQueue recovers them, the seq
        up to which they may have been delivered, up to which they were as far as the log says,
        highest seq used, {seq: delivery count} of the messages that failed delivery), from the
        store's applied rows plus the log's unapplied entries. Read at once, before the queue
        takes any message: a message enqueued before the old ones are back would overtake them,
        or take a seq one of them has."""
        if not self.store.settle_writes():
            log.warning("queue '%s': the store is slow; loading what it committed", self.name)
        rows = self.store.load_head(self.qid, 1 << 62)[0]
        delivered = self.store.delivered_mark(self.qid)
        counts = self.store.delivery_counts(self.qid)
        state = {r[0]: [r[1], r[2], r[3], r[4], r[5], counts.get(r[0], 0)] for r in rows}
        max_seq = max([self.max_seq, *state])
        for e in self.replica.log.read(self.applied, 1 << 62):
            if not e.data:
                continue
            for op in ops.parse(e.data):
                if op[0] == ops.ENQ:
                    max_seq = max(max_seq, op[1])
            delivered = ops.replay(state, delivered, e.data)
        out = [(seq, *state[seq][:5]) for seq in sorted(state)]
        counts = {seq: row[5] for seq, row in state.items() if row[5]}
        # Every message the queue had is flagged redelivered: the delivered marks travel in the
        # log a loop turn after the deliveries, so the last ones before a crash can be missing,
        # and "may have been delivered" must never read as "was not".
        maybe = max([delivered, *state])
        return out, maybe, delivered, max(max_seq, self.replica.epoch << SEQ_EPOCH_SHIFT), counts

    def op(self, generation: int, data: bytes, token: bool = False) -> int:
        """An operation of the leader's queue (generation: which LocalQueue asks)."""
        if generation != self.generation or not self.replica.leads or self.closed:
            return self._refused_token() if token else 0
        self._ops.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if token:
            if not self._token:
                self._token = self.ledger.allocate()
            return self._token
        return 0

    def delivered_op(self, generation: int, seq: int) -> None:
        if generation != self.generation or not self.replica.leads:
            return
        if seq > self._delivered:
            self._delivered = seq
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _uncommitted_deletes(self) -> list[int]:
        seqs = []
        pending = [b"".join(self._ops)] if self._ops else []
        suffix = self.replica.log.read(self.replica.commit, 1 << 62)
        for data in [*(e.data for e in suffix if e.data), *pending]:
            try:
                seqs += [op[1] for op in ops.parse(data) if op[0] == ops.DEL]
            except ops.OpsError:
                continue
        return seqs

    def _refused_token(self) -> int:
        token = self.ledger.allocate()
        self.ledger.resolve([token], ok=False, error=self._not_leader())
        return token

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._delivered:
            self._ops.append(ops.seq_op(ops.DELIVERED, self._delivered))
            self._delivered = 0
        if not self._ops:
            return
        data = b"".join(self._ops)
        self._ops.clear()
        token, self._token = self._token, 0
        try:
            entry = self.replica.append(data)
        except NotLeader:
            if token:
                self.ledger.resolve([token], ok=False, error=self._not_leader())
            return
        if token:
            self.tokens.append((entry.offset, token))
        self._persist([entry])
        self._send(self.replica.wake())

    # -- durability and commit ------------------------------------------------------------------

    def _persist(self, entries: list[Entry]) -> None:
        if not entries:
            return
        for e in entries:
            self.store.log_append(self.qid, e.offset, e.epoch, e.data)
        end = entries[-1].offset + 1
        generation = self._cut_generation
        self.store.after_commit(lambda ok: self._durable(ok, end, generation))

    def _durable(self, ok: bool, end: int, generation: int) -> None:
        if self.closed or generation != self._cut_generation:
            return
        if not ok:
            # The write failed (disk full): write what is not durable yet again, later.
            log.error("queue '%s': replica log write failed; retrying", self.name)
            asyncio.get_running_loop().call_later(0.5, self._rewrite)
            return
        self._send(self.replica.flushed(end))
        self._advance()
        if self.replica.role == "follower":
            self.links.fetch(self)

    def _rewrite(self) -> None:
        if self.closed:
            return
        rlog = self.replica.log
        self._persist(rlog.read(self.replica.flushed_to, 1 << 62))

    def _advance(self) -> None:
        """Commit moved: resolve the confirms it covers, apply the entries to the rows."""
        commit = self.replica.commit
        if commit <= self.applied:
            return
        done = []
        tokens = self.tokens
        while tokens and tokens[0][0] < commit:
            done.append(tokens.popleft()[1])
        if done:
            self.ledger.resolve(done, ok=True)
        store, qid = self.store, self.qid
        for e in self.replica.log.read(self.applied, commit - self.applied):
            if e.data:
                for op in ops.parse(e.data):
                    if op[0] == ops.ENQ and op[1] > self.max_seq:
                        self.max_seq = op[1]
                ops.apply(store, qid, e.data)
        self.applied = commit
        self._save_meta()
        store.log_cut(qid, 0, commit)
        now = time.monotonic()
        floor = self.replica.compact_floor()
        for name, (offset, since) in list(self.pins.items()):
            if now - since > SNAPSHOT_PIN:
                del self.pins[name]
            else:
                floor = min(floor, offset)
        if self.applied - floor > MAX_BEHIND:
            floor = self.applied  # a follower that far behind reads a snapshot instead
        self.replica.log.compact(min(floor, self.applied))

    # -- leader: answering followers ------------------------------------------------------------

    def on_fetch(self, fetch: Fetch, send: Callable[[FetchReply], None]) -> FetchReply | None:
        self.streams[fetch.replica] = send
        commit = self.replica.commit
        reply = self.replica.on_fetch(fetch)
        if self.replica.commit > commit:
            self._advance()  # the fetch acknowledged entries: confirms may go out
        return reply

    def _send(self, replies: list[FetchReply]) -> None:
        for r in replies:
            send = self.streams.get(r.replica)
            if send is not None:
                send(r)

    def snapshot(self, follower: str, offset: int, after_seq: int, done: Callable) -> None:
        """A chunk of this leader's committed state for `follower`: `done(offset, epochs,
        delivered, rows, last)`. The first chunk (offset 0) fixes the snapshot's offset, and the
        log is kept from there until the follower fetches on (or SNAPSHOT_PIN passes)."""
        if offset == 0:
            offset = self.applied
        self.pins[follower] = (offset, time.monotonic())
        epochs = [e for e in self.replica.log.epochs if e[1] <= offset]

        def read(rows: list, delivered: int) -> None:
            done(offset, epochs, delivered, rows, len(rows) < SNAPSHOT_ROWS)

        self.store.read_queue(self.qid, after_seq, SNAPSHOT_ROWS, read)

    # -- follower -------------------------------------------------------------------------------

    def on_reply(self, reply: FetchReply) -> bool:
        """The leader's answer; False when the follower must read a snapshot first."""
        if self.closed or self.snapshotting:
            return True
        rlog = self.replica.log
        end_before = rlog.end
        try:
            fresh = self.replica.on_reply(reply)
        except LogError as e:
            log.error("queue '%s': replica log cannot follow its leader (%s)", self.name, e)
            return False
        if reply.snapshot:
            return False
        if rlog.end < end_before or (fresh and fresh[0].offset < end_before):
            # Truncated (diverging, or an older leader's leftovers replaced).
            self._cut_generation += 1
            cut = fresh[0].offset if fresh else rlog.end
            self.store.log_cut(self.qid, min(cut, rlog.end))
            self._save_meta()
        if fresh:
            self._persist(fresh)
        elif reply.diverging is not None or rlog.end < end_before:
            self.links.fetch(self)
        else:
            # Nothing new to write: the reply only moved the commit (or was stale).
            self._advance()
            self.links.fetch(self)
        return True

    def begin_snapshot(self) -> None:
        """Drop this replica's state before a snapshot's rows arrive (a crash meanwhile
        leaves applied = -1: start over)."""
        self.snapshotting = True
        self._cut_generation += 1
        self.store.purge_after(self.qid, 0)
        self.store.log_cut(self.qid, 0)
        self.store.set_replica(self.qid, self.incarnation, self.replica.epoch, -1, {"e": []})

    def snapshot_rows(self, rows: list[tuple[int, bytes, bytes, bytes, int, int]]) -> None:
        """(seq, route, props, body, expires_ms, delivery_count) rows of a snapshot chunk."""
        for seq, route, props, body, expires, count in rows:
            self.store.append(self.qid, seq, False, route, props, body, expires / 1000.0)
            if count:
                self.store.set_delivery_count(self.qid, seq, count)
            self.max_seq = max(self.max_seq, seq)

    def end_snapshot(self, offset: int, epochs: list[tuple[int, int]], delivered: int) -> None:
        if delivered:
            self.store.mark_delivered(self.qid, delivered)
        self.replica.restore(offset, epochs)
        self.applied = offset
        self.snapshotting = False
        self._save_meta()
        generation = self._cut_generation

        def durable(ok: bool) -> None:
            if not self.closed and generation == self._cut_generation:
                self.links.fetch(self)

        self.store.after_commit(durable)
