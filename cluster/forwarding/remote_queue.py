"""`RemoteQueue`: the QueueHandle of a queue another node leads (the seam in node/core/queue.py).

Theory of operation: publishes go through the peer's batched Publish stream (client.Peer) and
return a ledger token resolved by the peer's confirm. Each local consumer gets a Consume stream
(`_Subscription`): deliveries arrive in batches into a small buffer and are handed to the
consumer while it `can_take`; credit goes back to the leader as room appears — on settlement for a
consumer with a prefetch (so the leader sees exactly `prefetch` outstanding, as RabbitMQ's
fairness expects), on hand-off for one without (a window of DEFAULT_WINDOW). Settlements and
credit gathered in a loop turn go out as one write. After a cancel the stream stays open until
every delivery the consumer still holds is settled, then half-closes; the leader releases
whatever was left when a stream ends any other way.

basic.get, purge and stats answer with futures; errors are MetadataErrors (404 when the leader is
down), which the channel closes with.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import grpc

from merpati.node.core.message import Message
from merpati.node.core.outcome import Modified, Outcome
from merpati.node.core.queue import REJECTED
from merpati.node.metadata.state import MetadataError
from merpati.proto.merpati.v1 import forwarding_pb2 as pb

from ._common import down_text, metadata_error, quiet
from .packing import PackingError, unpack_deliveries

# Credit for a consumer without a prefetch (no_ack, or prefetch 0), topped up on hand-off.
DEFAULT_WINDOW = 2000

PB_OUTCOME = {
    Outcome.ACCEPTED: pb.ACCEPTED,
    Outcome.REJECTED: pb.REJECTED,
    Outcome.RELEASED: pb.RELEASED,
    Outcome.MODIFIED: pb.MODIFIED,
}


def message_of(d: pb.Delivery) -> Message:
    c = d.content
    msg = Message.from_stored(c.route, c.props, c.body)
    msg.seq = d.seq
    msg.redelivered = d.redelivered
    msg.delivery_count = d.delivery_count
    return msg


class RemoteQueue:
    """A queue led by node `leader`, reached through `links` (the wiring's peer registry)."""

    led_here = False
    deleting = None  # auto-delete is the leader's business
    counts_requeues = False  # see cluster.replication.remote for a quorum queue's handle

    def __init__(self, vhost: str, name: str, leader: str, links: Any) -> None:
        self.vhost = vhost
        self.name = name
        self.leader = leader
        self.links = links
        self.deleted = False
        self.congested = False  # set from the peer's state on each publish
        self.message_count = 0  # as of the last stats() answer (a hint, never awaited)
        self.unacked = 0
        self._subs: dict[int, _Subscription] = {}  # id(consumer) -> subscription
        # Deliveries held by consumers here, by queue seq: (subscription or None for a get, msg).
        self.outstanding: dict[int, tuple[_Subscription | None, Message]] = {}
        self._peer: Any = None
        self._attach()

    # -- the peer -------------------------------------------------------------------------------

    def _attach(self) -> Any:
        peer = self.links.peer(self.leader)
        if peer is not self._peer:
            if self._peer is not None:
                self._peer.queues.discard(self)
            self._peer = peer
            if peer is not None and not self.deleted:
                peer.queues.add(self)
        return peer

    def _live_peer(self) -> Any:
        peer = self._peer
        if peer is None or peer.closed:
            peer = self._attach()
        if peer is None or peer.down or peer.closed:
            return None
        return peer

    def _down_error(self) -> MetadataError:
        return MetadataError(404, down_text(self.vhost, self.name, self.leader))

    def _failed(self, error: MetadataError) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(error)
        return fut

    def peer_down(self, peer: Any) -> None:
        """The leader went away: cancel every consumer, as RabbitMQ does for a classic queue (a
        replicated queue's handle keeps them for the new leader: `leader_lost`)."""
        reason = f"node '{self.leader}' is down"
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            sub.close()
            self.leader_lost(sub.consumer, reason)
        self.outstanding.clear()
        self.unacked = 0
        self.congested = False

    def peer_up(self, peer: Any) -> None:
        """The leader is reachable again (its consumers here were cancelled: nothing to do)."""

    # -- publishing -----------------------------------------------------------------------------

    def leader_lost(self, consumer: Any, reason: str) -> None:
        """A consumer's leader is gone."""
        consumer.cancelled(self, reason)

    def enqueue_without_leader(self, msg: Message, confirm: bool) -> int:
        """A publish while the leader is unreachable: refused (the publisher gets a nack)."""
        return REJECTED

    def subscribe_without_leader(self, consumer: Any) -> None:
        """A consumer while the leader is unreachable: cancelled at once."""
        reason = f"node '{self.leader}' is down"
        asyncio.get_running_loop().call_soon(consumer.cancelled, self, reason)

    def enqueue(self, msg: Message, confirm: bool = True) -> int:
        peer = self._live_peer()
        if self.deleted:
            return REJECTED
        if peer is None:
            return self.enqueue_without_leader(msg, confirm)
        token = peer.publish(self.vhost, self.name, msg, confirm)
        self.congested = peer.congested
        return token

    def block_publisher(self, publisher: Any) -> None:
        peer = self._peer
        if peer is not None and peer.congested:
            peer.block(publisher, self)

    # -- consuming ------------------------------------------------------------------------------

    @property
    def consumers(self) -> list[Any]:
        return [s.consumer for s in self._subs.values() if s.active]

    @property
    def consumer_count(self) -> int:
        return sum(1 for s in self._subs.values() if s.active)

    def has_exclusive_consumer(self) -> bool:
        return any(s.consumer.exclusive for s in self._subs.values() if s.active)

    def subscribe(self, consumer: Any) -> None:
        peer = self._live_peer()
        if self.deleted:
            asyncio.get_running_loop().call_soon(consumer.cancelled, self, "queue deleted")
            return
        if peer is None:
            self.subscribe_without_leader(consumer)
            return
        sub = _Subscription(self, peer, consumer)
        self._subs[id(consumer)] = sub
        sub.start()

    def unsubscribe(self, consumer: Any) -> None:
        sub = self._subs.pop(id(consumer), None)
        if sub is not None:
            sub.cancel()

    def kick(self) -> None:
        for sub in list(self._subs.values()):
            if sub.buffer:
                sub.drain()

    # -- settlement -----------------------------------------------------------------------------

    def settle(self, msg: Message, outcome: Outcome, modified: Modified | None = None) -> None:
        entry = self.outstanding.get(msg.seq)
        if entry is None or entry[1] is not msg:
            return  # its stream is gone: the leader released it already
        del self.outstanding[msg.seq]
        self.unacked -= 1
        sub = entry[0]
        if sub is not None:
            sub.settled(msg.seq, outcome, modified)
            return
        peer = self._live_peer()
        if peer is None:
            return
        req = pb.SettleRequest(
            queue=pb.QueueRef(vhost=self.vhost, queue=self.name),
            settlement=_settlement([msg.seq], outcome, modified),
        )
        task = asyncio.ensure_future(peer.call("Settle", req))
        task.add_done_callback(quiet)

    def release_many(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self.settle(msg, Outcome.RELEASED)

    def settle_earlier(
        self, seqs: list[int], outcome: Outcome, modified: Modified | None = None
    ) -> None:
        peer = self._live_peer()
        if peer is None:
            return
        req = pb.SettleRequest(
            queue=pb.QueueRef(vhost=self.vhost, queue=self.name),
            settlement=_settlement(seqs, outcome, modified),
            earlier=True,
        )
        task = asyncio.ensure_future(peer.call("Settle", req))
        task.add_done_callback(quiet)

    # -- get, purge, stats ----------------------------------------------------------------------

    def _ask(self, name: str, request: Any, convert: Any) -> asyncio.Future:
        peer = self._live_peer()
        if peer is None:
            return self._failed(self._down_error())
        loop = asyncio.get_running_loop()
        out = loop.create_future()

        async def run() -> None:
            try:
                resp = await peer.call(name, request)
            except Exception as e:  # noqa: BLE001 - every failure becomes a MetadataError
                if isinstance(e, grpc.aio.AioRpcError) and e.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    peer.stream_broke(f"{e.code().name}: {e.details()}")
                if not out.done():
                    out.set_exception(metadata_error(e, self.vhost, self.name, self.leader))
                return
            if not out.done():
                try:
                    out.set_result(convert(resp))
                except Exception as e:  # noqa: BLE001
                    out.set_exception(e)

        asyncio.ensure_future(run())
        return out

    def _ref(self) -> pb.QueueRef:
        return pb.QueueRef(vhost=self.vhost, queue=self.name)

    def get(self, ack_required: bool) -> asyncio.Future:
        """A future of (message or None, messages remaining)."""

        def convert(resp: pb.GetResponse) -> tuple[Message | None, int]:
            self.message_count = resp.remaining
            if not resp.found:
                return None, resp.remaining
            msg = message_of(resp.delivery)
            if ack_required:
                self.outstanding[msg.seq] = (None, msg)
                self.unacked += 1
            return msg, resp.remaining

        return self._ask("Get", pb.GetRequest(queue=self._ref(), ack=ack_required), convert)

    def purge(self) -> asyncio.Future:
        def convert(resp: pb.PurgeResponse) -> int:
            self.message_count = 0
            return resp.purged

        return self._ask("Purge", self._ref(), convert)

    def stats(self) -> asyncio.Future:
        """A future of (messages ready, consumers)."""

        def convert(resp: pb.StatsResponse) -> tuple[int, int]:
            self.message_count = resp.messages
            return resp.messages, resp.consumers

        return self._ask("Stats", self._ref(), convert)

    # -- what the leader does itself -----------------------------------------------------------

    def touch(self) -> None:
        """x-expires runs on the leader, which a declaration or basic.get through it restarts."""

    def configure(self, options: Any) -> None:
        """Policies apply on the leader (which applies the same metadata)."""

    # -- deletion -------------------------------------------------------------------------------

    def delete(self, reason: str) -> int:
        """The queue was deleted or moved (metadata): cancel the consumers here, close their
        streams (the leader releases what they held). basic.get deliveries stay settleable: the
        leader holds them for this node, and after a move hands an ack or requeue on."""
        self.deleted = True
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            sub.close()
            sub.consumer.cancelled(self, reason)
        self.outstanding = {seq: e for seq, e in self.outstanding.items() if e[0] is None}
        self.unacked = len(self.outstanding)
        if self._peer is not None:
            self._peer.queues.discard(self)
        n, self.message_count = self.message_count, 0
        return n


class _Subscription:
    """One local consumer of a remote queue: a Consume stream."""

    def __init__(self, rq: RemoteQueue, peer: Any, consumer: Any) -> None:
        self.rq = rq
        self.peer = peer
        self.consumer = consumer
        prefetch = getattr(consumer, "prefetch", 0) or 0
        self.no_ack = bool(getattr(consumer, "no_ack", False))
        # Credit returns on settlement when the consumer has a prefetch, else on hand-off.
        self.on_settle = prefetch > 0 and not self.no_ack
        self.window = prefetch if self.on_settle else DEFAULT_WINDOW
        self.buffer: deque[Message] = deque()
        self.held = 0  # deliveries handed to the consumer, not yet settled
        self.active = True  # not cancelled
        self.closed = False
        self._requests: asyncio.Queue = asyncio.Queue()
        self._credit = 0
        self._settlements: dict[tuple, list[int]] = {}
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        c = self.consumer
        self._requests.put_nowait(
            pb.ConsumeRequest(
                subscribe=pb.Subscribe(
                    queue=pb.QueueRef(vhost=self.rq.vhost, queue=self.rq.name),
                    consumer_tag=c.tag,
                    exclusive=bool(getattr(c, "exclusive", False)),
                    priority=int(getattr(c, "priority", 0) or 0),
                    credit=self.window,
                    no_ack=self.no_ack,
                    window=not self.on_settle,
                )
            )
        )
        self._task = asyncio.ensure_future(self._run())

    async def _requests_iter(self) -> Any:
        q = self._requests
        while True:
            req = await q.get()
            if req is None:
                return
            yield req

    async def _run(self) -> None:
        reason = ""
        try:
            call = self.peer.consume(self._requests_iter())
            async for ev in call:
                kind = ev.WhichOneof("kind")
                if kind == "deliveries":
                    self.buffer.extend(unpack_deliveries(ev.deliveries))
                    self.drain()
                elif kind == "cancelled":
                    reason = ev.cancelled or "queue deleted"
                    break
        except asyncio.CancelledError:
            return
        except PackingError as e:
            reason = f"node '{self.rq.leader}' sent a malformed delivery batch: {e}"
            self.peer.stream_broke(reason)
        except grpc.aio.AioRpcError as e:
            if self.closed:
                return
            code = e.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                reason = e.details() or code.name
            else:
                reason = f"node '{self.rq.leader}' is down"
                self.peer.stream_broke(f"{code.name}: {e.details()}")
        if self.closed:
            return
        # The stream ended without our asking: the consumer is no longer subscribed.
        self.close()
        if self.rq._subs.get(id(self.consumer)) is self:
            del self.rq._subs[id(self.consumer)]
            self.consumer.cancelled(self.rq, reason or f"node '{self.rq.leader}' closed the stream")

    def drain(self) -> None:
        """Hand buffered deliveries to the consumer while it has room."""
        if not self.active or self.closed:
            return
        buffer = self.buffer
        consumer = self.consumer
        rq = self.rq
        handed = 0
        while buffer and consumer.can_take():
            msg = buffer.popleft()
            handed += 1
            if consumer.deliver(rq, msg):
                rq.outstanding[msg.seq] = (self, msg)
                rq.unacked += 1
                self.held += 1
        if handed and not self.on_settle:
            self._add_credit(handed)

    def settled(self, seq: int, outcome: Outcome, modified: Modified | None) -> None:
        self.held -= 1
        if self.closed:
            return
        key = (
            outcome,
            modified.delivery_failed if modified else False,
            modified.undeliverable_here if modified else False,
        )
        self._settlements.setdefault(key, []).append(seq)
        if self.on_settle and self.active:
            self._credit += 1
        self._schedule()
        if not self.active and self.held <= 0:
            self._finish()

    def _add_credit(self, n: int) -> None:
        self._credit += n
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or (not self._credit and not self._settlements):
            return
        req = pb.ConsumeRequest(credit=self._credit)
        for (outcome, failed, here), seqs in self._settlements.items():
            req.settlements.append(
                pb.Settlement(
                    seqs=seqs,
                    outcome=PB_OUTCOME[outcome],
                    delivery_failed=failed,
                    undeliverable_here=here,
                )
            )
        self._credit = 0
        self._settlements = {}
        self._requests.put_nowait(req)

    def cancel(self) -> None:
        """basic.cancel: no more deliveries; what the consumer holds can still be settled."""
        if not self.active:
            return
        self.active = False
        self._credit = 0
        # Buffered deliveries never reached the consumer: back to the leader.
        undelivered = [m.seq for m in self.buffer]
        self.buffer.clear()
        if undelivered:
            self._settlements.setdefault((Outcome.RELEASED, False, False), []).extend(undelivered)
        self._flush()
        if not self.closed:
            self._requests.put_nowait(pb.ConsumeRequest(cancel=True))
        if self.held <= 0:
            self._finish()

    def _finish(self) -> None:
        """Nothing is left to settle: half-close; the leader ends the stream."""
        self._flush()
        if not self.closed:
            self._requests.put_nowait(None)

    def close(self) -> None:
        """Drop the stream now (leader down, queue deleted): the leader releases what is held."""
        if self.closed:
            return
        self.closed = True
        self.active = False
        self.buffer.clear()
        for seq in [s for s, (sub, _m) in self.rq.outstanding.items() if sub is self]:
            del self.rq.outstanding[seq]
            self.rq.unacked -= 1
        self._requests.put_nowait(None)
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()


def _settlement(seqs: list[int], outcome: Outcome, modified: Modified | None) -> pb.Settlement:
    return pb.Settlement(
        seqs=seqs,
        outcome=PB_OUTCOME[outcome],
        delivery_failed=bool(modified and modified.delivery_failed),
        undeliverable_here=bool(modified and modified.undeliverable_here),
    )
