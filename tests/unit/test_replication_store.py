"""cluster.replication.ops and the SQLite store's replica support: the queue operations as log
entry records (encoding, replay, malformed input, idempotence) and the replica rows and log
entries the store keeps (persisted, cut, dropped, read back)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.cluster.replication import ops
from merpati.cluster.replication.ops import COUNT, DEL, DELIVERED, ENQ, PURGE, OpsError
from merpati.node.store.sqlite import FORMAT, SQLiteStore

# An absolute deadline in seconds, as a queue stores it (TTL from now), and its milliseconds.
EXPIRES = 1_700_000_000.25
EXPIRES_MS = 1_700_000_000_250


# -- ops: encoding ------------------------------------------------------------------------------


def test_records_round_trip_through_parse() -> None:
    big = bytes(range(256)) * 300  # body_len is u32: more than 65535 octets
    data = b"".join(
        (
            ops.enqueue(7, EXPIRES, b"rk", b"props", b"body"),
            ops.seq_op(DEL, 3),
            ops.seq_op(DELIVERED, 9),
            ops.seq_op(PURGE, 4),
            ops.enqueue(8, 0, b"", b"", b""),  # no deadline, every part empty
            ops.enqueue(2**40 - 1, 0, b"r" * 300, b"", big),
            ops.count_op(7, 3),
            ops.count_op(2**40 - 1, 2**32 - 1),
        )
    )
    assert list(ops.parse(data)) == [
        (ENQ, 7, EXPIRES_MS, b"rk", b"props", b"body"),
        (DEL, 3),
        (DELIVERED, 9),
        (PURGE, 4),
        (ENQ, 8, 0, b"", b"", b""),
        (ENQ, 2**40 - 1, 0, b"r" * 300, b"", big),
        (COUNT, 7, 3),
        (COUNT, 2**40 - 1, 2**32 - 1),
    ]
    assert list(ops.parse(b"")) == []  # the marker entry of a new leader holds no records


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (ops.enqueue(1, 0, b"r", b"p", b"b")[:10], "truncated enqueue record"),
        (ops.enqueue(1, 0, b"r", b"p", b"body")[:-1], "truncated enqueue content"),
        (ops.seq_op(DEL, 5)[:-1], "truncated record"),
        (ops.seq_op(DELIVERED, 5) + ops.seq_op(PURGE, 1)[:3], "truncated record"),
        (b"X" + (5).to_bytes(8, "big"), "unknown record kind"),
        (ops.seq_op(DEL, 1) + b"\x00", "unknown record kind"),
        (ops.count_op(1, 2)[:-1], "truncated record"),
    ],
    ids=[
        "enqueue-head",
        "enqueue-content",
        "seq-op",
        "second-record",
        "kind-X",
        "kind-NUL",
        "count",
    ],
)
def test_malformed_records_raise_ops_error(data: bytes, message: str) -> None:
    with pytest.raises(OpsError, match=message):
        list(ops.parse(data))
    with pytest.raises(OpsError, match=message):
        ops.replay({}, 0, data)
    assert issubclass(OpsError, ValueError)


# -- ops: replay --------------------------------------------------------------------------------


def test_replay_enqueues_deletes_marks_and_purges_rows() -> None:
    rows: dict[int, list] = {}
    entry = b"".join(ops.enqueue(s, 0, b"rk", b"p%d" % s, b"m%d" % s) for s in range(1, 6))
    assert ops.replay(rows, 0, entry) == 0
    assert rows == {s: [0, b"rk", b"p%d" % s, b"m%d" % s, 0, 0] for s in range(1, 6)}

    entry = ops.seq_op(DEL, 2) + ops.seq_op(DEL, 42)  # deleting a missing row is no error
    assert ops.replay(rows, 0, entry) == 0
    assert sorted(rows) == [1, 3, 4, 5]

    # A count says the count (twice is once); one for a row gone already changes nothing.
    entry = ops.count_op(3, 1) + ops.count_op(3, 2) + ops.count_op(2, 5)
    assert ops.replay(rows, 0, entry) == 0
    assert ops.replay(rows, 0, ops.count_op(3, 2)) == 0
    assert rows[3][5] == 2 and 2 not in rows and [rows[s][5] for s in (1, 4, 5)] == [0, 0, 0]

    # The delivered mark only grows.
    assert ops.replay(rows, 0, ops.seq_op(DELIVERED, 4) + ops.seq_op(DELIVERED, 3)) == 4
    assert ops.replay(rows, 7, ops.seq_op(DELIVERED, 5)) == 7

    # A purge after 3 removes the rows above 3, and only those.
    assert ops.replay(rows, 4, ops.seq_op(PURGE, 3)) == 4
    assert sorted(rows) == [1, 3]
    assert ops.replay(rows, 4, ops.seq_op(PURGE, 0)) == 4
    assert rows == {}


def test_replay_keeps_an_enqueues_deadline_in_milliseconds() -> None:
    rows: dict[int, list] = {}
    ops.replay(rows, 0, ops.enqueue(3, EXPIRES, b"", b"", b"x"))
    assert rows == {3: [0, b"", b"", b"x", EXPIRES_MS, 0]}


RUN = [
    ops.enqueue(1, 0, b"q", b"", b"m1")
    + ops.enqueue(2, 0, b"q", b"", b"m2")
    + ops.enqueue(3, EXPIRES, b"q", b"", b"m3"),
    ops.seq_op(DEL, 1) + ops.seq_op(DELIVERED, 2) + ops.count_op(3, 1),
    ops.seq_op(PURGE, 2),
    ops.enqueue(4, EXPIRES, b"q", b"", b"m4")
    + ops.count_op(4, 1)
    + ops.enqueue(5, 0, b"q", b"", b"m5")
    + ops.seq_op(DEL, 2)
    + ops.seq_op(DELIVERED, 5)
    + ops.count_op(4, 2),
]
RUN_ROWS = {4: [0, b"q", b"", b"m4", EXPIRES_MS, 2], 5: [0, b"q", b"", b"m5", 0, 0]}


def _replay_all(entries: list[bytes], rows: dict[int, list] | None = None, delivered: int = 0):
    rows = {} if rows is None else rows
    for data in entries:
        delivered = ops.replay(rows, delivered, data)
    return rows, delivered


def test_replaying_the_same_run_twice_gives_the_same_rows() -> None:
    once = _replay_all(RUN)
    assert once == (RUN_ROWS, 5)
    assert _replay_all(RUN, dict(once[0]), once[1]) == once  # again, over its own result
    assert _replay_all(RUN + RUN) == once
    for data in RUN:  # and each entry twice in a row
        assert _replay_all([data, data]) == _replay_all([data])


_ops = st.one_of(
    st.builds(
        lambda s, b: ops.enqueue(s, 0, b"r", b"", b),
        st.integers(1, 12),
        st.binary(max_size=4),
    ),
    st.builds(ops.seq_op, st.sampled_from([DEL, DELIVERED, PURGE]), st.integers(0, 12)),
    # Counts only grow for a message, as a queue's failed deliveries do: the seq sets the count.
    st.integers(1, 12).map(lambda s: ops.count_op(s, s)),
)


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(st.lists(_ops, max_size=4).map(b"".join), max_size=8),
    cut=st.data(),
)
def test_a_fuzzy_snapshot_plus_the_log_from_its_offset_gives_the_leaders_rows(
    entries: list[bytes], cut: st.DataObject
) -> None:
    """The state after entries[:j] (a snapshot read while the leader went on to j), then the log
    from an earlier offset k replayed over it: entries k..j-1 are applied twice, harmlessly."""
    j = cut.draw(st.integers(0, len(entries)))
    k = cut.draw(st.integers(0, j))
    snapshot = _replay_all(entries[:j])
    assert _replay_all(entries[k:], *snapshot) == _replay_all(entries)


# -- the store ------------------------------------------------------------------------------


def _run(tmp_path: Path, main: Callable[[Path], Awaitable[None]]) -> None:
    asyncio.run(main(tmp_path / "store.db"))


async def _open(path: Path) -> tuple[SQLiteStore, dict]:
    store = SQLiteStore(path)
    stored = store.open()
    store.start(asyncio.get_running_loop())
    return store, stored


async def _close(store: SQLiteStore) -> None:
    await asyncio.get_running_loop().run_in_executor(None, store.close)


async def _committed(store: SQLiteStore) -> bool:
    """Wait for everything asked of the store so far to commit: after_commit's answer."""
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    store.after_commit(done.set_result)
    return await asyncio.wait_for(done, 5)


async def _read_queue(store: SQLiteStore, qid: int, after_seq: int, limit: int):
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    store.read_queue(
        qid, after_seq, limit, lambda rows, delivered: done.set_result((rows, delivered))
    )
    return await asyncio.wait_for(done, 5)


HISTORY = {"e": [[1, 0], [3, 2]], "s": 7}


def test_replica_rows_and_log_entries_survive_a_restart(tmp_path: Path) -> None:
    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "rq", True)
        other = store.queue_id("/", "other", True)
        # Out of offset order, and in two batches: the store gives them back in order.
        store.log_append(qid, 2, 3, b"c")
        store.log_append(qid, 0, 1, b"")
        store.log_append(other, 0, 5, b"not rq's")
        assert await _committed(store) is True
        store.log_append(qid, 1, 1, b"b")
        store.set_replica(qid, "inc-1", 2, 0, {"e": []})
        store.set_replica(qid, "inc-1", 3, 1, HISTORY)  # the last one asked wins
        assert await _committed(store) is True
        await _close(store)

        store, stored = await _open(path)
        assert stored[("/", "rq")] == (qid, True, 0)
        meta, entries = store.load_replica(qid)
        assert meta == ("inc-1", 3, 1, HISTORY)  # epochs: the JSON-decoded object
        assert entries == [(0, 1, b""), (1, 1, b"b"), (2, 3, b"c")]
        assert store.load_replica(other) == (None, [])  # no replica row: its log is not read
        assert store.load_replica(999) == (None, [])
        await _close(store)

    _run(tmp_path, main)


def test_log_cut_removes_just_that_range(tmp_path: Path) -> None:
    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "rq", True)
        other = store.queue_id("/", "other", True)
        for q in (qid, other):
            store.set_replica(q, "inc", 1, 0, {"e": [[1, 0]]})
            for offset in range(6):
                store.log_append(q, offset, 1, b"e%d" % offset)
        assert await _committed(store) is True

        store.log_cut(qid, 1, 3)  # [1, 3)
        assert await _committed(store) is True
        assert [e[0] for e in store.load_replica(qid)[1]] == [0, 3, 4, 5]

        store.log_cut(qid, 4)  # from 4 to the end
        assert await _committed(store) is True
        await _close(store)

        store, _ = await _open(path)
        meta, entries = store.load_replica(qid)
        assert meta == ("inc", 1, 0, {"e": [[1, 0]]})  # the replica row stays
        assert entries == [(0, 1, b"e0"), (3, 1, b"e3")]
        assert [e[0] for e in store.load_replica(other)[1]] == [0, 1, 2, 3, 4, 5]
        await _close(store)

    _run(tmp_path, main)


def test_a_cut_then_appends_in_one_batch_rewrite_the_log(tmp_path: Path) -> None:
    """A follower truncating its log and writing the leader's entries in the same loop turn."""

    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "rq", True)
        for offset in range(4):
            store.log_append(qid, offset, 1, b"old%d" % offset)
        assert await _committed(store) is True
        store.log_cut(qid, 2)
        store.log_append(qid, 2, 2, b"new2")
        store.set_replica(qid, "inc", 2, 0, {"e": [[1, 0], [2, 2]]})
        assert await _committed(store) is True
        assert store.load_replica(qid)[1] == [(0, 1, b"old0"), (1, 1, b"old1"), (2, 2, b"new2")]
        await _close(store)

    _run(tmp_path, main)


def test_drop_queue_removes_the_replica_row_and_its_log(tmp_path: Path) -> None:
    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "rq", True)
        other = store.queue_id("/", "other", True)
        for q in (qid, other):
            store.set_replica(q, "inc", 1, 1, {"e": [[1, 0]]})
            store.log_append(q, 1, 1, b"x")
            store.append(q, 1, False, b"", b"", b"m")
        assert await _committed(store) is True

        store.drop_queue(qid)
        assert await _committed(store) is True
        assert store.load_replica(qid) == (None, [])
        await _close(store)

        store, stored = await _open(path)
        assert ("/", "rq") not in stored and ("/", "other") in stored
        assert store.load_replica(qid) == (None, [])
        assert store.load_head(qid, 10)[1] == 0
        assert store.load_replica(other) == (("inc", 1, 1, {"e": [[1, 0]]}), [(1, 1, b"x")])
        await _close(store)

    _run(tmp_path, main)


def test_drop_queue_also_drops_replica_writes_asked_for_in_the_same_turn(tmp_path: Path) -> None:
    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "rq", True)
        assert await _committed(store) is True
        store.set_replica(qid, "inc", 1, 0, {"e": [[1, 0]]})
        store.log_append(qid, 0, 1, b"")
        store.drop_queue(qid)
        assert await _committed(store) is True
        try:
            assert store.load_replica(qid) == (None, [])
        finally:
            await _close(store)

    _run(tmp_path, main)


def test_read_queue_returns_rows_in_order_and_the_delivered_mark(tmp_path: Path) -> None:
    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "rq", True)
        empty = store.queue_id("/", "empty", True)
        for seq in range(1, 6):
            store.append(qid, seq, False, b"rk%d" % seq, b"p", b"m%d" % seq, EXPIRES)
        store.delete(qid, 2)
        store.mark_delivered(qid, 3)
        store.mark_delivered(qid, 1)  # never lowers the mark
        # No wait for a commit: reads come in order after every write asked before them.
        rows, delivered = await _read_queue(store, qid, 0, 100)
        assert [r[0] for r in rows] == [1, 3, 4, 5] and delivered == 3
        assert rows[0] == (1, 0, b"rk1", b"p", b"m1", EXPIRES_MS, 0)

        rows, delivered = await _read_queue(store, qid, 1, 2)  # after seq 1, two rows
        assert [r[0] for r in rows] == [3, 4] and delivered == 3
        assert await _read_queue(store, empty, 0, 100) == ([], 0)
        assert await _read_queue(store, 12345, 0, 100) == ([], 0)  # no such queue
        await _close(store)

    _run(tmp_path, main)


def test_applying_entries_to_the_store_gives_the_rows_replay_gives(tmp_path: Path) -> None:
    """What a replica's store holds after ops.apply is what ops.replay computes in memory (the
    new leader's load: store rows plus the log's unapplied suffix). One entry per commit here;
    see the next test for several in one turn."""

    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "rq", True)
        for data in RUN:
            ops.apply(store, qid, data)
            assert await _committed(store) is True
        rows, delivered = await _read_queue(store, qid, 0, 100)
        assert ({r[0]: list(r[1:]) for r in rows}, delivered) == (RUN_ROWS, 5)
        for data in RUN:  # applied again (a snapshot's overlap): nothing changes
            ops.apply(store, qid, data)
            assert await _committed(store) is True
        assert await _read_queue(store, qid, 0, 100) == (rows, delivered)
        await _close(store)

    _run(tmp_path, main)


def test_applying_a_committed_range_in_one_turn_gives_the_rows_replay_gives(
    tmp_path: Path,
) -> None:
    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "rq", True)
        for data in RUN:  # as QueueReplica._advance does: no commit between entries
            ops.apply(store, qid, data)
        assert await _committed(store) is True
        rows, delivered = await _read_queue(store, qid, 0, 100)
        await _close(store)
        assert ({r[0]: list(r[1:]) for r in rows}, delivered) == (RUN_ROWS, 5)

    _run(tmp_path, main)


def test_settle_writes_makes_what_was_asked_visible_to_synchronous_reads(tmp_path: Path) -> None:
    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "sq", True)
        for seq in range(1, 4):
            store.append(qid, seq, False, b"rk", b"p", b"m%d" % seq, EXPIRES)
        store.mark_delivered(qid, 2)
        # Nothing awaited: a replica becoming leader reads its rows at once, in the loop.
        assert store.settle_writes(timeout=10)
        rows, count, max_seq, _size = store.load_head(qid, 100)
        assert [r[0] for r in rows] == [1, 2, 3] and count == 3 and max_seq == 3
        assert store.delivered_mark(qid) == 2
        store.close()

    asyncio.run(main(tmp_path / "s.db"))


def test_delivery_counts_are_kept_with_the_rows_and_survive_a_restart(tmp_path: Path) -> None:
    async def main(path: Path) -> None:
        store, _ = await _open(path)
        qid = store.queue_id("/", "cq", True)
        other = store.queue_id("/", "other", True)
        for seq in (1, 2, 3):
            store.append(qid, seq, False, b"rk", b"p", b"m%d" % seq)
        store.append(other, 1, False, b"rk", b"p", b"o")
        store.set_delivery_count(qid, 1, 2)  # in the turn that appends it: applies to it
        store.set_delivery_count(qid, 1, 1)  # never lowers it
        store.set_delivery_count(qid, 9, 4)  # no such row: nothing
        assert await _committed(store) is True
        store.set_delivery_count(qid, 3, 1)
        store.delete(qid, 2)
        store.set_delivery_count(qid, 2, 7)  # a row gone: nothing
        rows, _ = await _read_queue(store, qid, 0, 100)
        assert [(r[0], r[6]) for r in rows] == [(1, 2), (3, 1)]
        await _close(store)

        store, _ = await _open(path)
        assert store.delivery_counts(qid) == {1: 2, 3: 1}
        assert store.delivery_counts(other) == {}
        # The rows a queue recovers and pages keep their shape (no count).
        assert store.load_head(qid, 10)[0][0] == (1, 0, b"rk", b"p", b"m1", 0)
        store.drop_queue(qid)
        assert await _committed(store) is True
        assert store.delivery_counts(qid) == {}
        await _close(store)

    _run(tmp_path, main)


def test_a_store_of_the_previous_format_gets_the_delivery_count_column(tmp_path: Path) -> None:
    """A data directory written before delivery counts (format 3) opens: the column is added
    (0 for every message already there) and the store is marked with the new format."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE queues (qid INTEGER PRIMARY KEY, vhost TEXT NOT NULL, name TEXT NOT NULL,
            durable INTEGER NOT NULL, delivered INTEGER NOT NULL DEFAULT 0, UNIQUE (vhost, name));
        CREATE TABLE messages (id INTEGER PRIMARY KEY, transient INTEGER NOT NULL,
            expires INTEGER NOT NULL, route BLOB NOT NULL, props BLOB NOT NULL,
            body BLOB NOT NULL);
        INSERT INTO meta VALUES ('format', 'merpati-store-3');
        INSERT INTO queues VALUES (1, '/', 'old', 1, 0);
        """
    )
    conn.execute("INSERT INTO messages VALUES (?, 0, 0, x'00', x'0000', x'6d')", ((1 << 40) | 5,))
    conn.close()

    async def main(path: Path) -> None:
        store, stored = await _open(path)
        assert stored[("/", "old")][0] == 1
        assert store.load_head(1, 10)[0] == [(5, 0, b"\x00", b"\x00\x00", b"m", 0)]
        assert store.delivery_counts(1) == {}
        store.set_delivery_count(1, 5, 3)
        assert await _committed(store) is True
        assert store.delivery_counts(1) == {5: 3}
        await _close(store)
        store, _ = await _open(path)  # opened again: migrated once, nothing to do
        assert store.delivery_counts(1) == {5: 3}
        await _close(store)

    asyncio.run(main(path))
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()[0] == FORMAT
    conn.close()
