"""cluster.raft_log.RaftLog: the Metadata log through a one-member pysyncobj cluster on loopback."""

from __future__ import annotations

import asyncio
import gzip
import pickle
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.journal import FIRST_RECORD_OFFSET

from merpati.cluster.raft_log import RaftLog, RaftProposalError, RaftStorageError
from merpati.node.metadata import commands as c
from merpati.node.metadata.state import (
    NOT_FOUND,
    MetadataError,
    MetadataState,
    QueueLimitExceeded,
)
from tests.support.node import free_port


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 9))


def make_log(raft_dir: Path, port: int, **kw: Any) -> RaftLog:
    return RaftLog(raft_dir, f"127.0.0.1:{port}", **kw)


TOPOLOGY = [
    c.AddVhost("/"),
    c.AddVhost("other"),
    c.PutUser("alice", "hash", ("administrator",)),
    c.SetPermissions("alice", "/", ".*", "^amq", ""),
    c.DeclareExchange("/", "orders", "topic", arguments={"alternate-exchange": "ae"}),
    c.DeclareExchange("/", "fan", "fanout"),
    c.DeclareQueue("/", "q1", durable=True, leader="n1", arguments={"x-max-length": 10}),
    c.DeclareQueue("/", "q2", durable=True, leader="n1"),
    c.Bind("/", "orders", "q", "q1", "eu.#"),
    c.Bind("/", "orders", "e", "fan", "*.urgent"),
    c.Bind("/", "fan", "q", "q2", ""),
]


def assert_topology(state: MetadataState) -> None:
    assert set(state.vhosts) == {"/", "other"}
    assert state.users["alice"].tags == ("administrator",)
    assert state.permissions[("alice", "/")].write == "^amq"
    vh = state.vhosts["/"]
    assert vh.exchanges["orders"].type == "topic"
    assert vh.exchanges["orders"].arguments == {"alternate-exchange": "ae"}
    assert {"amq.topic", "fan", ""} <= set(vh.exchanges)
    assert vh.queues["q1"].arguments == {"x-max-length": 10} and vh.queues["q1"].leader == "n1"
    assert set(vh.queues) == {"q1", "q2"}
    keys = {(b.destination, b.routing_key) for b in vh.exchanges["orders"].bindings.values()}
    assert keys == {(("q", "q1"), "eu.#"), (("e", "fan"), "*.urgent")}
    assert [b.destination for b in vh.exchanges["fan"].bindings.values()] == [("q", "q2")]
    assert vh.bindings_to[("q", "q2")]


def test_proposals_apply_in_order_with_results(tmp_path: Path) -> None:
    async def main() -> None:
        log = make_log(tmp_path, free_port())
        state_before_start = log.state
        heard: list[tuple[Any, Any]] = []
        log.subscribe(lambda cmd, res: heard.append((cmd, res)))
        await log.start(5)
        try:
            assert log.state is state_before_start  # a Broker holding it stays live
            assert log.status()["leader"] == log.self_address
            # Fired together, answered in proposal order with the state machine's results, and
            # written as one entry (a Batch: one journal write for the lot).
            cmds = [c.AddVhost("/")] + [
                c.DeclareQueue("/", f"q{i}", durable=True) for i in range(20)
            ]
            before = log.status()["commit_idx"]
            results = await asyncio.gather(*(log.propose(x) for x in cmds))
            # (status() is refreshed by the raft thread: it may show one entry more or less)
            assert log.status()["commit_idx"] <= before + 2
            assert results == ["created"] * 21
            assert [h[0] for h in heard] == cmds and [h[1] for h in heard] == results
            assert await log.propose(c.DeclareQueue("/", "q0", durable=True)) == "exists"
            assert list(log.state.vhosts["/"].queues) == [f"q{i}" for i in range(20)]
            # The loop-side state is a copy; the raft thread's is never shared with the loop.
            assert log._sync is not None and log._sync._state is not log.state
            status = log.status()
            assert status["raft_term"] >= 1 and status["ready"]
        finally:
            log.stop()
        assert log._thread is not None and not log._thread.is_alive()

    run(main)


def test_metadata_error_fails_the_future(tmp_path: Path) -> None:
    async def main() -> None:
        log = make_log(tmp_path, free_port())
        heard: list[Any] = []
        log.subscribe(lambda cmd, res: heard.append(res))
        await log.start(5)
        try:
            with pytest.raises(MetadataError) as info:
                await log.propose(c.DeleteQueue("/", "missing"))
            assert info.value.code == NOT_FOUND and "no vhost '/'" in info.value.text
            # Listeners hear failed commands too, with the same error (as with LocalLog).
            assert isinstance(heard[-1], MetadataError) and heard[-1].code == NOT_FOUND
            assert await log.propose(c.AddVhost("/")) == "created"
        finally:
            log.stop()

    run(main)


def test_a_queue_limit_refusal_keeps_its_kind(tmp_path: Path) -> None:
    """Results cross Raft as tuples; the error's class comes back, so AMQP 1.0 can answer a
    queue limit with amqp:resource-limit-exceeded."""

    async def main() -> None:
        log = make_log(tmp_path, free_port())
        await log.start(5)
        try:
            await log.propose(c.AddVhost("/"))
            await log.propose(c.SetVhostLimits("/", {"max-queues": 0}))
            with pytest.raises(QueueLimitExceeded) as info:
                await log.propose(c.DeclareQueue("/", "q", leader="n1"))
            assert info.value.code == 406 and "queue limit in vhost '/' (0)" in info.value.text
            with pytest.raises(MetadataError) as other:
                await log.propose(c.DeleteQueue("/", "missing"))
            assert type(other.value) is MetadataError
        finally:
            log.stop()

    run(main)


def test_propose_outside_start_stop_fails(tmp_path: Path) -> None:
    async def main() -> None:
        log = make_log(tmp_path, free_port())
        with pytest.raises(RuntimeError, match="not started"):
            await log.propose(c.AddVhost("/"))
        await log.start(5)
        log.stop()
        with pytest.raises(RuntimeError, match="not started"):
            await log.propose(c.AddVhost("/"))

    run(main)


def test_restart_recovers_state_from_journal(tmp_path: Path) -> None:
    port = free_port()

    async def first() -> None:
        log = make_log(tmp_path, port)
        await log.start(5)
        for cmd in TOPOLOGY + [c.DeclareQueue("/", "gone"), c.DeleteQueue("/", "gone")]:
            await log.propose(cmd)
        log.stop()

    async def second() -> None:
        log = make_log(tmp_path, port)
        heard: list[Any] = []
        log.subscribe(lambda cmd, res: heard.append(cmd))
        await log.start(5)
        try:
            assert_topology(log.state)
            assert heard == []  # replay reaches the loop as state, not as commands
            assert await log.propose(c.DeclareQueue("/", "q3")) == "created"
            assert heard == [c.DeclareQueue("/", "q3")]
        finally:
            log.stop()

    run(first)
    assert not (tmp_path / "snapshot").exists()  # recovered from the journal alone
    run(second)


def test_restart_recovers_state_after_log_compaction(tmp_path: Path) -> None:
    port = free_port()

    async def first() -> None:
        log = make_log(tmp_path, port)
        await log.start(5)
        for cmd in TOPOLOGY[:7]:
            await log.propose(cmd)
        log_len = log.status()["log_len"]
        log.compact()
        deadline = time.monotonic() + 5
        while log.status()["log_len"] >= log_len:
            assert time.monotonic() < deadline, "no compaction"
            await asyncio.sleep(0.02)
        assert (tmp_path / "snapshot").exists()
        for cmd in TOPOLOGY[7:]:  # after the snapshot: these live in the journal only
            await log.propose(cmd)
        log.stop()

    async def second() -> None:
        log = make_log(tmp_path, port)
        await log.start(5)
        try:
            assert_topology(log.state)
            assert log.status()["log_len"] < len(TOPOLOGY)
        finally:
            log.stop()

    run(first)
    with gzip.open(tmp_path / "snapshot", "rb") as f:
        assert set(pickle.load(f)[0]["_state"].vhosts) == {"/", "other"}
    run(second)


def test_compaction_by_entry_count_and_restart(tmp_path: Path) -> None:
    port = free_port()

    async def first() -> None:
        log = make_log(tmp_path, port, compaction_min_entries=10)
        await log.start(5)
        await log.propose(c.AddVhost("/"))
        for i in range(60):
            await log.propose(c.DeclareQueue("/", f"q{i}", durable=True))
        # Compacted first at 10 entries, then whenever the log holds twice as many entries as
        # the state has objects (queues, exchanges, bindings).
        vh = log.state.vhosts["/"]
        assert log.status()["log_len"] <= 2 * (len(vh.queues) + len(vh.exchanges)) + 2
        log.stop()

    async def second() -> None:
        log = make_log(tmp_path, port, compaction_min_entries=10)
        await log.start(5)
        try:
            assert list(log.state.vhosts["/"].queues) == [f"q{i}" for i in range(60)]
        finally:
            log.stop()

    run(first)
    assert (tmp_path / "snapshot").exists()
    run(second)


def _populate(tmp_path: Path, port: int) -> None:
    async def main() -> None:
        log = make_log(tmp_path, port)
        await log.start(5)
        for cmd in TOPOLOGY[:3]:
            await log.propose(cmd)
        log.stop()

    run(main)


def _start_fails(tmp_path: Path, port: int) -> RaftStorageError:
    async def main() -> None:
        await make_log(tmp_path, port).start(5)

    with pytest.raises(RaftStorageError) as info:
        run(main)
    return info.value


def test_corrupt_journal_record_names_the_file(tmp_path: Path) -> None:
    port = free_port()
    _populate(tmp_path, port)
    journal = tmp_path / "journal"
    raw = bytearray(journal.read_bytes())
    # Find the first command record (type byte 0; the others are Raft no-ops) and break its
    # pickle: the length fields still agree, so only reading the entry finds the damage.
    offset = FIRST_RECORD_OFFSET
    while True:
        (size,) = struct.unpack_from("<I", raw, offset)
        if raw[offset + 20] == 0:
            break
        offset += size + 8
    raw[offset + 21 : offset + 4 + size] = b"\xff" * (size - 17)
    journal.write_bytes(bytes(raw))
    err = _start_fails(tmp_path, port)
    assert str(journal) in str(err) and err.path == str(journal)
    assert "unreadable" in str(err)


def test_garbage_journal_names_the_file(tmp_path: Path) -> None:
    port = free_port()
    _populate(tmp_path, port)
    journal = tmp_path / "journal"
    journal.write_bytes(b"definitely not a journal" * 10)
    err = _start_fails(tmp_path, port)
    assert str(journal) in str(err) and "magic" in str(err)


def test_torn_journal_tail_names_the_file(tmp_path: Path) -> None:
    port = free_port()
    _populate(tmp_path, port)
    journal = tmp_path / "journal"
    raw = bytearray(journal.read_bytes())
    (end,) = struct.unpack_from("<I", raw, FIRST_RECORD_OFFSET - 4)
    raw[end - 6 : end] = b"\0" * 6  # the last record's tail never reached the disk
    journal.write_bytes(bytes(raw))
    err = _start_fails(tmp_path, port)
    assert str(journal) in str(err)


def test_corrupt_snapshot_names_the_file(tmp_path: Path) -> None:
    port = free_port()

    async def main() -> None:
        log = make_log(tmp_path, port)
        await log.start(5)
        await log.propose(c.AddVhost("/"))
        log.compact()
        deadline = time.monotonic() + 5
        while not (tmp_path / "snapshot").exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        log.stop()

    run(main)
    dump = tmp_path / "snapshot"
    dump.write_bytes(dump.read_bytes()[:20])
    err = _start_fails(tmp_path, port)
    assert str(dump) in str(err)


def test_corrupt_meta_names_the_file(tmp_path: Path) -> None:
    port = free_port()
    _populate(tmp_path, port)
    meta = tmp_path / "journal.meta"
    meta.write_bytes(b"\x80\x02garbage")
    err = _start_fails(tmp_path, port)
    assert str(meta) in str(err)


@pytest.mark.parametrize("bind", ["0.0.0.0:4500", "10.1.2.3:4500", "[::]:4500"])
def test_non_loopback_bind_without_secret_is_refused(tmp_path: Path, bind: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        RaftLog(tmp_path, "10.1.2.3:4500", bind_address=bind)
    with pytest.raises(ValueError, match="secret"):
        RaftLog(tmp_path, bind)
    RaftLog(tmp_path, "10.1.2.3:4500", bind_address=bind, password="s3cret")  # accepted
    RaftLog(tmp_path, "localhost:4500")  # loopback needs no secret


def test_secret_and_bind_address_are_used(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        log = RaftLog(tmp_path, f"127.0.0.1:{port}", password="s3cret")
        await log.start(5)
        try:
            assert await log.propose(c.AddVhost("/")) == "created"
            # Listening on loopback only, as told.
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        finally:
            log.stop()

    run(main)


def test_port_in_use_fails_start(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]

        async def main() -> None:
            await make_log(tmp_path, port).start(5)

        with pytest.raises(OSError, match="cannot listen"):
            run(main)


def test_stop_fails_pending_proposals_and_ends_thread(tmp_path: Path) -> None:
    async def main() -> None:
        log = make_log(tmp_path, free_port())
        await log.start(5)
        await log.propose(c.AddVhost("/"))
        # Stop with proposals in flight: each future ends (committed or failed), none hangs.
        futs = [log.propose(c.DeclareQueue("/", f"q{i}")) for i in range(50)]
        log.stop()
        done = await asyncio.gather(*futs, return_exceptions=True)
        assert all(r == "created" or isinstance(r, RaftProposalError) for r in done)
        assert not any(t.name == "merpati-raft" and t.is_alive() for t in threading.enumerate())

    run(main)


CRASHER = """
import asyncio, sys
from merpati.cluster.raft_log import RaftLog
from merpati.node.metadata import commands as c

async def main():
    log = RaftLog(sys.argv[1], sys.argv[2], fsync=False)
    await log.start(5)
    await log.propose(c.AddVhost("/"))
    i = 0
    while True:
        await log.propose(c.DeclareQueue("/", f"q{i}", durable=True))
        print(i, flush=True)  # acknowledged
        i += 1

asyncio.run(main())
"""


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """A process crash (not a power loss) keeps every acknowledged command, even without fsync."""
    import signal
    import subprocess
    import sys

    address = f"127.0.0.1:{free_port()}"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(tmp_path), address],
        stdout=subprocess.PIPE,
        cwd=root,
        text=True,
    )
    assert proc.stdout is not None
    acked = -1
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 200:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    assert acked >= 200

    async def main() -> None:
        log = RaftLog(tmp_path, address)
        await log.start(5)
        try:
            queues = log.state.vhosts["/"].queues
            assert {f"q{i}" for i in range(acked + 1)} <= set(queues)
            # Nothing invented: the commands proposed in order, a prefix of them (the child may
            # have gone on for a few more between printing its line and the SIGKILL).
            assert set(queues) == {f"q{i}" for i in range(len(queues))}
        finally:
            log.stop()

    run(main)


def test_a_batch_answers_each_proposal_and_replays_after_a_restart(tmp_path: Path) -> None:
    port = free_port()

    async def first() -> None:
        log = make_log(tmp_path, port)
        await log.start(5)
        await log.propose(c.AddVhost("/"))
        before = log.status()["commit_idx"]
        futs = [log.propose(x) for x in TOPOLOGY[1:]]
        futs.insert(3, log.propose(c.DeleteQueue("/", "never-there")))
        done = await asyncio.gather(*futs, return_exceptions=True)
        assert log.status()["commit_idx"] <= before + 2  # one entry (status() may trail one)
        assert isinstance(done[3], MetadataError) and done[3].code == NOT_FOUND
        assert not any(isinstance(r, BaseException) for i, r in enumerate(done) if i != 3)
        assert_topology(log.state)
        log.stop()

    async def second() -> None:
        log = make_log(tmp_path, port)
        await log.start(5)  # the journal check reads a Batch entry as its commands
        try:
            assert_topology(log.state)
        finally:
            log.stop()

    run(first)
    run(second)
