"""What a replicated queue's log entries say: the queue's store operations, as bytes.

A leader's queue (a LocalQueue) changes its state through the same few store calls as any queue
(append, delete, delivered mark, purge), plus one only a replicated queue makes (a failed
delivery's count, so that a new leader goes on counting toward the delivery limit); for a
replicated queue those calls become log entries, one entry per loop turn holding every
operation of that turn, and every replica applies the committed ones to its own store. So each replica's store holds what the leader's would, in the
same rows (the same sequence numbers), and a new leader loads its queue like a node that
restarted (cluster/replication/member.py).

Records, concatenated:
    b"E" seq:u64 expires_ms:u64 route_len:u16 props_len:u32 body_len:u32 route props body
    b"D" seq:u64        the message left (acked, dropped, dead-lettered)
    b"V" seq:u64        delivered up to seq (redelivered after a failover)
    b"P" seq:u64        every message after seq left (a purge of paged-out messages)
    b"C" seq:u64 count:u32  the message's delivery count is now count (a failed delivery)

A count record says the count, not "one more": applied twice it changes nothing, and only a
failed delivery writes one (a requeue, a consumer gone), so the common path logs nothing more.

Applying them is idempotent, so a snapshot read while the leader goes on writing (fuzzy) plus
the log from the snapshot's offset gives the leader's state exactly.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

_ENQ = struct.Struct(">QQHII")
_SEQ = struct.Struct(">Q")
_COUNT = struct.Struct(">QI")
ENQ, DEL, DELIVERED, PURGE, COUNT = b"E", b"D", b"V", b"P", b"C"


class OpsError(ValueError):
    """Bytes that are not a well-formed run of operations (a peer's bug, never applied)."""


def enqueue(seq: int, expires: float, route: bytes, props: bytes, body: bytes) -> bytes:
    head = _ENQ.pack(seq, int(expires * 1000) if expires else 0, len(route), len(props), len(body))
    return b"".join((ENQ, head, route, props, body))


def seq_op(kind: bytes, seq: int) -> bytes:
    return kind + _SEQ.pack(seq)


def count_op(seq: int, count: int) -> bytes:
    return COUNT + _COUNT.pack(seq, count)


def parse(data: bytes) -> Iterator[tuple]:
    """(kind, seq, expires_ms, route, props, body) for E; (kind, seq, count) for C; (kind, seq)
    for the others."""
    mv = memoryview(data)
    i, n = 0, len(data)
    while i < n:
        kind = bytes(mv[i : i + 1])
        i += 1
        if kind == ENQ:
            if i + _ENQ.size > n:
                raise OpsError("truncated enqueue record")
            seq, expires, lr, lp, lb = _ENQ.unpack_from(data, i)
            i += _ENQ.size
            if i + lr + lp + lb > n:
                raise OpsError("truncated enqueue content")
            route = bytes(mv[i : i + lr])
            props = bytes(mv[i + lr : i + lr + lp])
            body = bytes(mv[i + lr + lp : i + lr + lp + lb])
            i += lr + lp + lb
            yield kind, seq, expires, route, props, body
        elif kind == COUNT:
            if i + _COUNT.size > n:
                raise OpsError("truncated record")
            yield (kind, *_COUNT.unpack_from(data, i))
            i += _COUNT.size
        elif kind in (DEL, DELIVERED, PURGE):
            if i + 8 > n:
                raise OpsError("truncated record")
            yield kind, _SEQ.unpack_from(data, i)[0]
            i += 8
        else:
            raise OpsError(f"unknown record kind {kind!r}")


def apply(store: Any, qid: int, data: bytes) -> None:
    """Apply one entry's operations to queue `qid` of a node.store.SQLiteStore."""
    for op in parse(data):
        kind, seq = op[0], op[1]
        if kind == ENQ:
            store.append(qid, seq, False, op[3], op[4], op[5], op[2] / 1000.0 if op[2] else 0.0)
        elif kind == DEL:
            store.delete(qid, seq)
        elif kind == DELIVERED:
            store.mark_delivered(qid, seq)
        elif kind == COUNT:
            store.set_delivery_count(qid, seq, op[2])
        else:
            store.purge_after(qid, seq)


def replay(rows: dict[int, list], delivered: int, data: bytes) -> int:
    """Apply one entry's operations to an in-memory copy of a queue's rows ({seq: [transient,
    route, props, body, expires_ms, delivery_count]}); returns the new delivered mark."""
    for op in parse(data):
        kind, seq = op[0], op[1]
        if kind == ENQ:
            rows[seq] = [0, op[3], op[4], op[5], op[2], 0]
        elif kind == DEL:
            rows.pop(seq, None)
        elif kind == DELIVERED:
            delivered = max(delivered, seq)
        elif kind == COUNT:
            row = rows.get(seq)
            if row is not None:  # gone already: a later entry deleted it
                row[5] = op[2]
        else:
            for s in [s for s in rows if s > seq]:
                del rows[s]
    return delivered
