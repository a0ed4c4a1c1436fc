"""The SQLite message store: WAL, synchronous=FULL, group commit in one writer thread.

Theory of operation. The event loop never waits for SQLite. Everything a queue asks of the store
during one turn of the loop (appends, deletes, delivery marks, queue drops) lands in one open batch,
which takes a token from the node's `ConfirmLedger` (node.core.ledger) when it first holds a
message. At the end of the turn the batch goes to the writer thread; the writer folds every batch
waiting for it into a single transaction, commits it (one fsync for all of them), and wakes the
loop once to resolve their tokens. A publisher confirm that depends on token T goes out when
`ledger.committed >= T`: that is the whole contract between queues and front ends.

A message appended and deleted within the same open batch (a consumer acked it before the commit)
never touches the disk. Deletes that fail (disk full) are carried into the next batch, so an acked
message can never come back; inserts that fail are reported as failed epochs, and their publishers
get basic.nack.

Why a thread of our own rather than aiosqlite: aiosqlite resolves a future per call, i.e. one loop
wake-up per statement; here one wake-up covers a whole committed batch, and executemany runs the
batch's rows in C.

Reads for paging (`page_in`) go through the writer too, in order after the writes before them, so
a page-in always sees the rows that were appended before it was asked for.

Schema: `queues(qid, vhost, name, durable, delivered)` — `delivered` is the highest sequence number
handed to a consumer, so after a crash the messages at or below it come back marked redelivered.
`messages(qid, seq, transient, route, props, body, delivery_count)` — `transient` rows
(non-persistent messages paged out of memory, messages of non-durable queues) are deleted when the
node starts; `delivery_count` is a replicated queue's count of failed deliveries (the replicas
apply it from the log: cluster/replication/ops.py), 0 for everything else.

A queue whose leadership moved to another node keeps its rows until they are handed over
(cluster.handover); `detach_queue` renames its row (HANDOVER_MARK and the qid appended to the
name) so that the same name can get a new queue here meanwhile, and `handover_name` reads such a
name back after a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue as queue_mod
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.ledger import ConfirmLedger
from ..metrics.counters import Histogram

log = logging.getLogger("merpati.store")

FORMAT = "merpati-store-4"
# Earlier formats this one opens, each with the statements that bring it up to FORMAT (run once,
# in one transaction, when the store is opened).
MIGRATIONS = {
    # 4: messages.delivery_count. A constant default: SQLite adds the column without rewriting
    # the table, however many messages it holds.
    "merpati-store-3": (
        "ALTER TABLE messages ADD COLUMN delivery_count INTEGER NOT NULL DEFAULT 0",
    ),
}

# A message's row id packs its queue and sequence number: (qid << SEQ_BITS) | seq. One integer key
# keeps rows in a plain rowid table (compact for large bodies, unlike WITHOUT ROWID) and in
# (queue, seq) order, so a queue is one id range.
SEQ_BITS = 40
# Back-pressure on the writer's backlog of message data (see SQLiteStore.backlogged), and what a
# row costs beyond its bytes (key, flags, the tuple) in that count.
BACKLOG_HIGH = 64 * 1024 * 1024
BACKLOG_LOW = 16 * 1024 * 1024
ROW_OVERHEAD = 64
SEQ_MASK = (1 << SEQ_BITS) - 1


def _lo(qid: int) -> int:
    return qid << SEQ_BITS


def _hi(qid: int) -> int:
    return (qid + 1) << SEQ_BITS


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queues (
    qid INTEGER PRIMARY KEY,
    vhost TEXT NOT NULL,
    name TEXT NOT NULL,
    durable INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    UNIQUE (vhost, name)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    transient INTEGER NOT NULL,
    expires INTEGER NOT NULL,  -- TTL / delayed-delivery deadline, ms since the epoch (0 = none)
    route BLOB NOT NULL,
    props BLOB NOT NULL,
    body BLOB NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0  -- a replicated queue's failed deliveries
);
-- Replicated queues (cluster/replication): the replica's place in the queue's log, and the log
-- entries it holds durably but has not applied to `messages` yet (id packs qid and offset).
CREATE TABLE IF NOT EXISTS replicas (
    qid INTEGER PRIMARY KEY,
    incarnation TEXT NOT NULL,
    epoch INTEGER NOT NULL,    -- the highest leader epoch this replica has seen
    applied INTEGER NOT NULL,  -- entries before this offset are applied to `messages`; -1: reset
    epochs TEXT NOT NULL       -- JSON [[epoch, first offset], ...]: the log's epoch history
);
CREATE TABLE IF NOT EXISTS qlog (
    id INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""


def _seqs(rows: list[tuple]) -> list[tuple]:
    """Rows keyed by packed id -> rows keyed by the queue's sequence number."""
    return [(r[0] & SEQ_MASK, r[1], r[2], r[3], r[4], r[5]) for r in rows]


class StoreError(Exception):
    """The store cannot be opened or used; the message names the file."""


# A suffix, not a prefix: delayed-message pseudo queues (node.core.delayed) start with NUL too.
HANDOVER_MARK = "\0handover\0"


def handover_name(stored_name: str) -> tuple[str, bool]:
    """(queue name, detached?) of a name in the queues table (see `detach_queue`)."""
    name, mark, _ = stored_name.partition(HANDOVER_MARK)
    return name, bool(mark)


class _Batch:
    __slots__ = (
        "epoch",
        "inserts",
        "deletes",
        "delivered",
        "queues",
        "drops",
        "purges",
        "renames",
        "log_rows",
        "log_cuts",
        "replicas",
        "counts",
        "callbacks",
        "bytes",
    )

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.bytes = 0  # message rows' size, counted in the store's backlog until committed
        self.inserts: dict[int, tuple] = {}  # packed id -> row
        self.deletes: list[tuple[int]] = []
        self.delivered: dict[int, int] = {}
        self.queues: list[tuple[int, str, str, int]] = []
        self.drops: list[int] = []
        self.purges: list[tuple[int, int]] = []
        self.renames: list[tuple[str, int]] = []  # (new name, qid)
        # Replicated queues: log entries to keep, qlog id ranges to drop, replica rows.
        self.log_rows: list[tuple[int, int, bytes]] = []
        self.log_cuts: list[tuple[int, int]] = []
        self.replicas: dict[int, tuple] = {}
        self.counts: dict[int, int] = {}  # packed id -> delivery count
        # Told (in the loop) whether the batch committed.
        self.callbacks: list[Callable[[bool], None]] = []

    def empty(self) -> bool:
        return not (
            self.log_rows
            or self.log_cuts
            or self.replicas
            or self.callbacks
            or self.inserts
            or self.deletes
            or self.delivered
            or self.queues
            or self.drops
            or self.purges
            or self.renames
            or self.counts
        )


class _Read:
    __slots__ = ("sql", "args", "callback")

    def __init__(self, sql: str, args: tuple, callback: Callable[[list], None]) -> None:
        self.sql = sql
        self.args = args
        self.callback = callback


_STOP = object()


class _Barrier:
    """Set by the writer once everything queued before it is committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class CommitWatcher:
    """Something waiting for commits (a channel with publisher confirms outstanding)."""

    def store_committed(self, committed: int, failed: frozenset[int]) -> None: ...


class SQLiteStore:
    def __init__(
        self,
        path: Path,
        synchronous: str = "FULL",
        max_bytes: int = 0,
        ledger: ConfirmLedger | None = None,
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.max_bytes = max_bytes
        # Publisher confirms wait on ledger tokens; a batch takes one when it first holds a message.
        self.ledger = ledger if ledger is not None else ConfirmLedger()
        self._batch = _Batch(0)
        self.backlog = 0  # bytes of message rows handed to the store and not yet committed
        self._drained: list[Callable[[], None]] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._qids: dict[tuple[str, str], int] = {}
        self._durable: dict[int, bool] = {}
        self._next_qid = 0
        self.last_error: str | None = None
        self.commits = 0
        self.committed_rows = 0
        # Commit latency and rows per commit, as plain numbers the writer thread updates and the
        # metrics exporter reads.
        self.commit_latency = Histogram()
        self.commit_rows = Histogram((1, 10, 100, 1000, 10000, 100000))

    # -- opening ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        if self.max_bytes:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(16, self.max_bytes // page)}")
        return conn

    def open(self) -> dict[tuple[str, str], tuple[int, bool, int]]:
        """Open (or create) the store and drop what does not survive a restart.

        Returns {(vhost, name): (qid, durable, delivered)} of the queues with stored messages.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._connect()
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"message store {self.path} is corrupt: {check}")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            if row is None:
                if conn.execute("SELECT count(*) FROM queues").fetchone()[0]:
                    raise StoreError(f"{self.path} is not a Merpati message store (no format mark)")
                conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            elif row[0] in MIGRATIONS:
                conn.execute("BEGIN")
                for statement in MIGRATIONS[row[0]]:
                    conn.execute(statement)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'format'", (FORMAT,))
                conn.execute("COMMIT")
                log.info("message store %s: format %s brought up to %s", self.path, row[0], FORMAT)
            elif row[0] != FORMAT:
                raise StoreError(f"{self.path} has store format {row[0]!r}, expected {FORMAT!r}")
            # Transient messages and non-durable queues do not survive a restart.
            conn.execute("BEGIN")
            conn.execute("DELETE FROM messages WHERE transient = 1")
            for (qid,) in conn.execute("SELECT qid FROM queues WHERE durable = 0").fetchall():
                conn.execute("DELETE FROM messages WHERE id >= ? AND id < ?", (_lo(qid), _hi(qid)))
            conn.execute("DELETE FROM queues WHERE durable = 0")
            conn.execute("COMMIT")
            queues = conn.execute(
                "SELECT qid, vhost, name, durable, delivered FROM queues"
            ).fetchall()
            self._next_qid = conn.execute("SELECT coalesce(max(qid), 0) FROM queues").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open message store {self.path}: {e}") from None
        self._reader = conn
        out = {}
        for qid, vhost, name, durable, delivered in queues:
            self._qids[(vhost, name)] = qid
            self._durable[qid] = bool(durable)
            out[(vhost, name)] = (qid, bool(durable), delivered)
        return out

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._writer, name="merpati-store", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._submit()
            self._inbox.put(_STOP)
            self._thread.join(30)
            self._thread = None
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()

    # -- recovery (startup only, before the writer runs) ------------------------------------------

    def load_head(self, qid: int, limit: int) -> tuple[list[tuple], int, int, int]:
        """(first `limit` rows as (seq, transient, route, props, body, expires), total count,
        max seq, total body bytes)."""
        count, max_id, size = self._reader.execute(
            "SELECT count(*), coalesce(max(id), 0), coalesce(sum(length(body)), 0) FROM messages WHERE id >= ? AND id < ?",
            (_lo(qid), _hi(qid)),
        ).fetchone()
        rows = self._reader.execute(
            "SELECT id, transient, route, props, body, expires FROM messages WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
            (_lo(qid), _hi(qid), limit),
        ).fetchall()
        return _seqs(rows), count, max_id & SEQ_MASK, size

    def delivery_counts(self, qid: int) -> dict[int, int]:
        """{seq: delivery count} of the queue's messages that failed delivery before, as
        committed (see settle_writes): a replicated queue's new leader counts on from them."""
        rows = self._reader.execute(
            "SELECT id, delivery_count FROM messages WHERE id >= ? AND id < ? AND delivery_count > 0",
            (_lo(qid), _hi(qid)),
        ).fetchall()
        return {i & SEQ_MASK: count for i, count in rows}

    def forget_queues_except(self, keep: set[tuple[str, str]]) -> None:
        """Drop stored queues the metadata no longer has (deleted while the node was down)."""
        for key, qid in list(self._qids.items()):
            if key not in keep:
                self.drop_queue(qid)

    # -- the loop side ------------------------------------------------------------------------

    def queue_id(self, vhost: str, name: str, durable: bool) -> int:
        qid = self._qids.get((vhost, name))
        if qid is not None:
            return qid
        self._next_qid += 1
        qid = self._next_qid
        self._qids[(vhost, name)] = qid
        self._durable[qid] = durable
        self._batch.queues.append((qid, vhost, name, int(durable)))
        self._touch()
        return qid

    def _touch(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._submit)

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
        """Store a message; returns the ledger token whose commit makes it durable."""
        key = (qid << SEQ_BITS) | seq
        batch = self._batch
        batch.inserts[key] = (
            key,
            1 if transient else 0,
            route,
            props,
            body,
            int(expires * 1000) if expires else 0,
        )
        size = len(body) + len(props) + len(route) + ROW_OVERHEAD
        batch.bytes += size
        self.backlog += size
        if not self._scheduled:
            self._touch()
        if not batch.epoch:
            batch.epoch = self.ledger.allocate()
        return batch.epoch

    def delete(self, qid: int, seq: int) -> None:
        batch = self._batch
        key = (qid << SEQ_BITS) | seq
        row = batch.inserts.pop(key, None)
        if row is None:
            batch.deletes.append((key,))
            if not self._scheduled:
                self._touch()
        else:
            size = len(row[4]) + len(row[3]) + len(row[2]) + ROW_OVERHEAD
            batch.bytes -= size
            self._committed_bytes(size)

    def set_delivery_count(self, qid: int, seq: int, count: int) -> None:
        """The message's delivery count is now `count` (a row that is gone is left alone)."""
        counts = self._batch.counts
        key = (qid << SEQ_BITS) | seq
        if counts.get(key, 0) < count:  # a count only grows; the highest asked for wins
            counts[key] = count
            if not self._scheduled:
                self._touch()

    def mark_delivered(self, qid: int, seq: int) -> None:
        delivered = self._batch.delivered
        if delivered.get(qid, 0) < seq:
            delivered[qid] = seq
            if not self._scheduled:
                self._touch()

    def drop_queue(self, qid: int) -> None:
        batch = self._batch
        lo, hi = _lo(qid), _hi(qid)
        for key in [k for k in batch.inserts if lo <= k < hi]:
            del batch.inserts[key]
        for key in [k for k in batch.counts if lo <= k < hi]:
            del batch.counts[key]
        # Drops run first in _write: what this turn asked for the queue before goes with it.
        batch.log_rows = [r for r in batch.log_rows if not lo <= r[0] < hi]
        batch.replicas.pop(qid, None)
        batch.queues = [row for row in batch.queues if row[0] != qid]
        batch.delivered.pop(qid, None)
        batch.drops.append(qid)
        for key, value in list(self._qids.items()):
            if value == qid:
                del self._qids[key]
        self._touch()

    def detach_queue(self, qid: int) -> None:
        """The queue's rows stay (under qid) but its name is free for a new queue here: the
        stored name gets HANDOVER_MARK and the qid appended, which a restart reads back with
        `handover_name`."""
        for key, value in list(self._qids.items()):
            if value == qid:
                del self._qids[key]
                name = handover_name(key[1])[0]
                self._batch.renames.append((f"{name}{HANDOVER_MARK}{qid}", qid))
                self._touch()

    def purge_after(self, qid: int, seq: int) -> None:
        """Delete every stored message of the queue with a sequence number above `seq`."""
        batch = self._batch
        lo, hi = _lo(qid) | seq, _hi(qid)
        for key in [k for k in batch.inserts if lo < k < hi]:
            del batch.inserts[key]
        batch.purges.append((qid, seq))
        self._touch()

    # -- replicated queues (cluster/replication) ----------------------------------------------

    def log_append(self, qid: int, offset: int, epoch: int, data: bytes) -> None:
        self._batch.log_rows.append(((qid << SEQ_BITS) | offset, epoch, data))
        self._touch()

    def log_cut(self, qid: int, start: int, end: int | None = None) -> None:
        """Drop the replica's log entries from `start` up to `end` (None: all after start)."""
        lo = (qid << SEQ_BITS) | start
        hi = _hi(qid) if end is None else (qid << SEQ_BITS) | end
        batch = self._batch
        # Cuts run before the batch's appends (_write): an entry appended earlier in this turn
        # is cut here, one appended later (a truncated log written anew) stays.
        batch.log_rows = [r for r in batch.log_rows if not lo <= r[0] < hi]
        batch.log_cuts.append((lo, hi))
        self._touch()

    def set_replica(
        self, qid: int, incarnation: str, epoch: int, applied: int, epochs: Any
    ) -> None:
        self._batch.replicas[qid] = (qid, incarnation, epoch, applied, json.dumps(epochs))
        self._touch()

    def after_commit(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(ok)` in the loop once everything asked of the store so far is
        committed (ok) or failed."""
        self._batch.callbacks.append(callback)
        self._touch()

    def load_replica(self, qid: int) -> tuple[tuple | None, list[tuple[int, int, bytes]]]:
        """At start: (incarnation, epoch, applied, epochs) of a replica (None: none here) and
        its unapplied log entries as (offset, epoch, data)."""
        row = self._reader.execute(
            "SELECT incarnation, epoch, applied, epochs FROM replicas WHERE qid = ?", (qid,)
        ).fetchone()
        if row is None:
            return None, []
        entries = self._reader.execute(
            "SELECT id, epoch, data FROM qlog WHERE id >= ? AND id < ? ORDER BY id",
            (_lo(qid), _hi(qid)),
        ).fetchall()
        meta = (row[0], row[1], row[2], json.loads(row[3]))
        return meta, [(i & SEQ_MASK, e, d) for i, e, d in entries]

    def settle_writes(self, timeout: float = 10.0) -> bool:
        """Block until everything asked of the store so far is committed, so that the
        synchronous reads below see it (a replica that becomes leader loads its queue: rare,
        and the wait is one commit). False when the writer did not get there in `timeout`."""
        if self._thread is None:
            return True
        self._submit()
        barrier = _Barrier()
        self._inbox.put(barrier)
        return barrier.done.wait(timeout)

    def delivered_mark(self, qid: int) -> int:
        """The queue's delivered mark, as committed (see settle_writes)."""
        row = self._reader.execute("SELECT delivered FROM queues WHERE qid = ?", (qid,)).fetchone()
        return row[0] if row else 0

    def read_queue(
        self, qid: int, after_seq: int, limit: int, callback: Callable[[list, int], None]
    ) -> None:
        """Like page_in, with each row's delivery count after its expiry, and the queue's
        delivered mark with the rows: (rows, delivered). A replica's snapshot reads it."""
        result: list = []

        def rows(r: list) -> None:
            result.append([(row[0] & SEQ_MASK, *row[1:]) for row in r])

        self._submit()
        self._inbox.put(
            _Read(
                "SELECT id, transient, route, props, body, expires, delivery_count FROM messages WHERE id > ? AND id < ? ORDER BY id LIMIT ?",
                (_lo(qid) | after_seq, _hi(qid), limit),
                rows,
            )
        )
        self._inbox.put(
            _Read(
                "SELECT delivered FROM queues WHERE qid = ?",
                (qid,),
                lambda r: callback(result[0], r[0][0] if r else 0),
            )
        )

    def page_in(
        self, qid: int, after_seq: int, limit: int, callback: Callable[[list], None]
    ) -> None:
        """Read up to `limit` rows with seq > after_seq, in order after every write asked before."""
        self._submit()
        self._inbox.put(
            _Read(
                "SELECT id, transient, route, props, body, expires FROM messages WHERE id > ? AND id < ? ORDER BY id LIMIT ?",
                (_lo(qid) | after_seq, _hi(qid), limit),
                lambda rows: callback(_seqs(rows)),
            )
        )

    @property
    def committed(self) -> int:
        return self.ledger.committed

    @property
    def watchers(self) -> set:
        return self.ledger.watchers

    # -- back-pressure ---------------------------------------------------------------------

    @property
    def backlogged(self) -> bool:
        """More message data waits for the writer than BACKLOG_HIGH: queues stop taking from
        their publishers (credit flow) until it is down to BACKLOG_LOW. Without it a publisher
        that wants no confirm (or publishes transient messages to a queue that pages them out)
        outruns the writer, and what waits for it grows in memory without bound."""
        return self.backlog > BACKLOG_HIGH

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call `callback` (in the loop) once the backlog is down to BACKLOG_LOW."""
        if self.backlog <= BACKLOG_LOW:
            callback()
        else:
            self._drained.append(callback)

    def _committed_bytes(self, nbytes: int) -> None:
        self.backlog -= nbytes
        if self._drained and self.backlog <= BACKLOG_LOW:
            waiting, self._drained = self._drained, []
            for callback in waiting:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - one queue's bug must not stop the store
                    log.exception("store drained callback failed")

    def did_fail(self, epoch: int) -> bool:
        """Whether ledger token `epoch`, resolved already, failed (see ConfirmLedger.did_fail)."""
        return self.ledger.did_fail(epoch)

    def wait(self, epoch: int) -> asyncio.Future:
        """A future resolved when ledger token `epoch` is committed (fails if its write failed)."""
        return self.ledger.wait(epoch)

    def _submit(self) -> None:
        self._scheduled = False
        batch = self._batch
        if batch.empty():
            self._committed_bytes(batch.bytes)
            if batch.epoch:
                # Everything it held cancelled out (a message acked before its write): there is
                # nothing to commit, and its confirms must not wait for some later write.
                self._batch = _Batch(0)
                self.ledger.resolve([batch.epoch], ok=True)
            return
        self._batch = _Batch(0)
        self._inbox.put(batch)

    def _on_commit(
        self,
        epochs: list[int],
        failed: list[_Batch],
        error: str | None,
        callbacks: list[Callable[[bool], None]] = (),  # type: ignore[assignment]
        nbytes: int = 0,
    ) -> None:
        """In the loop: the batches holding these ledger tokens are committed (or all failed)."""
        self._committed_bytes(nbytes)
        for cb in callbacks:
            try:
                cb(not failed)
            except Exception:  # noqa: BLE001 - one replica's bug must not stop the store
                log.exception("store commit callback failed")
        if failed:
            # Deletes, delivery marks and queue drops are retried: acked messages must not return.
            retry = self._batch
            for b in failed:
                retry.deletes.extend(b.deletes)
                for qid, seq in b.delivered.items():
                    if retry.delivered.get(qid, 0) < seq:
                        retry.delivered[qid] = seq
                retry.queues.extend(b.queues)
                retry.drops.extend(b.drops)
                retry.purges.extend(b.purges)
                retry.renames.extend(b.renames)
                for key, count in b.counts.items():
                    if retry.counts.get(key, 0) < count:
                        retry.counts[key] = count
            if not retry.empty():
                assert self._loop is not None
                self._loop.call_later(0.5, self._touch)
        if epochs:
            self.ledger.resolve(epochs, ok=not failed, error=error)

    # -- the writer thread --------------------------------------------------------------------

    def _writer(self) -> None:
        conn = self._connect()
        loop = self._loop
        assert loop is not None
        inbox = self._inbox
        pending: list[Any] = []
        while True:
            item = pending.pop(0) if pending else inbox.get()
            if item is _STOP:
                break
            if isinstance(item, _Barrier):
                item.done.set()
                continue
            if isinstance(item, _Read):
                try:
                    rows = conn.execute(item.sql, item.args).fetchall()
                except sqlite3.Error as e:
                    log.error("store read failed: %s", e)
                    rows = []
                loop.call_soon_threadsafe(item.callback, rows)
                continue
            batches = [item]
            # Group commit: fold in every batch already waiting, up to the next read.
            while True:
                try:
                    nxt = inbox.get_nowait()
                except queue_mod.Empty:
                    break
                if isinstance(nxt, _Batch):
                    batches.append(nxt)
                else:
                    pending.append(nxt)  # a read or barrier: after this commit
                    break
            error = None
            try:
                self._write(conn, batches)
            except sqlite3.Error as e:
                error = f"{type(e).__name__}: {e}"
                log.error(
                    "message store %s: commit failed, %d batch(es) rejected: %s",
                    self.path,
                    len(batches),
                    error,
                )
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            loop.call_soon_threadsafe(
                self._on_commit,
                [b.epoch for b in batches if b.epoch],
                batches if error else [],
                error,
                [cb for b in batches for cb in b.callbacks],
                sum(b.bytes for b in batches),
            )
        conn.close()

    def _write(self, conn: sqlite3.Connection, batches: list[_Batch]) -> None:
        if len(batches) > 1 and not any(
            b.drops or b.purges or b.renames or b.log_cuts for b in batches
        ):
            batches = [_merge(batches)]
        started = time.perf_counter()
        conn.execute("BEGIN")
        rows = 0
        for b in batches:
            if b.renames:
                # Before the inserts below: a new queue of the same name may follow in this batch.
                conn.executemany("UPDATE queues SET name = ? WHERE qid = ?", b.renames)
            for qid in b.drops:
                conn.execute("DELETE FROM messages WHERE id >= ? AND id < ?", (_lo(qid), _hi(qid)))
                conn.execute("DELETE FROM queues WHERE qid = ?", (qid,))
                conn.execute("DELETE FROM qlog WHERE id >= ? AND id < ?", (_lo(qid), _hi(qid)))
                conn.execute("DELETE FROM replicas WHERE qid = ?", (qid,))
            if b.queues:
                # REPLACE: a queue deleted and declared again under the same name gets a new qid.
                conn.executemany(
                    "INSERT OR REPLACE INTO queues (qid, vhost, name, durable) VALUES (?, ?, ?, ?)",
                    b.queues,
                )
            if b.purges:
                # Before the inserts: purge_after dropped this batch's inserts it covered, so
                # those left were asked for after the purge and must stay.
                conn.executemany(
                    "DELETE FROM messages WHERE id > ? AND id < ?",
                    [(_lo(qid) | seq, _hi(qid)) for qid, seq in b.purges],
                )
            if b.inserts:
                conn.executemany(
                    "INSERT OR REPLACE INTO messages (id, transient, route, props, body, expires) VALUES (?, ?, ?, ?, ?, ?)",
                    b.inserts.values(),
                )
                rows += len(b.inserts)
            if b.deletes:
                conn.executemany("DELETE FROM messages WHERE id = ?", b.deletes)
                rows += len(b.deletes)
            if b.delivered:
                conn.executemany(
                    "UPDATE queues SET delivered = max(delivered, ?) WHERE qid = ?",
                    [(seq, qid) for qid, seq in b.delivered.items()],
                )
            if b.counts:
                # After the inserts: a count set in the turn that appended the row applies to it.
                conn.executemany(
                    "UPDATE messages SET delivery_count = max(delivery_count, ?) WHERE id = ?",
                    [(count, key) for key, count in b.counts.items()],
                )
            if b.log_cuts:
                conn.executemany("DELETE FROM qlog WHERE id >= ? AND id < ?", b.log_cuts)
            if b.log_rows:
                conn.executemany(
                    "INSERT OR REPLACE INTO qlog (id, epoch, data) VALUES (?, ?, ?)", b.log_rows
                )
            if b.replicas:
                conn.executemany(
                    "INSERT OR REPLACE INTO replicas (qid, incarnation, epoch, applied, epochs) VALUES (?, ?, ?, ?, ?)",
                    b.replicas.values(),
                )
        conn.execute("COMMIT")
        self.commits += 1
        self.committed_rows += rows
        self.commit_latency.observe(time.perf_counter() - started)
        self.commit_rows.observe(rows)


def _merge(batches: list[_Batch]) -> _Batch:
    """Fold batches into one; a message inserted by one and deleted by a later one (published,
    delivered and acked while the previous commit was on disk) is written by neither."""
    out = _Batch(0)  # its tokens are resolved by the caller from the original batches
    inserts = out.inserts
    for b in batches:
        out.queues.extend(b.queues)
        out.log_rows.extend(b.log_rows)
        out.replicas.update(b.replicas)
        inserts.update(b.inserts)
        for key in b.deletes:
            if inserts.pop(key[0], None) is None:
                out.deletes.append(key)
        for qid, seq in b.delivered.items():
            if out.delivered.get(qid, 0) < seq:
                out.delivered[qid] = seq
        for key, count in b.counts.items():
            if out.counts.get(key, 0) < count:
                out.counts[key] = count
    return out
