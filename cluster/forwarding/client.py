"""The forwarding client: this node's link to one other node (`Peer`).

Theory of operation: one grpc.aio channel per peer, one Publish stream per peer for every
message this node forwards there, one Consume stream per remote subscription, unary calls for
the rest. The two kinds of stream go over the peer's Unix socket instead when it is a node of
this host that listens on one (`local_link`: gRPC's cost per streamed message is what a worker's
forwarding would otherwise spend most of its CPU on).

Publishing: `publish` turns a message into an entry of the pending batch and returns the ledger
token its confirm waits for. The stream's request iterator wakes once per loop turn that added
messages (and whenever a write has finished) and writes everything pending as one batch, so a
burst of publishes read from client sockets in one turn costs one gRPC write, not one each. A
fanout that hits several queues on the peer calls `publish` once per queue with copies sharing
the body; the copy extends the last entry's queue list instead of sending the message again.
Results come back per message id and resolve the tokens (out of order is fine: the ledger
confirms in order).

Health: a Ping every PING_INTERVAL, and any broken stream, decide whether the peer is up. When it
goes down every token still in flight is resolved as failed (the publishers get basic.nack), and
every remote queue on it hears `peer_down` (its consumers are cancelled, as RabbitMQ does when a
queue's node goes away). While it is down, publishes are rejected at once; a successful Ping
brings it back.

Alarms: a Ping's answer carries the peer's resource alarms (memory, disk), handed to
`on_alarms(node_id, alarms)`, which blocks this node's publishers while any peer has one (the
broker's `set_remote_alarms`). A peer that goes down, or is removed, is reported with none: as
RabbitMQ clears the alarms of a node that is down, an unreachable node's last alarm does not
block the cluster for ever (if it is still up behind a partition, its own publishers stay
blocked by it). A removed peer's alarms are dropped by `Forwarding.remove_peer`, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from merpati.node.core.limits import ConnectionCounts
from merpati.node.core.message import Message
from merpati.node.core.queue import REJECTED
from merpati.proto.merpati.v1 import forwarding_pb2 as pb
from merpati.proto.merpati.v1 import forwarding_pb2_grpc as pb_grpc

from ._common import AUTH_KEY, NODE_KEY, SECURITY, auth_token, quiet
from .local_link import LinkClient
from .packing import MAX_QUEUES_PER_RECORD, Published, pack_published

log = logging.getLogger("merpati.forwarding")

PING_INTERVAL = 1.0
PING_TIMEOUT = 2.0
RETRY_INTERVAL = 0.5
CALL_TIMEOUT = 10.0
# A management listing waits this long for each other node's clients; one slower is left out.
VIEWS_TIMEOUT = 2.0
# A batch is cut at this many messages or body bytes (the next write takes the rest).
BATCH_MESSAGES = 2000
BATCH_BYTES = 1 << 20
# Back-pressure: publishers to this peer are paused above HIGH messages in flight, resumed below LOW.
INFLIGHT_HIGH = 20_000
INFLIGHT_LOW = 5_000

UNKNOWN, UP, DOWN = "unknown", "up", "down"


class Peer:
    def __init__(
        self,
        node_id: str,
        address: str,
        *,
        local_node: str,
        secret: str | bytes | None,
        ledger: Any,
        batch_messages: int = BATCH_MESSAGES,
        on_alarms: Callable[[str, Iterable[str]], None] | None = None,
        link_path: str = "",
    ) -> None:
        self.node_id = node_id
        # The peer's Unix socket when it may be a node of this host (local_link): its streams
        # go there when it listens, else over gRPC.
        self.link = LinkClient(link_path) if link_path else None
        self.on_alarms = on_alarms
        self.alarms: frozenset[str] = frozenset()  # the peer's, from its last Ping answer
        # The peer's message counters from its last Ping answer (kept while it is down: its
        # rates are then flat, not negative), for the management API's per-node rates.
        self.message_counters: dict[str, int] = {}
        self.address = address
        self.local_node = local_node
        self.ledger = ledger
        self.batch_messages = batch_messages
        self.metadata: tuple[tuple[str, str], ...] = ((NODE_KEY, local_node),)
        token = auth_token(secret)
        if token:
            self.metadata += ((AUTH_KEY, token),)
        self.channel = SECURITY.channel(address)
        self.stub = pb_grpc.ForwardingStub(self.channel)
        self._generation = SECURITY.generation
        # Channels made before a certificate reload: their open streams go on (an established
        # TLS session does not need the certificate again); closed with the peer.
        self._retired: list[grpc.aio.Channel] = []
        self.state = UNKNOWN
        self.reason = ""
        # The peer's client connections and channels as its last Ping answer said (limits).
        self.counts = ConnectionCounts()
        self.queues: set[Any] = set()  # RemoteQueues led by this peer (told when it goes down)
        # Publishing.
        self._next_id = 1
        self._pending: list[Published] = []
        self._pending_bytes = 0
        self._last: tuple[Any, ...] | None = None  # (body, props, route, vhost, entry, token)
        self._inflight: dict[int, int] = {}  # message id -> ledger token
        self._wake = asyncio.Event()
        self._call: Any = None
        self._reader: asyncio.Task | None = None
        self._blocked: set[tuple[Any, Any]] = set()  # (publisher, queue) paused by congestion
        self.congested = False
        # Figures (the benchmark and the tests read them).
        self.writes = 0
        self.messages_sent = 0
        self.streams_opened = 0
        self.streams_over_link = 0
        self.closed = False
        self._monitor = asyncio.ensure_future(self._watch())

    # -- health ---------------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return self.state == DOWN

    def _renew_channel(self) -> None:
        """The cluster certificate was reloaded: new calls go through a channel that shows it
        (a reconnect of the old one would still show the old, perhaps expired, certificate)."""
        self._retired.append(self.channel)
        self.channel = SECURITY.channel(self.address)
        self.stub = pb_grpc.ForwardingStub(self.channel)
        self._generation = SECURITY.generation

    async def _watch(self) -> None:
        while not self.closed:
            if self._generation != SECURITY.generation:
                self._renew_channel()
            try:
                resp = await self.stub.Ping(
                    pb.PingRequest(node_id=self.local_node),
                    metadata=self.metadata,
                    timeout=PING_TIMEOUT,
                )
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                self._went_down(f"{e.code().name}: {e.details()}")
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            except Exception as e:  # noqa: BLE001 - never let the monitor die
                self._went_down(repr(e))
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            if resp.node_id and resp.node_id != self.node_id:
                self._went_down(f"{self.address} answers as node '{resp.node_id}'")
                await asyncio.sleep(PING_INTERVAL)
                continue
            self.counts = ConnectionCounts(
                dict(resp.vhost_connections), dict(resp.user_connections), dict(resp.user_channels)
            )
            if self.state != UP:
                self._came_up()
            self._set_alarms(frozenset(resp.alarms))
            self.message_counters = dict(resp.message_counters)
            await asyncio.sleep(PING_INTERVAL)

    def _came_up(self) -> None:
        if self.closed:
            return
        was = self.state
        self.state = UP
        self.reason = ""
        self._open_publish()
        if was == DOWN:
            log.info("node %s (%s) is reachable again", self.node_id, self.address)
            for q in list(self.queues):
                q.peer_up(self)

    def _went_down(self, reason: str) -> None:
        if self.state == DOWN:
            return
        if self.state == UP:
            log.warning("node %s (%s) is down: %s", self.node_id, self.address, reason)
        self.state = DOWN
        self.reason = reason
        # Its clients are gone or cut off from it: they no longer count toward any limit.
        self.counts = ConnectionCounts()
        self._set_alarms(frozenset())
        self._close_publish()
        self._fail_inflight(f"node '{self.node_id}' is down")
        for q in list(self.queues):
            q.peer_down(self)
        self._update_congestion()

    def _set_alarms(self, alarms: frozenset[str]) -> None:
        if alarms == self.alarms:
            return
        self.alarms = alarms
        if self.on_alarms is not None:
            self.on_alarms(self.node_id, alarms)

    def stream_broke(self, reason: str) -> None:
        """A stream to this peer failed: treat the peer as down until a Ping says otherwise."""
        if not self.closed:
            self._went_down(reason)

    # -- publishing -----------------------------------------------------------------------------

    def publish(self, vhost: str, queue: str, msg: Message, confirm: bool = True) -> int:
        """Forward `msg` to `queue` on this peer; the ledger token its confirm waits for.

        With confirm=False (a publisher that wants no confirm, nor a transaction) the message
        travels with id 0: the peer reports nothing for it and there is no token to resolve."""
        if self.state == DOWN or self.closed:
            return REJECTED
        body = msg.body
        last = self._last
        if (
            last is not None
            and last[0] is body
            and (last[5] != 0) == confirm
            and last[1] is msg.props_raw
            and last[2] is msg.route_raw
            and last[3] == vhost
            and queue not in last[4].queues
            and len(last[4].queues) < MAX_QUEUES_PER_RECORD
            and last[4].delivery_count == msg.delivery_count
            and last[4].redelivered == msg.redelivered
        ):
            # Another queue of the same routing on this peer: the message travels once.
            last[4].queues.append(queue)
            return last[5]
        if confirm:
            mid = self._next_id
            self._next_id = mid + 1
        else:
            mid = 0
        entry = Published(
            mid,
            vhost,
            [queue],
            msg.route_raw,
            msg.props_raw,
            body,
            msg.redelivered,
            msg.delivery_count,
        )
        token = 0
        if confirm:
            token = self.ledger.allocate()
            self._inflight[mid] = token
        self._last = (body, msg.props_raw, msg.route_raw, vhost, entry, token)
        pending = self._pending
        if not pending:
            self._wake.set()
        pending.append(entry)
        self._pending_bytes += len(body)
        if not self.congested and len(self._inflight) + len(pending) > INFLIGHT_HIGH:
            self.congested = True
        return token

    def block(self, publisher: Any, queue: Any) -> None:
        key = (publisher, queue)
        if key not in self._blocked:
            self._blocked.add(key)
            publisher.flow_blocked(queue)

    def _update_congestion(self) -> None:
        # Unconfirmed messages count until the peer answers, unconfirmable ones until written.
        if self.congested and (
            len(self._inflight) + len(self._pending) < INFLIGHT_LOW or self.state == DOWN
        ):
            self.congested = False
            blocked, self._blocked = self._blocked, set()
            for publisher, queue in blocked:
                publisher.flow_unblocked(queue)

    def _open_publish(self) -> None:
        if self._call is not None:
            return
        # A fresh wake-up event per stream: a stale generator of a broken stream never takes
        # a batch meant for the new one.
        self._wake = asyncio.Event()
        self._call = self._stream("Publish", self._batches(self._wake), pb.PublishResults)
        self._reader = asyncio.ensure_future(self._read_results(self._call))
        if self._pending:
            self._wake.set()  # published while the peer's state was not known yet

    def _close_publish(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()

    async def _batches(self, wake: asyncio.Event) -> Any:
        """The Publish stream's requests: everything pending at each wake-up, as few writes."""
        limit = self.batch_messages
        while True:
            await wake.wait()
            wake.clear()
            while self._pending and wake is self._wake:
                pending = self._pending
                if len(pending) <= limit and self._pending_bytes <= BATCH_BYTES:
                    batch = pending
                    self._pending = []
                    self._pending_bytes = 0
                else:
                    batch, size = _cut(pending, limit)
                    self._pending = pending[len(batch) :]
                    self._pending_bytes -= size
                self._last = None
                self.writes += 1
                self.messages_sent += len(batch)
                if self.congested:
                    self._update_congestion()
                yield pb.PublishBatch(packed=pack_published(batch))

    async def _read_results(self, call: Any) -> None:
        ledger = self.ledger
        inflight = self._inflight
        try:
            async for res in call:
                if res.confirmed:
                    ledger.resolve([inflight.pop(i) for i in res.confirmed if i in inflight], True)
                if res.rejected:
                    tokens = [inflight.pop(i) for i in res.rejected if i in inflight]
                    ledger.resolve(tokens, False, res.error or "rejected by the queue")
                if self.congested:
                    self._update_congestion()
            reason = "publish stream ended"
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as e:
            reason = f"{e.code().name}: {e.details()}"
        if call is self._call:
            self._call = None
            self.stream_broke(reason)

    def _fail_inflight(self, error: str) -> None:
        self._pending = []
        self._pending_bytes = 0
        self._last = None
        if self._inflight:
            tokens = list(self._inflight.values())
            self._inflight.clear()
            self.ledger.resolve(tokens, False, error)

    # -- unary calls ----------------------------------------------------------------------------

    async def call(self, name: str, request: Any) -> Any:
        method = getattr(self.stub, name)
        return await method(request, metadata=self.metadata, timeout=CALL_TIMEOUT)

    async def client_views(self, kind: str) -> list[dict[str, Any]]:
        """This peer's client connections, channels or consumers (the management API's JSON)."""
        resp = await self.stub.ClientViews(
            pb.ClientViewsRequest(kind=kind), metadata=self.metadata, timeout=VIEWS_TIMEOUT
        )
        items = json.loads(resp.json)
        return items if isinstance(items, list) else []

    async def close_connection(self, name: str, reason: str) -> bool:
        resp = await self.stub.CloseConnection(
            pb.CloseConnectionRequest(name=name, reason=reason),
            metadata=self.metadata,
            timeout=VIEWS_TIMEOUT,
        )
        return bool(resp.closed)

    def purge_handover(self, vhost: str, queue: str) -> None:
        """Tell this peer the queue it hands over was purged here (no answer awaited: a peer
        that is down purges nothing, and its handover's messages then arrive after the purge)."""
        if self.closed or self.state == DOWN:
            return
        task = asyncio.ensure_future(
            self.call("PurgeHandover", pb.QueueRef(vhost=vhost, queue=queue))
        )
        task.add_done_callback(quiet)

    def consume(self, requests: Any) -> Any:
        return self._stream("Consume", requests, pb.ConsumeEvent)

    def _stream(self, method: str, requests: Any, response_cls: Any) -> Any:
        """A bidirectional stream to the peer: over the local link when it listens on one, else
        gRPC; either way a call object of grpc.aio's shape."""
        self.streams_opened += 1
        link = self.link
        if link is not None and link.available():
            self.streams_over_link += 1
            return link.stream(method, requests, response_cls, self.metadata)
        return getattr(self.stub, method)(requests, metadata=self.metadata)

    # -- teardown -------------------------------------------------------------------------------

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._monitor.cancel()
        self._close_publish()
        if self.link is not None:
            self.link.close()
        self._fail_inflight(f"node '{self.node_id}' was removed from the cluster")
        for q in list(self.queues):
            q.peer_down(self)
        self._update_congestion()
        for channel in (self.channel, *self._retired):
            with contextlib.suppress(Exception):
                await channel.close(grace=None)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._monitor


def _cut(pending: list[Published], limit: int) -> tuple[list, int]:
    size = 0
    n = 0
    for entry in pending:
        if n >= limit or (n and size + len(entry.body) > BATCH_BYTES):
            break
        size += len(entry.body)
        n += 1
    return pending[:n], size
