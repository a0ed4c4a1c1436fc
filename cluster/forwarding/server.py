"""The forwarding server: other nodes reach the queues this node leads through it.

Theory of operation: every RPC runs on the node's own asyncio loop (grpc.aio), so it calls the
queues (their `QueueHandle`s) directly, exactly as a local channel would. Nodes of the same host
reach the same Publish and Consume handlers through a Unix socket (local_link) instead.

- Publish: each message arrives once with the names of its destination queues here; it is
  enqueued to each (copies share the body), and its result goes back once the node would confirm
  it itself: at once, or when the ledger token its store batch took is committed (the stream
  watches the ledger like a channel does). A congested queue pauses reading the stream, which is
  how a publisher on another node gets back-pressure.
- Consume: one stream per remote subscription; `RemoteConsumer` is the queue's `Consumer`. It
  takes deliveries while it has credit (the remote consumer's prefetch, topped up as the remote
  side settles or hands them on), gathers them per loop turn into one write, and holds those that
  await settlement by queue seq. When the stream ends, however it ends, what it still holds is
  released back to the queue (redelivered).
- Get/Settle: a basic.get that awaits settlement is held for the calling node until settled, and
  released when that node's last Publish stream (its session with this node) ends.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import defaultdict
from typing import Any

import grpc

from merpati.node.core.message import Message
from merpati.node.core.outcome import Modified, Outcome
from merpati.node.core.queue import QueueHandle
from merpati.node.core.reply_to import PREFIX as REPLY_PREFIX
from merpati.node.management.rates import node_counter_values
from merpati.proto.merpati.v1 import forwarding_pb2 as pb
from merpati.proto.merpati.v1 import forwarding_pb2_grpc as pb_grpc

from ._common import AUTH_KEY, NODE_KEY, SECURITY, SERVER_OPTIONS, auth_token
from .local_link import LinkServer
from .packing import PackingError, pack_deliveries, unpack_published

log = logging.getLogger("merpati.forwarding")

# How long a request for a queue this node does not know yet waits for the metadata to catch up.
CATCH_UP = 2.0

OUTCOMES = {
    pb.ACCEPTED: Outcome.ACCEPTED,
    pb.REJECTED: Outcome.REJECTED,
    pb.RELEASED: Outcome.RELEASED,
    pb.MODIFIED: Outcome.MODIFIED,
}


def delivery_of(msg: Message) -> pb.Delivery:
    return pb.Delivery(
        seq=msg.seq,
        content=pb.Content(route=msg.route_raw, props=msg.props_raw, body=msg.body),
        redelivered=msg.redelivered,
        delivery_count=msg.delivery_count,
    )


def settle_all(q: Any, held: dict[int, Message], settlement: pb.Settlement, consumer: Any) -> None:
    outcome = OUTCOMES.get(settlement.outcome)
    if outcome is None:
        return
    modified = None
    if outcome is Outcome.MODIFIED:
        modified = Modified(
            settlement.delivery_failed, settlement.undeliverable_here, consumer=consumer
        )
    for seq in settlement.seqs:
        msg = held.pop(seq, None)
        if msg is not None:
            q.settle(msg, outcome, modified)


class ServerCounters:
    """What the server received: the tests and the benchmark read these."""

    __slots__ = ("publish_batches", "publish_messages", "publish_bytes", "deliveries")

    def __init__(self) -> None:
        self.publish_batches = 0
        self.publish_messages = 0
        self.publish_bytes = 0  # body bytes received (each message's body counted once)
        self.deliveries = 0


class ForwardingServer(pb_grpc.ForwardingServicer):
    def __init__(
        self, broker: Any, node_id: str, secret: str | bytes | None = None, moves: Any = None
    ) -> None:
        self.broker = broker
        self.node_id = node_id
        self.moves = moves  # cluster.queue_moves.QueueMoves: the handovers PurgeHandover reaches
        self._token = auth_token(secret)
        self.counters = ServerCounters()
        self._server: grpc.aio.Server | None = None
        self._link: LinkServer | None = None
        # Other services served on the same port (cluster.replication's), each with register().
        self.extra: list[Any] = []
        # Unsettled basic.get deliveries per calling node: (vhost, queue, seq) -> (queue, msg).
        self._gets: dict[str, dict[tuple[str, str, int], tuple[Any, Message]]] = defaultdict(dict)
        self._sessions: dict[str, int] = defaultdict(int)  # open Publish streams per node
        self._streams: set[Any] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, bind_host: str, port: int, link_path: str = "") -> int:
        """Listen on host:port (0 = any free port), and serve the streams on the Unix socket
        `link_path` too when given (local_link); returns the port."""
        if link_path:
            # Before the gRPC port: a peer that sees this node up finds the socket there.
            self._link = LinkServer(
                {
                    "Publish": (pb.PublishBatch, self.Publish),
                    "Consume": (pb.ConsumeRequest, self.Consume),
                }
            )
            await self._link.start(link_path)
        server = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_ForwardingServicer_to_server(self, server)
        for servicer in self.extra:
            servicer.register(server)
        host = f"[{bind_host}]" if ":" in bind_host and not bind_host.startswith("[") else bind_host
        bound = SECURITY.listen(server, f"{host}:{port}")
        if not bound:
            raise OSError(f"cannot listen for cluster traffic on {bind_host}:{port}")
        await server.start()
        self._server = server
        return bound

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            await link.stop()
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
        for stream in list(self._streams):
            stream.close()

    # -- helpers --------------------------------------------------------------------------------

    async def _caller(self, context: grpc.aio.ServicerContext) -> str:
        """The calling node's id, once its token checks out (else the call ends UNAUTHENTICATED)."""
        md = context.invocation_metadata() or ()
        node = ""
        token = ""
        for key, value in md:
            if key == NODE_KEY:
                node = value
            elif key == AUTH_KEY:
                token = value
        if self._token and not hmac.compare_digest(
            token.encode("ascii", "replace"), self._token.encode("ascii")
        ):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong or missing cluster secret")
        return node

    def _current(self, vhost: str, name: str) -> bool:
        """True when waiting cannot change what this node knows of the queue: it leads it, or it
        has handed it over to another node (a caller still sending here is the one behind)."""
        if name.startswith(REPLY_PREFIX):
            return True  # a direct reply-to name: never in the metadata, nothing to wait for
        q = (self.broker.queues.get(vhost) or {}).get(name)
        if q is not None and q.led_here:
            return True
        qdef = self.broker.state.queue(vhost, name)
        return qdef is not None and self.node_id in qdef.handing_over

    async def catch_up(self, vhost: str, names: Any) -> None:
        """Wait (briefly) for metadata this node has not applied yet: a queue declared through
        another node, or moved here, is committed there first, and its first messages may
        arrive before this node applied the declaration or the move."""
        deadline = None
        while True:
            if all(self._current(vhost, name) for name in names):
                return
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + CATCH_UP
            elif loop.time() > deadline:
                return  # deleted meanwhile, or never there: the caller answers for it
            await asyncio.sleep(0.005)

    async def _local(self, context: grpc.aio.ServicerContext, ref: pb.QueueRef) -> QueueHandle:
        await self.catch_up(ref.vhost, (ref.queue,))
        q = self.broker.queue(ref.vhost, ref.queue)
        if q is not None and q.led_here and not q.deleted:
            return q
        if q is None:
            text = f"no queue '{ref.queue}' in vhost '{ref.vhost}'"
        else:
            text = f"queue '{ref.queue}' in vhost '{ref.vhost}' is not led by node '{self.node_id}'"
        await context.abort(grpc.StatusCode.NOT_FOUND, text)
        raise AssertionError("unreachable")

    # -- publish --------------------------------------------------------------------------------

    async def Publish(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
        node = await self._caller(context)
        stream = _PublishStream(self, node)
        self._sessions[node] += 1
        self._streams.add(stream)
        reader = asyncio.ensure_future(stream.read(request_iterator))
        reader.add_done_callback(stream.reader_done)
        try:
            out = stream.out
            while True:
                item = await out.get()
                if item is None:
                    break
                yield item
        finally:
            reader.cancel()
            stream.close()
            self._streams.discard(stream)
            self._sessions[node] -= 1
            if self._sessions[node] <= 0:
                del self._sessions[node]
                self._release_gets(node)

    # -- consume --------------------------------------------------------------------------------

    async def Consume(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
        await self._caller(context)
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        sub = first.subscribe
        q = await self._local(context, sub.queue)
        if q.has_exclusive_consumer() or (sub.exclusive and q.consumer_count):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"queue '{q.name}' in vhost '{q.vhost}' in exclusive use",
            )
        consumer = RemoteConsumer(self, q, sub)
        self._streams.add(consumer)
        consumer.out.put_nowait(pb.ConsumeEvent(subscribed=True))
        q.subscribe(consumer)
        consumer.apply(first, subscribe=False)
        reader = asyncio.ensure_future(consumer.read(it))
        reader.add_done_callback(consumer.reader_done)
        try:
            out = consumer.out
            while True:
                item = await out.get()
                if item is None:
                    break
                yield item
        finally:
            reader.cancel()
            consumer.close()
            self._streams.discard(consumer)

    # -- get, settle, purge, stats, ping --------------------------------------------------------

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:  # noqa: N802
        node = await self._caller(context)
        q = await self._local(context, request.queue)
        msg, remaining = await q.get(request.ack)
        if msg is None:
            return pb.GetResponse(found=False, remaining=remaining)
        if request.ack:
            self._gets[node][(q.vhost, q.name, msg.seq)] = (q, msg)
        return pb.GetResponse(found=True, delivery=delivery_of(msg), remaining=remaining)

    async def Settle(self, request: pb.SettleRequest, context: Any) -> pb.SettleResponse:  # noqa: N802
        node = await self._caller(context)
        if request.earlier:
            ref = request.queue
            q = (self.broker.queues.get(ref.vhost) or {}).get(ref.queue)
            settlement = request.settlement
            outcome = OUTCOMES.get(settlement.outcome)
            if q is not None and outcome is not None:
                modified = None
                if outcome is Outcome.MODIFIED:
                    modified = Modified(settlement.delivery_failed, settlement.undeliverable_here)
                q.settle_earlier(list(settlement.seqs), outcome, modified)
            return pb.SettleResponse()
        gets = self._gets.get(node)
        if gets:
            ref = request.queue
            held: dict[int, Message] = {}
            q = None
            for seq in request.settlement.seqs:
                entry = gets.pop((ref.vhost, ref.queue, seq), None)
                if entry is not None:
                    q, held[seq] = entry
            if q is not None:
                settle_all(q, held, request.settlement, None)
        return pb.SettleResponse()

    def _release_gets(self, node: str) -> None:
        gets = self._gets.pop(node, None)
        if not gets:
            return
        by_queue: dict[int, tuple[Any, list[Message]]] = {}
        for q, msg in gets.values():
            by_queue.setdefault(id(q), (q, []))[1].append(msg)
        for q, msgs in by_queue.values():
            q.release_many(msgs)

    async def Purge(self, request: pb.QueueRef, context: Any) -> pb.PurgeResponse:  # noqa: N802
        await self._caller(context)
        q = await self._local(context, request)
        return pb.PurgeResponse(purged=await q.purge())

    async def PurgeHandover(self, request: pb.QueueRef, context: Any) -> pb.PurgeResponse:  # noqa: N802
        await self._caller(context)
        purged = (
            self.moves.purge_handover(request.vhost, request.queue)
            if self.moves is not None
            else None
        )
        if purged is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"node '{self.node_id}' hands nothing of queue '{request.queue}' in vhost "
                f"'{request.vhost}' over",
            )
        return pb.PurgeResponse(purged=purged)

    async def Stats(self, request: pb.QueueRef, context: Any) -> pb.StatsResponse:  # noqa: N802
        await self._caller(context)
        q = await self._local(context, request)
        messages, consumers = await q.stats()
        return pb.StatsResponse(messages=messages, consumers=consumers)

    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingResponse:  # noqa: N802
        await self._caller(context)
        # The pings every peer sends each second carry this node's connection counts back, so
        # vhost and user limits count the whole cluster without a call of their own; and this
        # node's own alarms only: each node learns every other's by pinging it, so a relayed
        # alarm could outlive the node that raised it.
        counts = self.broker.connection_counts()
        return pb.PingResponse(
            node_id=self.node_id,
            vhost_connections=counts.vhost_connections,
            user_connections=counts.user_connections,
            user_channels=counts.user_channels,
            alarms=sorted(self.broker.alarms.local),
            # Read from the counters the hot path bumps anyway: the peers' UI shows our rates.
            message_counters=node_counter_values(self.broker.counters, self.broker.led_depth),
        )

    async def ClientViews(  # noqa: N802
        self, request: pb.ClientViewsRequest, context: Any
    ) -> pb.ClientViewsResponse:
        await self._caller(context)
        views = self.broker.client_views
        try:
            items = views.list(request.kind) if views is not None else []
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.ClientViewsResponse(json=json.dumps(items).encode())

    async def CloseConnection(  # noqa: N802
        self, request: pb.CloseConnectionRequest, context: Any
    ) -> pb.CloseConnectionResponse:
        await self._caller(context)
        views = self.broker.client_views
        closed = views is not None and views.close(request.name, request.reason)
        return pb.CloseConnectionResponse(closed=closed)


class _PublishStream:
    """One Publish stream: enqueues what arrives, answers per message (a LedgerWatcher)."""

    def __init__(self, server: ForwardingServer, node: str) -> None:
        self.server = server
        self.node = node
        self.out: asyncio.Queue = asyncio.Queue()
        self.pending: list[tuple[int, int]] = []  # (message id, ledger token), tokens increasing
        store = server.broker.store
        self.ledger = store.ledger if store is not None else None
        self.blocked_by: set[object] = set()
        self._resume: asyncio.Future | None = None
        self.closed = False

    async def read(self, request_iterator: Any) -> None:
        queues = self.server.broker.queues
        async for batch in request_iterator:
            try:
                records = list(unpack_published(batch.packed))
            except PackingError as e:
                log.warning("publish stream from %s: %s; closing it", self.node, e)
                return  # the caller sees the stream end and fails what it had in flight
            for _mid, vhost, names, _msg in records:
                vq = queues.get(vhost)
                for name in names:
                    q = vq.get(name) if vq is not None else None
                    if (q is None or not q.led_here) and not name.startswith(REPLY_PREFIX):
                        await self.server.catch_up(vhost, names)
                        break
            self.enqueue(records)
            if self.blocked_by:
                # A queue fed by this stream is congested: stop reading until it drains.
                self._resume = asyncio.get_running_loop().create_future()
                await self._resume

    def reader_done(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.debug("publish stream from %s ended: %s", self.node, task.exception())
        self.out.put_nowait(None)

    def enqueue(self, records: list[tuple[int, str, tuple[str, ...], Message]]) -> None:
        broker = self.server.broker
        counters = self.server.counters
        counters.publish_batches += 1
        confirmed: list[int] = []
        rejected: list[int] = []
        ledger = self.ledger
        queues = broker.queues
        error = ""
        for mid, vhost, names, msg in records:
            counters.publish_messages += 1
            counters.publish_bytes += len(msg.body)
            vq = queues.get(vhost)
            targets = []
            refused = False
            for name in names:
                q = vq.get(name) if vq else None
                if q is None:
                    # A reply to a direct reply-to consumer here (gone: dropped, as RabbitMQ),
                    # or a queue deleted meanwhile: routed nowhere, as in RabbitMQ.
                    q = broker.reply_queues.get(name)
                    if q is None:
                        continue
                if not q.led_here:
                    # Moved to another node. Never forward a forwarded message: two nodes with
                    # different views of a move would pass it back and forth, each confirm
                    # waiting (the ledger confirms in order) on the other's.
                    refused = True
                    error = (
                        f"queue '{name}' in vhost '{vhost}' is no longer led by node "
                        f"'{self.server.node_id}' (it moved to '{q.leader}')"
                    )
                    continue
                targets.append(q)
            epoch = broker.enqueue(targets, msg, True, self) if targets else 0
            if epoch < 0:
                refused, epoch = True, 0
            if not mid:
                continue  # its publisher wants no confirm
            if refused:
                rejected.append(mid)
            elif epoch and ledger is not None and epoch > ledger.committed:
                self.pending.append((mid, epoch))
            elif epoch and ledger is not None and ledger.did_fail(epoch):
                rejected.append(mid)  # resolved already: a replica refused it at once
                error = ledger.last_error or error
            else:
                confirmed.append(mid)
        if self.pending and ledger is not None:
            ledger.watchers.add(self)
        if confirmed or rejected:
            self.out.put_nowait(
                pb.PublishResults(confirmed=confirmed, rejected=rejected, error=error)
            )

    # LedgerWatcher
    def store_committed(self, committed: int, failed: frozenset[int]) -> None:
        pending = self.pending
        if not pending or pending[0][1] > committed:
            return
        confirmed: list[int] = []
        rejected: list[int] = []
        keep = []
        for mid, token in pending:
            if token > committed:
                keep.append((mid, token))
            elif token in failed:
                rejected.append(mid)
            else:
                confirmed.append(mid)
        self.pending = keep
        if not keep and self.ledger is not None:
            self.ledger.watchers.discard(self)
        if not self.closed:
            error = (self.ledger.last_error or "") if rejected and self.ledger else ""
            self.out.put_nowait(
                pb.PublishResults(confirmed=confirmed, rejected=rejected, error=error)
            )

    # FlowControlled
    def flow_blocked(self, queue: object) -> None:
        self.blocked_by.add(queue)

    def flow_unblocked(self, queue: object) -> None:
        self.blocked_by.discard(queue)
        if not self.blocked_by and self._resume is not None and not self._resume.done():
            self._resume.set_result(None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.ledger is not None:
            self.ledger.watchers.discard(self)
        self.pending = []
        self.out.put_nowait(None)


class RemoteConsumer:
    """The queue's Consumer standing for a consumer on another node (one Consume stream)."""

    # When a replicated queue's leadership moves, the consumer's own node subscribes it to the
    # new leader: this stand-in must not follow (it would be a second, ghost subscription).
    on_other_node = True

    def __init__(self, server: ForwardingServer, q: QueueHandle, sub: pb.Subscribe) -> None:
        self.server = server
        self.q = q
        self.tag = sub.consumer_tag
        self.exclusive = sub.exclusive
        self.priority = sub.priority
        self.no_ack = sub.no_ack
        self.window = sub.window
        self.credit = 0
        self.held: dict[int, Message] = {}  # delivered, awaiting settlement, by queue seq
        self.out: asyncio.Queue = asyncio.Queue()
        self._batch: list[Message] = []
        self._loop = asyncio.get_running_loop()
        self.subscribed = True
        self.closed = False

    # Consumer
    def can_take(self) -> bool:
        return self.credit > 0 and self.subscribed

    def deliver(self, queue: Any, msg: Message) -> bool:
        self.credit -= 1
        batch = self._batch
        if not batch:
            self._loop.call_soon(self._flush)
        batch.append(msg)
        if self.no_ack:
            return False
        self.held[msg.seq] = msg
        return True

    def cancelled(self, queue: Any, reason: str) -> None:
        self.subscribed = False
        self._flush()
        self.held.clear()  # the queue is gone: nothing to release to
        if not self.closed:
            self.out.put_nowait(pb.ConsumeEvent(cancelled=reason))

    def backpressured(self) -> bool:
        # Out of window credit: the consumer's node has not handed on what it got (a prefetch
        # running out is the consumer's own pace, not back-pressure).
        return self.window and self.credit <= 0

    # the stream
    def _flush(self) -> None:
        batch = self._batch
        if not batch:
            return
        self._batch = []
        self.server.counters.deliveries += len(batch)
        if not self.closed:
            self.out.put_nowait(pb.ConsumeEvent(deliveries=pack_deliveries(batch)))

    async def read(self, it: Any) -> None:
        async for req in it:
            self.apply(req)

    def apply(self, req: pb.ConsumeRequest, subscribe: bool = True) -> None:
        q = self.q
        if not subscribe and req.subscribe.credit:
            self.credit += req.subscribe.credit
        for settlement in req.settlements:
            settle_all(q, self.held, settlement, self)
        if req.credit:
            self.credit += req.credit
        if req.cancel and self.subscribed:
            self.subscribed = False
            q.unsubscribe(self)
        elif self.subscribed and (req.credit or req.settlements or not subscribe):
            q.kick()

    def reader_done(self, task: asyncio.Future) -> None:
        self.close()

    def close(self) -> None:
        """The stream ended: stop, and release whatever the other side had not settled."""
        if self.closed:
            return
        self.closed = True
        self._batch = []
        q = self.q
        if self.subscribed:
            self.subscribed = False
            q.unsubscribe(self)
        held, self.held = self.held, {}
        if held and not q.deleted:
            q.release_later(sorted(held.values(), key=_seq))
        self.out.put_nowait(None)


def _seq(msg: Message) -> int:
    return msg.seq
