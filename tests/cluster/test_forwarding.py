"""cluster.forwarding in one process: two brokers (each with its SQLite store and its own LocalLog,
fed the same commands to stand for replicated metadata) wired over gRPC on loopback. Every test
runs twice: with the Publish and Consume streams over gRPC, and over the Unix sockets of the
local link (cluster/forwarding/local_link.py) that nodes of one host use.

Node "a" is where clients are; node "b" leads the queues. Tests go through the QueueHandle seam
as the channels do: RemoteQueue on a, LocalQueue on b.
"""

from __future__ import annotations

import asyncio
import filecmp
import socket
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from merpati.cluster.cluster_node import ClusterNode
from merpati.cluster.forwarding import client as fw_client
from merpati.cluster.forwarding.remote_queue import RemoteQueue
from merpati.cluster.membership import Member, Membership
from merpati.node.broker import Broker
from merpati.node.core.message import Message
from merpati.node.core.outcome import Outcome
from merpati.node.core.queue import REJECTED, LocalQueue
from merpati.node.metadata import commands as cmds
from merpati.node.metadata.log import LocalLog
from merpati.node.metadata.state import MetadataError
from merpati.node.store import SQLiteStore
from merpati.node.wire.properties import encode_properties
from merpati.proto.merpati.v1 import forwarding_pb2 as pb
from merpati.proto.merpati.v1 import forwarding_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
PERSISTENT = encode_properties({"delivery_mode": 2})
TRANSIENT = b"\x00\x00"

# Peer state changes within a test run: ping more often than in production.
fw_client.PING_INTERVAL = 0.2
fw_client.RETRY_INTERVAL = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeConsumer:
    """A consumer with a prefetch, like Consumer091: `room` = prefetch - unacked."""

    def __init__(self, tag: str, prefetch: int = 10, no_ack: bool = False) -> None:
        self.tag = tag
        self.exclusive = False
        self.priority = 0
        self.prefetch = prefetch
        self.no_ack = no_ack
        self.unacked = 0
        self.got: list[Message] = []
        self.cancelled_with: list[str] = []
        self.event = asyncio.Event()

    def can_take(self) -> bool:
        return self.no_ack or self.unacked < self.prefetch

    def deliver(self, queue: Any, msg: Message) -> bool:
        assert self.can_take(), "delivered beyond the prefetch"
        self.got.append(msg)
        self.event.set()
        if self.no_ack:
            return False
        self.unacked += 1
        return True

    def settle(self, queue: Any, msg: Message, outcome: Outcome) -> None:
        self.unacked -= 1
        queue.settle(msg, outcome)
        queue.kick()

    def cancelled(self, queue: Any, reason: str) -> None:
        self.cancelled_with.append(reason)
        self.event.set()

    def backpressured(self) -> bool:
        return False

    def bodies(self) -> list[bytes]:
        return [m.body for m in self.got]


# The directory of the local link's sockets for the test running now ("": streams over gRPC).
LINK_DIR = ""


@pytest.fixture(autouse=True, params=["grpc", "link"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    global LINK_DIR
    LINK_DIR = str(tmp_path) if request.param == "link" else ""
    yield request.param
    LINK_DIR = ""


async def start_member(
    node_id: str, log: LocalLog, store: SQLiteStore, ports: dict[str, int], secret: str | None
) -> tuple[Broker, ClusterNode]:
    """A broker with its ClusterNode (the members at `ports` on loopback), forwarding started."""
    members = [Member(n, "127.0.0.1", port, 0) for n, port in ports.items()]
    cluster = ClusterNode(Membership(members, node_id), secret, "127.0.0.1")
    cluster.link_dir = LINK_DIR
    broker = Broker(node_id, log, store=store, cluster=cluster)
    await cluster.start_forwarding()
    return broker, cluster


class Node:
    def __init__(self, node_id: str, tmp: Path) -> None:
        self.node_id = node_id
        self.store = SQLiteStore(tmp / f"{node_id}.db")
        self.store.open()
        self.store.start(asyncio.get_running_loop())
        self.broker: Any = None
        self.cluster: Any = None

    async def start(self, ports: dict[str, int], secret: str | None) -> None:
        self.broker, self.cluster = await start_member(
            self.node_id, LocalLog(), self.store, ports, secret
        )

    @property
    def fw(self) -> Any:
        return self.cluster.forwarding

    async def apply(self, cmd: cmds.Command) -> Any:
        return await self.broker.propose(cmd)

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.detach()
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)


class Cluster:
    """Nodes a and b; metadata commands are applied to both (replicated metadata)."""

    def __init__(self, tmp: Path, secret: str | None = "s3cret") -> None:
        self.tmp = tmp
        self.secret = secret

    async def __aenter__(self) -> Cluster:
        self.a = Node("a", self.tmp)
        self.b = Node("b", self.tmp)
        ports = {"a": free_port(), "b": free_port()}
        for node in (self.a, self.b):
            await node.start(ports, self.secret)
        await self.everywhere(cmds.AddVhost("/"))
        await self.until_up()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        peers = [p for n in (self.a, self.b) for p in n.fw.peers.values()]
        await self.a.close()
        await self.b.close()
        if exc[0] is None:
            # Every stream went the way the test's transport says.
            over_link = sum(p.streams_over_link for p in peers)
            assert over_link == (sum(p.streams_opened for p in peers) if LINK_DIR else 0)

    async def everywhere(self, cmd: cmds.Command) -> None:
        for node in (self.a, self.b):
            await node.apply(cmd)

    async def queue(self, name: str, leader: str = "b", durable: bool = True, **kw: Any) -> None:
        await self.everywhere(cmds.DeclareQueue("/", name, durable, leader=leader, **kw))

    async def until_up(self, timeout: float = 5.0) -> None:
        await until(
            lambda: self.a.fw.peer_state("b") == "up" and self.b.fw.peer_state("a") == "up",
            timeout,
        )


async def until(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def run(coro_fn: Any, tmp_path: Path, runner: Any = asyncio.run, **kw: Any) -> Any:
    async def main() -> Any:
        async with Cluster(tmp_path, **kw) as c:
            return await asyncio.wait_for(coro_fn(c), 30)

    return runner(main())


def msg(body: bytes, props: bytes = PERSISTENT, rk: str = "q") -> Message:
    return Message("", rk, None, props, body)


# -- generated modules ---------------------------------------------------------------------------


def test_generated_modules_are_current(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "proto"))
    try:
        import generate  # proto/generate.py
    finally:
        sys.path.pop(0)
    written = generate.generate(tmp_path)
    assert written
    for path in written:
        rel = path.relative_to(tmp_path)
        checked_in = ROOT / rel
        assert checked_in.exists(), f"{rel} is not checked in: run python proto/generate.py"
        assert filecmp.cmp(path, checked_in, shallow=False), (
            f"{rel} is stale: run python proto/generate.py"
        )


# -- publishing ----------------------------------------------------------------------------------


def test_publish_confirms_after_the_leaders_commit(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q")
        rq = c.a.broker.queue("/", "q")
        assert isinstance(rq, RemoteQueue)
        lq = c.b.broker.queue("/", "q")
        assert isinstance(lq, LocalQueue)
        b_rows_before = c.b.store.committed_rows
        token = rq.enqueue(msg(b"hello"))
        assert token > 0
        ledger = c.a.store.ledger
        assert ledger.committed < token  # not before b answers
        await asyncio.wait_for(ledger.wait(token), 5)
        # b confirmed only once its store committed the message.
        assert c.b.store.committed_rows > b_rows_before
        assert lq.stats_now() == (1, 0)

    run(body, tmp_path)


def test_on_uvloop(tmp_path: Path) -> None:
    """The node runs on uvloop (node/cli.py): grpc.aio must work there too."""
    uvloop = pytest.importorskip("uvloop")

    async def body(c: Cluster) -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        await c.queue("q")
        rq = c.a.broker.queue("/", "q")
        token = rq.enqueue(msg(b"on uvloop"))
        await asyncio.wait_for(c.a.store.ledger.wait(token), 5)
        consumer = FakeConsumer("c")
        rq.subscribe(consumer)
        await until(lambda: len(consumer.got) == 1)
        consumer.settle(rq, consumer.got[0], Outcome.ACCEPTED)
        await until(lambda: c.b.broker.queue("/", "q").unacked == 0)
        assert await rq.stats() == (0, 1)

    run(body, tmp_path, runner=uvloop.run)


def test_per_publisher_order_and_batching(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        rq = c.a.broker.queue("/", "q")
        ledger = c.a.store.ledger
        last = 0
        for burst in range(5):
            for i in range(200):
                last = rq.enqueue(msg(b"%d" % (burst * 200 + i), TRANSIENT))
            await asyncio.sleep(0)  # a loop turn between bursts, as socket reads would give
        await asyncio.wait_for(ledger.wait(last), 5)
        lq = c.b.broker.queue("/", "q")
        consumer = FakeConsumer("c", prefetch=10_000)
        lq.subscribe(consumer)
        assert consumer.bodies() == [b"%d" % i for i in range(1000)]
        counters = c.b.fw.server.counters
        assert counters.publish_messages == 1000
        assert counters.publish_batches <= 10, counters.publish_batches  # not one write each

    run(body, tmp_path)


def test_fanout_sends_each_message_once_per_node(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q1")
        await c.queue("q2")
        await c.queue("qa", leader="a")
        await c.everywhere(cmds.DeclareExchange("/", "fan", "fanout"))
        for q in ("q1", "q2", "qa"):
            await c.everywhere(cmds.Bind("/", "fan", "q", q, ""))
        ex = c.a.broker.state.exchange("/", "fan")
        payload = b"x" * 10_000
        m = Message("fan", "", None, PERSISTENT, payload)
        targets = c.a.broker.route("/", ex, m)
        assert sorted(q.name for q in targets) == ["q1", "q2", "qa"]
        tokens = [q.enqueue(m if i == 0 else m.copy()) for i, q in enumerate(targets)]
        ledger = c.a.store.ledger
        await asyncio.wait_for(ledger.wait(max(tokens)), 5)
        counters = c.b.fw.server.counters
        assert counters.publish_messages == 1
        assert counters.publish_bytes == len(payload)  # the body crossed once for two queues
        for name in ("q1", "q2"):
            assert c.b.broker.queue("/", name).stats_now() == (1, 0)
        assert c.a.broker.queue("/", "qa").stats_now() == (1, 0)

    run(body, tmp_path)


def test_rejected_publish_is_a_failed_token(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        rq = c.a.broker.queue("/", "q")
        ledger = c.a.store.ledger
        ok = ledger.wait(rq.enqueue(msg(b"1")))
        refused = ledger.wait(rq.enqueue(msg(b"2")))
        await asyncio.wait_for(ok, 5)
        with pytest.raises(Exception, match="rejected"):
            await asyncio.wait_for(refused, 5)

    run(body, tmp_path)


def test_a_message_for_a_queue_that_moved_is_rejected_not_forwarded_again(tmp_path: Path) -> None:
    # b has applied the move of q to a, a has not: a still forwards q's messages to b. b must
    # not send them back (a would forward them again, and the in-order confirms of both nodes
    # would wait on each other for ever).
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        await c.b.apply(cmds.MoveQueue("/", "q", "b", "a"))
        rq = c.a.broker.queue("/", "q")
        assert isinstance(rq, RemoteQueue)
        ledger = c.a.store.ledger
        bounced = ledger.wait(rq.enqueue(msg(b"1", TRANSIENT)))
        with pytest.raises(Exception, match="no longer led by node 'b'"):
            await asyncio.wait_for(bounced, 5)
        assert c.b.fw.server.counters.publish_messages == 1
        assert c.a.fw.server.counters.publish_messages == 0  # never came back
        # Once a applies the move too, its publishes stay local.
        await c.a.apply(cmds.MoveQueue("/", "q", "b", "a"))
        lq = c.a.broker.queue("/", "q")
        assert isinstance(lq, LocalQueue)
        await asyncio.wait_for(ledger.wait(lq.enqueue(msg(b"2", TRANSIENT))), 5)

    run(body, tmp_path)


# -- consuming -----------------------------------------------------------------------------------


def test_consume_with_prefetch_credit_and_settlements(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        lq = c.b.broker.queue("/", "q")
        for i in range(20):
            lq.enqueue(msg(b"%d" % i, TRANSIENT))
        rq = c.a.broker.queue("/", "q")
        consumer = FakeConsumer("c1", prefetch=5)
        rq.subscribe(consumer)
        await until(lambda: len(consumer.got) == 5)
        await asyncio.sleep(0.1)
        assert len(consumer.got) == 5  # credit = prefetch: nothing beyond it crossed
        assert lq.unacked == 5
        first = consumer.got[:5]
        consumer.settle(rq, first[0], Outcome.ACCEPTED)  # ack
        consumer.settle(rq, first[1], Outcome.RELEASED)  # nack requeue
        consumer.settle(rq, first[2], Outcome.REJECTED)  # reject
        await until(lambda: len(consumer.got) == 8)
        # the released one comes back first (its original position), marked redelivered
        again = consumer.got[5]
        assert again.body == b"1" and again.redelivered
        assert [m.body for m in consumer.got[6:8]] == [b"5", b"6"]
        assert lq.unacked == 5
        await until(lambda: lq.stats_now() == (13, 1))
        # ack everything as it comes: the rest drains
        done = {id(m) for m in first[:3]}
        while True:
            for m in list(consumer.got):
                if id(m) not in done:
                    done.add(id(m))
                    consumer.settle(rq, m, Outcome.ACCEPTED)
            if len(consumer.got) == 21:  # 20 messages, "1" twice
                break
            await asyncio.sleep(0.01)
        assert sorted(consumer.bodies()) == sorted([b"%d" % i for i in range(20)] + [b"1"])
        await until(lambda: lq.unacked == 0 and lq.stats_now() == (0, 1))
        rq.unsubscribe(consumer)
        await until(lambda: lq.stats_now() == (0, 0))

    run(body, tmp_path)


def test_no_ack_consumer_gets_everything(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        lq = c.b.broker.queue("/", "q")
        rq = c.a.broker.queue("/", "q")
        consumer = FakeConsumer("c", no_ack=True)
        rq.subscribe(consumer)
        await until(lambda: lq.stats_now()[1] == 1)
        for i in range(1000):
            lq.enqueue(msg(b"%d" % i, TRANSIENT))
        await until(lambda: len(consumer.got) == 1000)
        assert consumer.bodies() == [b"%d" % i for i in range(1000)]
        assert lq.unacked == 0 and lq.stats_now() == (0, 1)

    run(body, tmp_path)


class StalledConsumer(FakeConsumer):
    """A no-ack consumer whose node is behind: it takes nothing until `stalled` is cleared."""

    stalled = True

    def can_take(self) -> bool:
        return not self.stalled


def test_a_remote_consumer_whose_node_is_behind_paces_the_publishers(tmp_path: Path) -> None:
    # Without this a fire-and-forget publisher on the consumer's node outran the queue's
    # deliveries across the link, and the consumer was starved until publishing stopped.
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        lq = c.b.broker.queue("/", "q")
        rq = c.a.broker.queue("/", "q")
        consumer = StalledConsumer("c", no_ack=True)
        rq.subscribe(consumer)
        await until(lambda: lq.stats_now()[1] == 1)
        n = 8000
        for i in range(n):
            rq.enqueue(msg(b"%d" % i, TRANSIENT))
            if i % 500 == 0:
                await asyncio.sleep(0)
        await until(lambda: lq.congested)
        (remote,) = lq.consumers
        assert remote.backpressured()
        consumer.stalled = False
        rq.kick()
        await until(lambda: len(consumer.got) == n, 10)
        assert consumer.bodies() == [b"%d" % i for i in range(n)]
        assert not lq.congested

    run(body, tmp_path)


def test_a_prefetch_bound_remote_consumer_is_not_back_pressure(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        lq = c.b.broker.queue("/", "q")
        rq = c.a.broker.queue("/", "q")
        consumer = FakeConsumer("c", prefetch=10)  # never acks: its prefetch holds it back
        rq.subscribe(consumer)
        await until(lambda: lq.stats_now()[1] == 1)
        for i in range(5000):
            rq.enqueue(msg(b"%d" % i, TRANSIENT))
        await until(lambda: lq.stats_now()[0] == 5000 - 10)
        (remote,) = lq.consumers
        assert not remote.backpressured() and not lq.congested

    run(body, tmp_path)


def test_stream_break_releases_deliveries_redelivered(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        lq = c.b.broker.queue("/", "q")
        for i in range(3):
            lq.enqueue(msg(b"%d" % i, TRANSIENT))
        rq = c.a.broker.queue("/", "q")
        consumer = FakeConsumer("c", prefetch=10)
        rq.subscribe(consumer)
        await until(lambda: len(consumer.got) == 3)
        assert lq.unacked == 3
        # The link breaks (a's side of the stream dies).
        sub = next(iter(rq._subs.values()))
        sub._task.cancel()
        await until(lambda: lq.unacked == 0)
        assert lq.stats_now() == (3, 0)
        other = FakeConsumer("local")
        lq.subscribe(other)
        assert other.bodies() == [b"0", b"1", b"2"]
        assert all(m.redelivered for m in other.got)

    run(body, tmp_path)


def test_cancel_keeps_held_deliveries_settleable(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        lq = c.b.broker.queue("/", "q")
        for i in range(4):
            lq.enqueue(msg(b"%d" % i, TRANSIENT))
        rq = c.a.broker.queue("/", "q")
        consumer = FakeConsumer("c", prefetch=2)
        rq.subscribe(consumer)
        await until(lambda: len(consumer.got) == 2)
        rq.unsubscribe(consumer)
        await until(lambda: lq.stats_now() == (2, 0))
        assert lq.unacked == 2
        for m in consumer.got:
            rq.settle(m, Outcome.ACCEPTED)
        await until(lambda: lq.unacked == 0)
        assert lq.stats_now() == (2, 0)

    run(body, tmp_path)


# -- get, purge, stats ---------------------------------------------------------------------------


def test_get_purge_stats(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        lq = c.b.broker.queue("/", "q")
        rq = c.a.broker.queue("/", "q")
        for i in range(5):
            lq.enqueue(msg(b"%d" % i, TRANSIENT))
        assert await rq.stats() == (5, 0)
        got, remaining = await rq.get(True)
        assert got.body == b"0" and remaining == 4
        assert lq.unacked == 1
        rq.settle(got, Outcome.RELEASED)
        await until(lambda: lq.unacked == 0)
        got, remaining = await rq.get(True)
        assert got.body == b"0" and got.redelivered and remaining == 4
        rq.settle(got, Outcome.ACCEPTED)
        await until(lambda: lq.unacked == 0)
        got, remaining = await rq.get(False)  # no ack: gone at once
        assert got.body == b"1" and remaining == 3
        assert await rq.purge() == 3
        assert await rq.get(True) == (None, 0)
        assert await rq.stats() == (0, 0)

    run(body, tmp_path)


def test_unacked_get_released_when_the_session_ends(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        lq = c.b.broker.queue("/", "q")
        rq = c.a.broker.queue("/", "q")
        lq.enqueue(msg(b"g", TRANSIENT))
        got, _ = await rq.get(True)
        assert lq.unacked == 1
        c.a.fw.remove_peer("b")  # a's session with b ends (as when a dies)
        await until(lambda: lq.unacked == 0)
        again = lq.get_now(False)
        assert again.body == b"g" and again.redelivered

    run(body, tmp_path)


def test_missing_queue_is_404(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        rq = RemoteQueue("/", "nope", "b", c.a.fw)
        with pytest.raises(MetadataError) as e:
            await rq.stats()
        assert e.value.code == 404 and "nope" in e.value.text

    run(body, tmp_path)


# -- failure -------------------------------------------------------------------------------------


def test_peer_down_rejects_fails_and_cancels_then_recovers(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        rq = c.a.broker.queue("/", "q")
        consumer = FakeConsumer("c")
        rq.subscribe(consumer)
        await until(lambda: c.b.broker.queue("/", "q").stats_now()[1] == 1)
        port = c.b.fw.port
        await c.b.fw.server.stop(grace=None)  # b's cluster port goes away
        await until(lambda: c.a.fw.peer_state("b") == "down")
        assert consumer.cancelled_with and "down" in consumer.cancelled_with[0]
        assert rq.enqueue(msg(b"x", TRANSIENT)) == REJECTED
        for fut in (rq.stats(), rq.purge(), rq.get(True)):
            with pytest.raises(MetadataError) as e:
                await fut
            assert e.value.code == 404
            assert e.value.text == "queue 'q' in vhost '/' is on node 'b', which is down"
        # b comes back: so do its queues
        await c.b.fw.server.start("127.0.0.1", port, c.b.fw._link_path("b"))
        await until(lambda: c.a.fw.peer_state("b") == "up")
        token = rq.enqueue(msg(b"y", TRANSIENT))
        await asyncio.wait_for(c.a.store.ledger.wait(token), 5)
        assert await rq.stats() == (1, 0)

    run(body, tmp_path)


def test_in_flight_publishes_fail_when_the_peer_dies(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q")
        rq = c.a.broker.queue("/", "q")
        ledger = c.a.store.ledger
        # b's store is slow to commit: hold its writer back by stopping b's server right away
        token = rq.enqueue(msg(b"lost?"))
        await c.b.fw.server.stop(grace=None)
        try:
            await asyncio.wait_for(ledger.wait(token), 5)
        except Exception as e:  # nacked because b went down before answering
            assert "down" in str(e)
        assert token <= ledger.committed  # never left hanging: confirms behind it go on

    run(body, tmp_path)


def test_wrong_secret_is_unauthenticated(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.b.fw.port}") as ch:
            stub = pb_grpc.ForwardingStub(ch)
            for md in ((), (("merpati-auth", "wrong"),)):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.Ping(pb.PingRequest(node_id="x"), metadata=md, timeout=5)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            call = stub.Publish(metadata=(("merpati-auth", "wrong"),))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.read()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

    run(body, tmp_path)


def test_delete_cancels_remote_consumers(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.queue("q", durable=False)
        rq = c.a.broker.queue("/", "q")
        consumer = FakeConsumer("c")
        rq.subscribe(consumer)
        await until(lambda: c.b.broker.queue("/", "q").stats_now()[1] == 1)
        await c.everywhere(cmds.DeleteQueue("/", "q"))
        assert consumer.cancelled_with == ["queue deleted"]
        assert c.a.broker.queue("/", "q") is None

    run(body, tmp_path)


def test_alarms_travel_on_pings_and_go_with_the_peer(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        heard: list[frozenset[str]] = []
        c.a.broker.alarm_listeners.append(heard.append)
        c.b.broker.set_alarm("disk", True)
        await until(lambda: c.a.broker.blocked)
        assert c.a.broker.alarms.by_node() == [("b", "disk")]
        assert c.b.broker.alarms.remote == {}  # a has none to report
        c.b.broker.set_alarm("memory", True)
        await until(lambda: c.a.broker.blocked_by == {"disk", "memory"})
        c.b.broker.set_alarm("disk", False)
        await until(lambda: c.a.broker.blocked_by == {"memory"})
        # b stops answering: its alarm goes (as RabbitMQ clears a down node's alarms)...
        port = c.b.fw.port
        await c.b.fw.server.stop(grace=None)
        await until(lambda: not c.a.broker.blocked)
        # ...and comes back with it.
        await c.b.fw.server.start("127.0.0.1", port, c.b.fw._link_path("b"))
        await until(lambda: c.a.broker.blocked_by == {"memory"})
        # A node removed from the cluster blocks no one, at once.
        c.a.fw.remove_peer("b")
        assert not c.a.broker.blocked and c.a.broker.alarms.remote == {}
        assert heard == [
            {"disk"},
            {"disk", "memory"},
            {"memory"},
            frozenset(),
            {"memory"},
            frozenset(),
        ]

    run(body, tmp_path)


class FakeClientViews:
    """What node.management.views.ClientViews gives the forwarding server: lists and closes."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.closed: list[tuple[str, str]] = []

    def list(self, kind: str) -> list[dict[str, Any]]:
        if kind not in ("connections", "channels", "consumers"):
            raise ValueError(f"unknown kind {kind!r}")
        return [{"name": f"{self.node_id}-1", "node": self.node_id, "vhost": "/", "user": "u"}]

    def close(self, name: str, reason: str) -> bool:
        if name != f"{self.node_id}-1":
            return False
        self.closed.append((name, reason))
        return True


def test_client_views_and_closing_a_connection_of_another_node(tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        views = c.b.broker.client_views = FakeClientViews("b")
        assert await c.a.cluster.peer_client_views("connections") == views.list("connections")
        assert await c.a.cluster.close_peer_connection("b", "b-1", "bye") is True
        assert await c.a.cluster.close_peer_connection("b", "b-9", "bye") is False
        assert views.closed == [("b-1", "bye")]
        # An unknown kind is the caller's mistake, and leaves the listing without that node.
        assert await c.a.cluster.peer_client_views("queues") == []
        # A node without views (the core's tests) lists none; one that is down is not asked.
        c.b.broker.client_views = None
        assert await c.a.cluster.peer_client_views("channels") == []
        await c.b.fw.server.stop(grace=None)
        await until(lambda: c.a.fw.peer_state("b") == "down")
        assert await c.a.cluster.peer_client_views("connections") == []
        assert await c.a.cluster.close_peer_connection("b", "b-1", "bye") is False

    run(body, tmp_path)
