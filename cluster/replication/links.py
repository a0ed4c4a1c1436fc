"""How replicas of replicated queues talk across nodes (proto/merpati/v1/replication.proto).

Follower side: one Fetch stream per leader node carries the fetches of every queue this node
follows there; a queue asks again as soon as it has written what the last reply brought
(QueueReplica._durable), so a busy queue pipelines one fetch at a time and an idle one waits,
parked at the leader. A broken stream is opened again and every queue on it fetches anew.

Leader side (`ReplicationServicer`): answers fetches from the QueueReplica of the queue, parks
those with nothing new, positions for the controller's elections, and snapshot chunks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from merpati.proto.merpati.v1 import replication_pb2 as pb
from merpati.proto.merpati.v1 import replication_pb2_grpc as pb_grpc

from .log import Entry
from .replica import Diverging, Fetch, FetchReply

log = logging.getLogger("merpati.replication")

RETRY = 0.5
POSITION_TIMEOUT = 2.0
SNAPSHOT_TIMEOUT = 30.0


def ref(key: tuple[str, str, str]) -> pb.ReplicaRef:
    return pb.ReplicaRef(vhost=key[0], queue=key[1], incarnation=key[2])


def key_of(r: pb.ReplicaRef) -> tuple[str, str, str]:
    return r.vhost, r.queue, r.incarnation


def reply_to_pb(key: tuple[str, str, str], r: FetchReply) -> pb.QueueReply:
    out = pb.QueueReply(
        queue=ref(key),
        epoch=r.epoch,
        commit=r.commit,
        snapshot=r.snapshot,
        entries=[pb.LogEntry(offset=e.offset, epoch=e.epoch, data=e.data) for e in r.entries],
    )
    if r.diverging is not None:
        out.diverging = True
        out.diverging_epoch = r.diverging.epoch
        out.diverging_end = r.diverging.end
    return out


def reply_of(r: pb.QueueReply, replica: str) -> FetchReply:
    return FetchReply(
        r.epoch,
        replica,
        tuple(Entry(e.offset, e.epoch, e.data) for e in r.entries),
        r.commit,
        Diverging(r.diverging_epoch, r.diverging_end) if r.diverging else None,
        r.snapshot,
    )


class ReplicaLinks:
    """This node's replicas and its links to the other nodes' (one per node)."""

    def __init__(self, node_id: str, peers: Any) -> None:
        self.node_id = node_id
        self.peers = peers  # node id -> forwarding Peer (its channel and call metadata), or None
        self.members: dict[tuple[str, str, str], Any] = {}  # key -> QueueReplica
        self._streams: dict[str, _FetchStream] = {}
        self._tasks: set[asyncio.Task] = set()
        self.closed = False

    def add(self, member: Any) -> None:
        self.members[member.key] = member

    def member(self, key: tuple[str, str, str]) -> Any:
        return self.members.get(key)

    # -- follower -------------------------------------------------------------------------------

    def follow(self, member: Any, leader: str) -> None:
        for node, stream in self._streams.items():
            if node != leader:
                stream.drop(member)
        self.fetch(member)

    def fetch(self, member: Any) -> None:
        """`member` is ready for its next fetch from its leader."""
        leader = member.replica.leader
        if self.closed or member.closed or leader is None or leader == self.node_id:
            return
        stream = self._streams.get(leader)
        if stream is None:
            stream = self._streams[leader] = _FetchStream(self, leader)
        stream.want(member)

    def forget(self, member: Any) -> None:
        self.members.pop(member.key, None)
        for stream in self._streams.values():
            stream.drop(member)

    def stub(self, node: str) -> tuple[Any, Any] | None:
        peer = self.peers(node)
        if peer is None or peer.closed or peer.down:
            return None  # (a call to a node known down only fails, noisily, inside grpc)
        return pb_grpc.ReplicationStub(peer.channel), peer.metadata

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- snapshots ------------------------------------------------------------------------------

    def read_snapshot(self, member: Any) -> None:
        if member.snapshotting:
            return
        member.begin_snapshot()
        self.spawn(self._snapshot(member))

    async def _snapshot(self, member: Any) -> None:
        leader = member.replica.leader
        offset = after = 0
        try:
            while not member.closed:
                link = self.stub(leader)
                if link is None:
                    raise ConnectionError(f"no link to {leader}")
                stub, md = link
                chunk = await stub.Snapshot(
                    pb.SnapshotRequest(queue=ref(member.key), offset=offset, after_seq=after),
                    metadata=md,
                    timeout=SNAPSHOT_TIMEOUT,
                )
                if not chunk.found:
                    raise ConnectionError(f"{leader} has no snapshot of the queue")
                offset = chunk.offset
                rows = [
                    (m.seq, m.route, m.props, m.body, m.expires, m.delivery_count)
                    for m in chunk.messages
                ]
                member.snapshot_rows(rows)
                if rows:
                    after = rows[-1][0]
                if chunk.done:
                    epochs = [(e.epoch, e.first) for e in chunk.epochs]
                    member.end_snapshot(offset, epochs, chunk.delivered)
                    log.info(
                        "queue '%s' in vhost '%s': snapshot from %s read (offset %d)",
                        member.name,
                        member.vhost,
                        leader,
                        offset,
                    )
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the leader went away: try again later
            log.warning("queue '%s': snapshot from %s failed: %s", member.name, leader, e)
            member.snapshotting = False
            await asyncio.sleep(RETRY)
            if not member.closed:
                self.read_snapshot(member)

    # -- elections ------------------------------------------------------------------------------

    async def position(
        self, node: str, key: tuple[str, str, str], epoch: int
    ) -> tuple[int, int] | None:
        """Fence `node`'s replica at `epoch` and get its position (None: no answer)."""
        if node == self.node_id:
            member = self.members.get(key)
            return member.fence(epoch) if member is not None else None
        link = self.stub(node)
        if link is None:
            return None
        stub, md = link
        try:
            resp = await stub.Position(
                pb.PositionRequest(queue=ref(key), epoch=epoch),
                metadata=md,
                timeout=POSITION_TIMEOUT,
            )
        except grpc.aio.AioRpcError:
            return None
        return (resp.last_epoch, resp.end) if resp.found else None

    async def status(self, node: str, key: tuple[str, str, str]) -> dict[str, Any] | None:
        """`node`'s replica of the queue as it reports itself (None: no answer, or none there)."""
        if node == self.node_id:
            member = self.members.get(key)
            return member.status() if member is not None else None
        link = self.stub(node)
        if link is None:
            return None
        stub, md = link
        try:
            resp = await stub.Status(ref(key), metadata=md, timeout=POSITION_TIMEOUT)
        except grpc.aio.AioRpcError:
            return None
        return json.loads(resp.json) if resp.found else None

    async def close(self) -> None:
        self.closed = True
        for stream in self._streams.values():
            stream.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _FetchStream:
    """The Fetch stream from this node to one leader node."""

    def __init__(self, links: ReplicaLinks, leader: str) -> None:
        self.links = links
        self.leader = leader
        self.wanted: dict[tuple[str, str, str], Any] = {}
        self.following: dict[tuple[str, str, str], Any] = {}
        self._wake = asyncio.Event()
        self.closed = False
        self._task = asyncio.ensure_future(self._run())

    def want(self, member: Any) -> None:
        self.following[member.key] = member
        self.wanted[member.key] = member
        self._wake.set()

    def drop(self, member: Any) -> None:
        self.following.pop(member.key, None)
        self.wanted.pop(member.key, None)

    def close(self) -> None:
        self.closed = True
        self._task.cancel()
        self._wake.set()

    async def _requests(self, wake: asyncio.Event) -> AsyncIterator[pb.FetchRequests]:
        """The requests of one call. A call that broke may leave its generator parked here:
        each call has its own `wake`, and a generator whose call is not the current one ends,
        so it can never take the fetches meant for the next call (they would be lost)."""
        while not self.closed and wake is self._wake:
            await wake.wait()
            wake.clear()
            if wake is not self._wake:
                return
            wanted, self.wanted = self.wanted, {}
            fetches = []
            for key, member in wanted.items():
                if member.closed or member.snapshotting or member.replica.leader != self.leader:
                    continue
                f = member.replica.fetch()
                fetches.append(
                    pb.QueueFetch(
                        queue=ref(key), epoch=f.epoch, offset=f.offset, last_epoch=f.last_epoch
                    )
                )
            if fetches:
                yield pb.FetchRequests(fetches=fetches)

    async def _run(self) -> None:
        links = self.links
        while not self.closed:
            link = links.stub(self.leader)
            if link is None:
                await asyncio.sleep(RETRY)
                continue
            stub, md = link
            # Everything followed there asks again on a new stream, with its own wake-up (the
            # old one is set once more so that a generator still parked on it ends).
            self.wanted.update(self.following)
            stale, self._wake = self._wake, asyncio.Event()
            stale.set()
            self._wake.set()
            call = stub.Fetch(self._requests(self._wake), metadata=md)
            try:
                async for batch in call:
                    for r in batch.replies:
                        self._reply(r)
            except asyncio.CancelledError:
                call.cancel()
                raise
            except grpc.aio.AioRpcError as e:
                if not self.closed:
                    # Info, not debug: a follower that stops catching up is otherwise silent.
                    log.info("fetch stream to %s broke: %s", self.leader, e.details())
            except Exception:  # noqa: BLE001 - a bug here must not end the stream for good
                log.exception("fetch stream to %s failed", self.leader)
            await asyncio.sleep(RETRY)

    def _reply(self, r: pb.QueueReply) -> None:
        member = self.following.get(key_of(r.queue))
        if member is None or member.closed:
            return
        if r.refused:
            # Not (or not yet) the leader there: ask again a little later.
            asyncio.get_running_loop().call_later(RETRY, self.links.fetch, member)
            return
        if not member.on_reply(reply_of(r, member.node_id)):
            self.links.read_snapshot(member)


class ReplicationServicer(pb_grpc.ReplicationServicer):
    """The leader side, on the node's cluster port (authenticated as forwarding is)."""

    def __init__(self, links: ReplicaLinks, caller: Any) -> None:
        self.links = links
        self.caller = caller  # async (context) -> calling node id (aborts when unauthenticated)

    def register(self, server: Any) -> None:
        pb_grpc.add_ReplicationServicer_to_server(self, server)

    async def Fetch(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.FetchReplies]:
        node = await self.caller(context)
        out: asyncio.Queue = asyncio.Queue()
        links = self.links

        def sender(key: tuple[str, str, str]) -> Any:
            return lambda reply: out.put_nowait(reply_to_pb(key, reply))

        async def read() -> None:
            async for req in request_iterator:
                for f in req.fetches:
                    key = key_of(f.queue)
                    member = links.member(key)
                    if member is None or not member.replica.leads:
                        out.put_nowait(pb.QueueReply(queue=f.queue, refused="not the leader"))
                        continue
                    fetch = Fetch(f.epoch, node, f.offset, f.last_epoch)
                    reply = member.on_fetch(fetch, sender(key))
                    if reply is not None:
                        out.put_nowait(reply_to_pb(key, reply))
            out.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                first = await out.get()
                if first is None:
                    return
                batch = [first]
                while not out.empty():
                    nxt = out.get_nowait()
                    if nxt is None:
                        yield pb.FetchReplies(replies=batch)
                        return
                    batch.append(nxt)
                yield pb.FetchReplies(replies=batch)
        finally:
            reader.cancel()

    async def Position(self, request: pb.PositionRequest, context: Any) -> pb.PositionReply:
        await self.caller(context)
        member = self.links.member(key_of(request.queue))
        if member is None:
            return pb.PositionReply(found=False)
        last_epoch, end = member.fence(request.epoch)
        return pb.PositionReply(found=True, last_epoch=last_epoch, end=end)

    async def Status(self, request: pb.ReplicaRef, context: Any) -> pb.StatusReply:
        await self.caller(context)
        member = self.links.member(key_of(request))
        if member is None:
            return pb.StatusReply(found=False)
        return pb.StatusReply(found=True, json=json.dumps(member.status()))

    async def Snapshot(self, request: pb.SnapshotRequest, context: Any) -> pb.SnapshotChunk:
        node = await self.caller(context)
        member = self.links.member(key_of(request.queue))
        if member is None or not member.replica.leads:
            return pb.SnapshotChunk(found=False)
        fut = asyncio.get_running_loop().create_future()

        def done(offset: int, epochs: list, delivered: int, rows: list, last: bool) -> None:
            if not fut.done():
                fut.set_result((offset, epochs, delivered, rows, last))

        member.snapshot(node, request.offset, request.after_seq, done)
        offset, epochs, delivered, rows, last = await fut
        return pb.SnapshotChunk(
            found=True,
            offset=offset,
            epochs=[pb.EpochStart(epoch=e, first=f) for e, f in epochs],
            delivered=delivered,
            messages=[
                pb.StoredMessage(
                    seq=r[0], route=r[2], props=r[3], body=r[4], expires=r[5], delivery_count=r[6]
                )
                for r in rows
            ],
            done=last,
        )
