"""`RaftLog`: the Metadata seam (`node.metadata.log.MetadataLog`) replicated with pysyncobj.

Theory of operation
-------------------
Two copies of `MetadataState` exist and each is only ever touched by one thread:

* the *raft-side* state lives inside `_MetadataSyncObj` (a `SyncObj` subclass) and is mutated only
  by the raft thread, when pysyncobj applies a committed entry. Being an attribute set after
  `SyncObj.__init__`, it is what pysyncobj pickles into its snapshot (`fullDumpFile`);
* the *loop-side* state is `RaftLog.state`, read by the broker on the asyncio loop. The raft thread
  hands every committed `(command, result)` to the loop with `call_soon_threadsafe`; the loop
  applies the same command to its own copy (the state machine is deterministic), calls the
  listeners, and then resolves the proposer's future, in that order.

At startup pysyncobj loads its snapshot and replays its journal in the raft thread; nothing of that
reaches the loop command by command. Instead, when pysyncobj reports readiness (`conf.onReady`), the
raft thread pickles its state and posts the copy to the loop *before* any later command, so the
loop-side state starts from exactly the replayed point. Listeners therefore hear only commands
applied after `start()`; whoever builds things from metadata (queues this node leads) reads `state`
once after `start()`. The loop-side object keeps its identity (the copy is poured into it), so a
`Broker` that took `log.state` before `start()` still holds the live one.

We run the tick loop ourselves (`autoTick=False`) rather than pysyncobj's thread because:
  - pysyncobj serialises every attribute set after `SyncObj.__init__`; with its own thread already
    running inside `__init__`, setting the raft-side state afterwards would race with snapshot
    loading. With our thread nothing ticks until the object is complete.
  - latency: on one node a command is appended in one tick and committed in the next, and the
    stock thread sleeps `autoTickPeriod` (50 ms) in between. We tick again at once while our own
    proposals are appended but not yet committed and this node is a leader without partners
    (with partners, the followers' replies wake the poller instead). With
    `appendEntriesUseBatch=False` pysyncobj also writes to a pipe on every submitted command, which
    wakes the poller instead of waiting out the tick. See bench/metadata_latency.py for figures.
  - corrupt files: pysyncobj logs and *ignores* an unreadable snapshot (then serves what the
    journal alone holds, silently losing state), and a journal entry that fails to unpickle makes
    every tick fail forever. `check_storage` reads all three files first and raises
    `RaftStorageError` naming the file.

Durability: what a crash can lose
---------------------------------
pysyncobj's `FileJournal` writes records into an `mmap` of the journal file and moves a header
offset past them; it never calls `msync`/`fsync` except when the journal is closed. Its `.meta`
file (current term, vote, commit index) and the snapshot are written to a temporary file and
renamed, without fsync; the commit index in `.meta` is stored lazily, once a second.

* Process crash (SIGKILL, OOM, bug), with or without `fsync`: nothing that was acknowledged is lost.
  An mmap'd write is in the kernel page cache the moment it is made, and on one node a command is
  appended (journal write) one tick before it is committed and its future resolves. A stale
  commit index in `.meta` is harmless: after restart this node becomes leader again, commits a no-op
  of the new term and thereby every entry before it. A command whose proposer never got an answer
  may or may not have happened (as with any broker, a declare without a declare-ok is unknown).
  One narrow window remains in pysyncobj: log compaction rewrites the journal in place (clear, then
  re-append the entries after the snapshot point); a crash inside that loop (microseconds; with
  fsync, a few msyncs) loses the entries appended after the snapshot was taken, i.e. those
  committed in the one tick between writing the snapshot and truncating the journal.
* Power loss / kernel crash with `fsync=False` (pysyncobj as shipped): every journal write since the
  kernel last wrote the dirty pages back (up to ~30 s with Linux defaults) can be lost, and because
  pages are written back in any order the header may point past records that never reached the
  disk: the node then refuses to start (`RaftStorageError` naming the journal) rather than guess.
  The snapshot and `.meta` can come back empty after the rename.
* Power loss with `fsync=True` (the default here): each record is msync'ed before the header that
  makes it part of the log, and the header is msync'ed before the entry can commit, so an
  acknowledged command survives; `.meta` is fsynced before the rename, a new snapshot is fsynced
  (file and directory) before pysyncobj truncates the journal behind it. Cost: two msyncs per
  command in the raft thread (~0.6 ms here, see the bench), and one fsync of `.meta` a second
  while commands flow. The compaction window above remains.

Security: pysyncobj exchanges pickles over TCP, so it must never listen where strangers can reach
it unauthenticated: the bind address is always passed explicitly, and without either `tls`
(cluster.raft_tls: every connection inside mutual TLS with the cluster CA) or a `password` (which
turns on pysyncobj's Fernet encryption, i.e. authentication of peers) only a loopback bind is
accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import logging
import os
import pickle
import socket
import struct
import threading
import time
import typing
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pysyncobj.syncobj as _syncobj_mod
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.journal import (
    APP_NAME,
    FIRST_RECORD_OFFSET,
    JOURNAL_FORMAT_VERSION,
    LAST_RECORD_OFFSET_OFFSET,
    NAME_SIZE,
    VERSION_SIZE,
    FileJournal,
    MetaStorer,
)
from pysyncobj.poller import POLL_EVENT_TYPE

from merpati.node.metadata.commands import BARRIER, BATCH, Barrier, Batch, Command
from merpati.node.metadata.state import MetadataError, MetadataState, error_of

from .pickle_names import freeze as _freeze_pickle_names

# The journal, the snapshots and the peers' messages are pickles that name the metadata classes
# by their module paths before the packages moved under `merpati`: keep those names.
_freeze_pickle_names()

# Proposals that fail for want of a leader are retried (same request id, applied at most once)
# for this long, every _RETRY_DELAY; the recent request ids are remembered in the state.
_RETRY_FOR = 30.0
_RETRY_DELAY = 0.1
_RECENT_REQUESTS = 10_000
# Most proposals in one Batch entry (a bigger burst takes several).
_BATCH_MAX = 500
_RETRYABLE = frozenset(
    {FAIL_REASON.MISSING_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.NOT_LEADER}
)

log = logging.getLogger("merpati.raft")

Listener = Callable[[Command, Any], None]

JOURNAL_NAME = "journal"
DUMP_NAME = "snapshot"

# pysyncobj's entry types (syncobj._COMMAND_TYPE): the first byte of every journal record.
_REGULAR, _NO_OP, _MEMBERSHIP, _VERSION = 0, 1, 2, 3
_COMMAND_TYPES = typing.get_args(Command)
# The stock tick period: how long an idle raft thread sleeps in its poller.
_IDLE_TICK = 0.05


class RaftStorageError(RuntimeError):
    """A Raft file (journal, its .meta, the snapshot) cannot be read; the message names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"corrupt Raft file {path}: {reason}")
        self.path = str(path)


class RaftProposalError(Exception):
    """Raft did not commit a proposal (no leader, queue full, leadership lost, stopped...)."""

    def __init__(self, reason: int | str) -> None:
        name = next(
            (k for k, v in vars(FAIL_REASON).items() if v == reason and not k.startswith("_")),
            str(reason),
        )
        # Except for QUEUE_FULL and MISSING_LEADER the command may still have been committed.
        super().__init__(f"metadata command outcome unknown or failed in Raft: {name}")
        self.reason = reason


# -- storage: checking and fsyncing pysyncobj's files ---------------------------------------------


def check_storage(journal: Path, dump: Path) -> None:
    """Read the journal, its .meta and the snapshot as pysyncobj will, raising RaftStorageError.

    Stricter than pysyncobj: each record's length is written before and after it, so a torn or
    overwritten record is detected; every entry must unpickle to what this module proposes.
    """
    if journal.exists():
        _check_journal(journal)
    meta = Path(str(journal) + ".meta")
    if meta.exists():
        try:
            value = pickle.loads(meta.read_bytes())
        except Exception as e:
            raise RaftStorageError(meta, f"unreadable ({type(e).__name__}: {e})")
        if not isinstance(value, dict):
            raise RaftStorageError(meta, f"holds a {type(value).__name__}, not a dict")
    if dump.exists():
        try:
            with gzip.open(dump, "rb") as f:
                data = pickle.load(f)
        except Exception as e:
            raise RaftStorageError(dump, f"unreadable ({type(e).__name__}: {e})")
        if not (
            isinstance(data, tuple)
            and len(data) == 4
            and isinstance(data[0], dict)
            and isinstance(data[0].get("_state"), MetadataState)
        ):
            raise RaftStorageError(dump, "not a Merpati metadata snapshot")


def _check_journal(path: Path) -> None:
    raw = path.read_bytes()
    if len(raw) < FIRST_RECORD_OFFSET:
        raise RaftStorageError(path, f"{len(raw)} bytes, shorter than the journal header")
    if raw[:NAME_SIZE].rstrip(b"\0") != APP_NAME:
        raise RaftStorageError(path, "not a pysyncobj journal (bad magic)")
    version, end = struct.unpack_from("<II", raw, NAME_SIZE + VERSION_SIZE)
    assert NAME_SIZE + VERSION_SIZE + 4 == LAST_RECORD_OFFSET_OFFSET
    if version != JOURNAL_FORMAT_VERSION:
        raise RaftStorageError(path, f"journal format {version}, expected {JOURNAL_FORMAT_VERSION}")
    if not FIRST_RECORD_OFFSET <= end <= len(raw):
        raise RaftStorageError(
            path, f"header says the log ends at {end}, file has {len(raw)} bytes"
        )
    offset, prev_idx = FIRST_RECORD_OFFSET, None
    while offset < end:
        where = f"record at offset {offset}"
        if offset + 4 > end:
            raise RaftStorageError(path, f"{where}: truncated length")
        (size,) = struct.unpack_from("<I", raw, offset)
        if size < 17 or offset + 8 + size > end:
            raise RaftStorageError(path, f"{where}: bad length {size}")
        (trailer,) = struct.unpack_from("<I", raw, offset + 4 + size)
        if trailer != size:
            raise RaftStorageError(
                path, f"{where}: length {size} but trailer {trailer} (torn write)"
            )
        idx, _term = struct.unpack_from("<QQ", raw, offset + 4)
        if prev_idx is not None and idx != prev_idx + 1:
            raise RaftStorageError(path, f"{where}: index {idx} follows {prev_idx}")
        body = raw[offset + 20 : offset + 4 + size]
        kind = body[0]
        if kind == _REGULAR:
            try:
                entry = pickle.loads(body[1:])
                args = entry[1]
                # apply_command(cmd) or apply_request(request_id, cmd)
                cmd = args[1] if len(args) == 2 and isinstance(args[0], str) else args[0]
                cmds = [one for _rid, one in cmd.requests] if isinstance(cmd, Batch) else [cmd]
            except Exception as e:
                raise RaftStorageError(
                    path, f"{where}: entry {idx} unreadable ({type(e).__name__}: {e})"
                )
            for cmd in cmds:
                if not isinstance(cmd, _COMMAND_TYPES):
                    raise RaftStorageError(
                        path, f"{where}: entry {idx} is a {type(cmd).__name__}, not a command"
                    )
        elif kind not in (_NO_OP, _MEMBERSHIP, _VERSION):
            raise RaftStorageError(path, f"{where}: entry {idx} has unknown type {kind}")
        prev_idx = idx
        offset += size + 8


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _SyncedMetaStorer(MetaStorer):
    """pysyncobj's .meta writer plus fsync: term and vote must be on disk before a vote is sent."""

    def storeMeta(self, meta: dict) -> None:  # noqa: N802 (pysyncobj's name)
        path = self.getPath()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(pickle.dumps(meta, protocol=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(Path(path).parent)


class _SyncedJournal(FileJournal):
    """FileJournal that makes each record durable before the header makes it part of the log.

    Reaches into FileJournal's private attributes (pysyncobj 0.3.x): `add` has to put an msync
    between writing the record and moving the header, which no public hook allows.
    """

    def __init__(self, journal_file: str) -> None:
        super().__init__(journal_file)
        self._FileJournal__metaStorer = _SyncedMetaStorer(journal_file + ".meta")

    def add(self, command: bytes, idx: int, term: int) -> None:
        mm = self._FileJournal__journalFile
        self._FileJournal__journal.append((command, idx, term))
        data = struct.pack("<QQ", idx, term) + command
        length = struct.pack("<I", len(data))
        record = length + data + length
        offset = self._FileJournal__currentOffset
        mm.write(offset, record)
        mm.flush()  # the record reaches the disk before the header points at it...
        self._FileJournal__currentOffset = offset + len(record)
        self._FileJournal__setLastRecordOffset(offset + len(record))
        mm.flush()  # ...and the header before the entry can be committed or acknowledged.

    def clear(self) -> None:
        super().clear()
        self._FileJournal__journalFile.flush()

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802, N803 (pysyncobj's names)
        super().deleteEntriesFrom(entryFrom)
        self._FileJournal__journalFile.flush()


class _SyncedPath(str):
    """A journal path that asks for `_SyncedJournal`: carries the choice through SyncObjConf."""


_stock_create_journal = _syncobj_mod.createJournal


def _create_journal(journalFile: str | None = None) -> Any:  # noqa: N803 (pysyncobj's name)
    if isinstance(journalFile, _SyncedPath):
        return _SyncedJournal(str(journalFile))
    return _stock_create_journal(journalFile)


# SyncObj.__init__ builds its journal with the module-level `createJournal` and offers no other
# hook; this wrapper changes nothing for callers that do not pass a _SyncedPath.
_syncobj_mod.createJournal = _create_journal


# -- the raft side ---------------------------------------------------------------------------------


class _MetadataSyncObj(SyncObj):
    """The raft-thread side: a MetadataState that only committed entries change."""

    def __init__(
        self,
        self_address: str,
        partners: Sequence[str],
        conf: SyncObjConf,
        on_applied: Callable[[Command, Any], None],
        transport_class: Any = None,
    ) -> None:
        # Set before SyncObj.__init__, so pysyncobj counts it as its own and leaves it out of
        # snapshots (a bound method of RaftLog does not pickle, and must not).
        self._on_applied = on_applied
        if transport_class is None:
            super().__init__(self_address, list(partners), conf)
        else:
            super().__init__(self_address, list(partners), conf, transportClass=transport_class)
        # Set after: this is what pysyncobj serialises into the snapshot and restores from it.
        self._state = MetadataState()

    @replicated
    def apply_command(self, cmd: Command) -> Any:
        result = self._state.apply(cmd)
        self._on_applied(cmd, result)
        return result

    @replicated
    def apply_request(self, request_id: str, cmd: Command) -> Any:
        """Apply once per request id: a proposal retried after a leader change may already be in
        the log, and must not apply twice (a second DeleteQueue would answer 404). A Batch
        applies each of its requests so, and answers with their answers in order."""
        if isinstance(cmd, Batch):
            return ("batch", [self._apply_once(rid, one) for rid, one in cmd.requests])
        return self._apply_once(request_id, cmd)

    def _apply_once(self, request_id: str, cmd: Command) -> Any:
        recent = self.__dict__.setdefault("_recent", {})
        if request_id in recent:
            return recent[request_id]
        result = self._state.apply(cmd)
        self._on_applied(cmd, result)
        # Results are kept as plain tuples: they go into snapshots, and MetadataError does not
        # survive pickling with its two arguments. The error's class name rides along (a fourth
        # item older nodes ignore) so the proposer can tell a queue limit from other refusals.
        kept = (
            ("err", result.code, result.text, type(result).__name__)
            if isinstance(result, MetadataError)
            else ("ok", result)
        )
        recent[request_id] = kept
        if len(recent) > _RECENT_REQUESTS:
            del recent[next(iter(recent))]
        return kept


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _plain(value: Any) -> Any:
    """getStatus() values, with pysyncobj Node objects as their "host:port" strings."""
    if value is None or isinstance(value, int | float | str | bool):
        return value
    return getattr(value, "address", None) or str(value)


class RaftLog:
    """The Metadata log replicated by Raft; a node with no partners is a one-member cluster.

    `raft_dir` holds the journal, its .meta and the snapshot. `self_address` ("host:port") is how
    partners reach this node and its Raft id; `bind_address` (default: `self_address`) is where it
    listens. `password` is the cluster secret, required unless the bind address is loopback or
    `tls` (cluster.raft_tls.RaftTls: mutual TLS with the cluster CA) is given.
    `tuned=False` keeps pysyncobj's stock timing (for the latency bench only).
    """

    def __init__(
        self,
        raft_dir: str | Path,
        self_address: str,
        *,
        partners: Sequence[str] = (),
        bind_address: str | None = None,
        password: str | None = None,
        tls: Any = None,
        fsync: bool = True,
        tuned: bool = True,
        compaction_min_entries: int = 5000,
        dynamic_membership: bool = False,
    ) -> None:
        self.raft_dir = Path(raft_dir)
        self.self_address = self_address
        self.partners = [p for p in partners if p != self_address]
        self.bind_address = bind_address or self_address
        if not password and tls is None and not _is_loopback(self.bind_address):
            raise ValueError(
                f"refusing to start Raft on {self.bind_address} without a cluster secret: "
                "pysyncobj trusts the pickles its peers send, so a non-loopback Raft port needs "
                "a password or cluster TLS (or bind it to 127.0.0.1)"
            )
        self.password = password or None
        self.tls = tls
        self.fsync = fsync
        self.tuned = tuned
        self.compaction_min_entries = compaction_min_entries
        self.dynamic_membership = dynamic_membership
        self.journal_path = self.raft_dir / JOURNAL_NAME
        self.dump_path = self.raft_dir / DUMP_NAME

        self.state = MetadataState()  # loop-side; only the loop thread touches it
        self._listeners: list[Listener] = []
        self._pending: set[asyncio.Future] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync: _MetadataSyncObj | None = None
        self._thread: threading.Thread | None = None
        self._started: asyncio.Future | None = None
        self._running = False  # loop side: start() succeeded and stop() not called
        self._stop = threading.Event()
        self._wake_fds: tuple[int, int] | None = None
        # Raft-thread side bookkeeping.
        self._snapshot_sent = False
        self._ready_posted = False
        self._state_obj_id = 0
        self._dump_stat: tuple[int, int, int] | None = None
        self._status: dict[str, Any] = {}
        # Our own proposals submitted (loop thread) vs answered (raft thread): while some are in
        # flight a lone leader ticks without sleeping, since the next tick commits them.
        self._count_lock = threading.Lock()
        self._submitted = 0
        self._answered = 0
        # Proposals of this loop turn, not yet handed to pysyncobj: (future, id, cmd, deadline).
        self._batch: list[tuple[asyncio.Future, str, Command, float]] = []
        # hand_over() requests, served by the raft thread (pysyncobj is not thread-safe).
        self._hand_overs: list[asyncio.Future] = []

    # -- the MetadataLog interface (loop thread) ---------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def propose(self, cmd: Command) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        if not self._running or self._sync is None:
            fut.set_exception(RuntimeError("RaftLog is not started"))
            return fut
        self._pending.add(fut)
        with self._count_lock:
            self._submitted += 1
        # Proposals of one loop turn go to the log together (Batch): see _flush_batch.
        batch = self._batch
        if not batch:
            loop.call_soon(self._flush_batch)
        batch.append((fut, uuid.uuid4().hex, cmd, time.monotonic() + _RETRY_FOR))
        return fut

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not self._running or self._sync is None:
            for fut, *_rest in batch:
                with self._count_lock:
                    self._answered += 1
                self._pending.discard(fut)
                if not fut.done():
                    fut.set_exception(RaftProposalError("stopped"))
            return
        members = self.state.members
        if len(batch) == 1 or not (len(members) <= 1 or self.state.supports(BATCH)):
            # Alone, or some member's version could not read a Batch (a rolling upgrade).
            for fut, request_id, cmd, deadline in batch:
                self._submit(fut, request_id, cmd, deadline)
            return
        for start in range(0, len(batch), _BATCH_MAX):
            self._submit_batch(batch[start : start + _BATCH_MAX])

    def _submit_batch(self, batch: list[tuple[asyncio.Future, str, Command, float]]) -> None:
        assert self._sync is not None
        entry = Batch(tuple((request_id, cmd) for _fut, request_id, cmd, _d in batch))
        try:
            self._sync.apply_request(
                uuid.uuid4().hex,
                entry,
                callback=lambda res, err: self._batch_answered(batch, res, err),
            )
        except BlockingIOError:
            pass  # queued; only pysyncobj's wake-up pipe is full
        except Exception as e:
            for fut, *_rest in batch:
                with self._count_lock:
                    self._answered += 1
                self._pending.discard(fut)
                fut.set_exception(e)

    def _batch_answered(self, batch: list, result: Any, err: int) -> None:
        # Raft thread. Answered as one, resolved each: a failed batch is retried request by
        # request (their ids keep any that did apply from applying twice).
        answers = result[1] if err == FAIL_REASON.SUCCESS and isinstance(result, tuple) else None
        for i, (fut, request_id, cmd, deadline) in enumerate(batch):
            one = answers[i] if answers is not None else None
            self._answered_in(fut, one, err, (request_id, cmd, deadline))

    def barrier(self) -> asyncio.Future | None:
        """A no-op through the log: when it applies here, so has everything committed before.
        None for a cluster of one (nothing is committed that has not applied here) and while a
        member's version could not read it (a rolling upgrade)."""
        if len(self.state.members) <= 1 or not self.state.supports(BARRIER):
            return None
        return self.propose(Barrier())

    def _submit(self, fut: asyncio.Future, request_id: str, cmd: Command, deadline: float) -> None:
        """Hand a proposal to pysyncobj; `_resolve` retries it (same id) across leader changes."""
        assert self._sync is not None
        try:
            self._sync.apply_request(
                request_id,
                cmd,
                callback=lambda res, err: self._answered_in(
                    fut, res, err, (request_id, cmd, deadline)
                ),
            )
        except BlockingIOError:
            pass  # queued; only pysyncobj's wake-up pipe is full, so the raft thread is awake anyway
        except Exception as e:  # e.g. a command that does not pickle: never reached the queue
            with self._count_lock:
                self._answered += 1
            self._pending.discard(fut)
            fut.set_exception(e)

    def change_membership(self, action: str, address: str) -> asyncio.Future:
        """Add or remove a Raft member ("host:raft-port") through the log; resolves once the
        change is committed. Needs dynamic_membership=True (one change at a time, as Raft says)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        if not self._running or self._sync is None:
            fut.set_exception(RuntimeError("RaftLog is not started"))
            return fut
        self._pending.add(fut)
        change = (
            self._sync.addNodeToCluster if action == "add" else self._sync.removeNodeFromCluster
        )
        try:
            change(address, callback=lambda res, err: self._post(self._resolve, fut, res, err))
        except Exception as e:
            self._pending.discard(fut)
            fut.set_exception(e)
        self._wake()
        return fut

    def hand_over(self) -> asyncio.Future:
        """Ask the most caught-up follower to take the Raft leadership at once (Raft's TimeoutNow)
        when this node leads: before this node is removed, since pysyncobj refuses to remove its
        own leader. Resolves True once asked (the election follows within a tick), False when
        this node does not lead or no follower is caught up yet (ask again)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        if not self._running or self._sync is None:
            fut.set_result(False)
            return fut
        with self._count_lock:
            self._hand_overs.append(fut)
        self._wake()
        return fut

    def _serve_hand_overs(self, sync: _MetadataSyncObj) -> None:
        # Raft thread.
        with self._count_lock:
            waiting, self._hand_overs = self._hand_overs, []
        if not waiting:
            return
        if not sync._isLeader():
            for fut in waiting:
                self._post(_settle_future, fut, False)
            return

        def done(_res: Any, err: int) -> None:
            for fut in waiting:
                self._post(_settle_future, fut, err == FAIL_REASON.SUCCESS)

        sync.transferLeadership(callback=done)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Open the files, start the raft thread, return once state is replayed and a leader known."""
        if self._thread is not None:
            raise RuntimeError("RaftLog already started")
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.create_future()
        self.raft_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="merpati-raft", daemon=True)
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._started), timeout)
        except TimeoutError:
            self.stop()
            raise TimeoutError(
                f"Raft at {self.self_address} not ready with a leader within {timeout}s"
            ) from None
        except BaseException:
            self.stop()
            raise
        self._running = True

    def stop(self) -> None:
        """Stop the raft thread (which closes pysyncobj's sockets and journal) and wait for it."""
        self._running = False
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.error("raft thread did not stop within 10 s")
        loop = self._loop
        if loop is not None and loop.is_running():
            # After the answers the raft thread posted before it stopped: those are real outcomes.
            loop.call_soon(self._fail_pending)
        else:
            self._fail_pending()

    def _fail_pending(self) -> None:
        for fut in self._pending:
            if not fut.done():
                fut.set_exception(RaftProposalError("stopped"))
        self._pending.clear()
        with self._count_lock:
            waiting, self._hand_overs = self._hand_overs, []
        for fut in waiting:
            _settle_future(fut, False)

    def compact(self) -> None:
        """Snapshot the state and truncate the journal behind it, at the raft thread's next tick."""
        if self._sync is not None:
            self._sync.forceLogCompaction()  # only sets a flag the raft thread reads
            self._wake()

    def status(self) -> dict[str, Any]:
        """pysyncobj's getStatus(), as of the raft thread's last tick (copied there, not read here)."""
        return dict(self._status)

    # -- the raft thread -----------------------------------------------------------------------

    def _conf(self) -> SyncObjConf:
        kw: dict[str, Any] = {}
        if self.tuned:
            kw["appendEntriesUseBatch"] = False  # wake on submit; replicate and commit at once
            # pysyncobj retries a refused connection after 5 s: nodes started together (or one
            # restarted) then found each other only after up to 5 s. A connect attempt every
            # 0.5 s to a peer that is down costs nothing.
            kw["connectionRetryTime"] = 0.5
            if not self.partners:
                # Nobody to split the vote with: elect ourselves as soon as we have started.
                kw.update(appendEntriesPeriod=0.01, raftMinTimeout=0.04, raftMaxTimeout=0.08)
        journal = str(self.journal_path)
        return SyncObjConf(
            autoTick=False,
            bindAddress=self.bind_address,
            password=self.password,
            useFork=False,  # fork() for snapshots is unsafe with gRPC's threads
            journalFile=_SyncedPath(journal) if self.fsync else journal,
            fullDumpFile=str(self.dump_path),
            logCompactionMinEntries=self.compaction_min_entries,
            dynamicMembershipChange=self.dynamic_membership,
            onReady=self._on_ready,
            # With autoTick=False, SyncObj.__init__ retries the bind in a loop; a port in use
            # must fail start() instead of spinning forever.
            maxBindRetries=3,
            bindRetryTime=0.1,
            **kw,
        )

    def _run(self) -> None:
        try:
            check_storage(self.journal_path, self.dump_path)
            try:
                transport = None
                if self.tls is not None:
                    from .raft_tls import transport_class

                    transport = transport_class(self.tls)
                sync = _MetadataSyncObj(
                    self.self_address, self.partners, self._conf(), self._raft_applied, transport
                )
            except _syncobj_mod.SyncObjException as e:
                raise OSError(f"Raft cannot listen on {self.bind_address}: {e}") from e
            if self.fsync:
                _fsync_dir(self.raft_dir)  # the journal may have just been created
        except BaseException as e:
            self._post(self._start_failed, e)
            return
        self._sync = sync
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_fds = (r, w)
        sync._poller.subscribe(r, self._drain_wake, POLL_EVENT_TYPE.READ)
        try:
            while not self._stop.is_set():
                try:
                    sync.doTick(0.0 if self._hurry(sync) else _IDLE_TICK)
                    self._serve_hand_overs(sync)
                    self._after_tick(sync)
                except Exception as e:  # like pysyncobj's own thread: log, pause, go on
                    log.exception("raft tick failed")
                    if not self._ready_posted:
                        self._post(self._start_failed, e)
                        return
                    time.sleep(_IDLE_TICK)
        finally:
            with contextlib.suppress(Exception):
                sync._poller.unsubscribe(r)
            self._wake_fds = None
            os.close(r)
            os.close(w)
            sync.destroy()  # autoTick=False: closes transport and journal here, in this thread

    def _hurry(self, sync: _MetadataSyncObj) -> bool:
        if not self.tuned:
            return False
        return self._submitted > self._answered and not sync.otherNodes and sync._isLeader()

    def _after_tick(self, sync: _MetadataSyncObj) -> None:
        st = sync.getStatus()
        self._status = {k: _plain(v) for k, v in st.items()} | {"ready": sync.isReady()}
        if self._new_dump():
            self._scale_compaction(sync)
        if not self._ready_posted and sync.isReady() and st["leader"] is not None:
            self._ready_posted = True
            self._post(self._start_done)
        if self._snapshot_sent and id(sync._state) != self._state_obj_id:
            # A snapshot installed from the leader replaced the raft-side state wholesale:
            # hand the loop the new copy (listeners cannot hear a diff they never saw).
            self._state_obj_id = id(sync._state)
            self._post(self._install, pickle.dumps(sync._state), True)

    def _new_dump(self) -> bool:
        """Whether pysyncobj wrote a new snapshot since the last tick (fsynced here with fsync:
        with useFork=False it writes the snapshot within one tick and truncates the journal
        behind it in the next, so fsyncing between the two orders them on disk)."""
        try:
            st = self.dump_path.stat()
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._dump_stat:
            return False
        if self.fsync:
            fd = os.open(self.dump_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.raft_dir)
        self._dump_stat = key
        return True

    def _scale_compaction(self, sync: _MetadataSyncObj) -> None:
        """Compact the log once it holds twice as many entries as the state has objects.

        A snapshot pickles the whole state in the raft thread, so with pysyncobj's fixed
        threshold (5,000 entries) its cost per entry grew with the state: at 25,000 bindings a
        quarter of the raft thread went to snapshots, and bindings were made ever slower.
        Scaled so, a snapshot costs each entry about the same whatever the state's size (a
        queue, an exchange or a binding is about one command to make), and a restart replays at
        most twice the state's size."""
        objects = 0
        for vh in sync._state.vhosts.values():
            objects += len(vh.queues) + len(vh.exchanges)
            for ex in vh.exchanges.values():
                objects += len(ex.bindings)
        conf = sync._SyncObj__conf  # type: ignore[attr-defined]  # read by pysyncobj each tick
        conf.logCompactionMinEntries = max(self.compaction_min_entries, 2 * objects)

    def _on_ready(self) -> None:
        # In the raft thread, right after replay: the loop's starting point, posted ahead of
        # every command applied from now on.
        sync = self._sync
        assert sync is not None
        self._state_obj_id = id(sync._state)
        self._post(self._install, pickle.dumps(sync._state), False)
        self._snapshot_sent = True

    def _raft_applied(self, cmd: Command, result: Any) -> None:
        if self._snapshot_sent:  # before that, replay: covered by the snapshot copy
            self._post(self._loop_applied, cmd, result)

    def _answered_in(self, fut: asyncio.Future, result: Any, err: int, retry: Any = None) -> None:
        # Raft thread (or the loop thread, for a synchronous QUEUE_FULL).
        with self._count_lock:
            self._answered += 1
        self._post(self._resolve, fut, result, err, retry)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is left to tell

    def _wake(self) -> None:
        fds = self._wake_fds
        if fds is not None:
            with contextlib.suppress(OSError):
                os.write(fds[1], b"x")

    def _drain_wake(self, fd: int, _mask: int) -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass

    # -- the loop side of the hand-over ---------------------------------------------------------

    def _start_done(self) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_result(None)

    def _start_failed(self, exc: BaseException) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_exception(exc)

    def _install(self, blob: bytes, replaced: bool) -> None:
        restored = pickle.loads(blob)
        # Pour the copy into the existing object: holders of `log.state` keep a live reference.
        self.state.__dict__.clear()
        self.state.__dict__.update(restored.__dict__)
        if replaced:
            log.warning("metadata state replaced by a snapshot from the Raft leader")

    def _loop_applied(self, cmd: Command, raft_result: Any) -> None:
        result = self.state.apply(cmd)
        if not _same_result(result, raft_result):
            log.error(
                "metadata state machine is not deterministic: %r gave %r, raft side %r",
                cmd,
                result,
                raft_result,
            )
        for listener in list(self._listeners):
            try:
                listener(cmd, result)
            except Exception:  # one broken listener must not stop the others or the log
                log.exception("metadata listener failed on %r", cmd)

    def _resolve(self, fut: asyncio.Future, result: Any, err: int, retry: Any = None) -> None:
        if fut.done():
            self._pending.discard(fut)
            return
        if err in _RETRYABLE and retry is not None and self._running:
            request_id, cmd, deadline = retry
            if time.monotonic() < deadline:
                # No leader, or it changed under the proposal: ask again once one is elected.
                with self._count_lock:
                    self._submitted += 1
                assert self._loop is not None
                self._loop.call_later(_RETRY_DELAY, self._retry, fut, request_id, cmd, deadline)
                return
        self._pending.discard(fut)
        if isinstance(result, tuple) and len(result) >= 2 and result[0] in ("ok", "err"):
            result = error_of(*result[1:4]) if result[0] == "err" else result[1]
        if err != FAIL_REASON.SUCCESS:
            fut.set_exception(RaftProposalError(err))
        elif isinstance(result, MetadataError):
            fut.set_exception(result)
        else:
            fut.set_result(result)

    def _retry(self, fut: asyncio.Future, request_id: str, cmd: Command, deadline: float) -> None:
        if fut.done() or not self._running or self._sync is None:
            with self._count_lock:
                self._answered += 1
            if not fut.done():
                fut.set_exception(RaftProposalError("stopped"))
            self._pending.discard(fut)
            return
        self._submit(fut, request_id, cmd, deadline)


def _settle_future(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _same_result(a: Any, b: Any) -> bool:
    if isinstance(a, MetadataError) and isinstance(b, MetadataError):
        return (a.code, a.text) == (b.code, b.text)
    return a == b
