"""AMQP 1.0 sessions, mapped onto the broker core.

A `Session` keeps the session's flow-control windows (counted in transfer frames), the links
attached on it by handle, the deliveries it sent and that await the client's settlement (by
delivery-id), and the publishes whose `accepted` waits for a store commit (as 0-9-1 confirms do).

The links themselves (`SenderLink`: the node sends from a queue; `ReceiverLink`: the client
publishes) are in node.amqp10.links; the addresses their terminuses name are parsed in
node.amqp10.addresses.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from ..broker import generate_queue_name
from ..core.declare import DeclareError, check_queue_declare
from ..core.message import Message
from ..core.outcome import ACCEPTED, REJECTED, RELEASED, Modified, Outcome
from ..core.queue import QueueHandle
from ..metadata import commands as cmds
from ..metadata.state import MetadataError, QueueLimitExceeded
from . import links as L
from . import performatives as P
from .addresses import (
    BadAddress,
    declared_on_attach,
    exchange_source,
    parse_source,
    parse_target,
)
from .errors import LinkError10, SessionError10
from .links import MASK, ReceiverLink, SenderLink, _frame_head, _pB, _uint

if TYPE_CHECKING:
    from .connection import Connection10

log = logging.getLogger("merpati.amqp10")

# Transfer frames the client may send before we widen the window again.
INCOMING_WINDOW = 2048
OUTGOING_WINDOW = 2**31 - 1
HANDLE_MAX = 2**16 - 1


class Session:
    def __init__(self, conn: Connection10, channel: int, begin: Any) -> None:
        self.conn = conn
        self.broker = conn.broker
        self.channel = channel
        self.links: dict[int, Any] = {}
        self.refused: set[int] = set()  # handles of refused attaches, until the client detaches
        self.senders: list[SenderLink] = []
        # Our outgoing side.
        self.next_outgoing_id = 0
        self.next_delivery_id = 0
        self.remote_incoming_window = begin.incoming_window
        self.pending_frames: deque[bytes] = deque()  # transfer frames beyond the client's window
        # Our incoming side.
        self.next_incoming_id = begin.next_outgoing_id
        self.incoming_window = INCOMING_WINDOW
        self.remote_outgoing_window = begin.outgoing_window
        self.handle_max = min(
            HANDLE_MAX, begin.handle_max if begin.handle_max is not None else MASK
        )
        # delivery-id -> (queue, message, link) for our unsettled deliveries.
        self.unsettled: dict[int, tuple[QueueHandle, Message, SenderLink]] = {}
        # Incoming deliveries to settle: accepted ids batched, and those waiting for the store.
        self.accepts: list[int] = []
        self.pending: deque[tuple[int, int]] = deque()
        self.open = True
        # While an attach waits for the queue it declares: the session's later frames, in order
        # ((performative, body, offset, is a transfer)); the connection appends, `park` replays.
        self.parked: deque[tuple[Any, bytes, int, bool]] | None = None
        self._retrying = False  # attaching again after catching up with the cluster (once)
        # Links attached to a v1 exchange source: handle -> the link's own queue.
        self.source_queues: dict[int, str] = {}

    @property
    def vhost(self) -> str:
        return self.conn.vhost

    def send_begin(self) -> None:
        self.conn.send_frame(
            self.channel,
            P.Begin(
                remote_channel=self.channel,
                next_outgoing_id=self.next_outgoing_id,
                incoming_window=self.incoming_window,
                outgoing_window=OUTGOING_WINDOW,
                handle_max=self.handle_max,
            ),
        )

    def flow(self, link: Any = None, drain: bool = False, echo: bool = False) -> None:
        f = P.Flow(
            next_incoming_id=self.next_incoming_id,
            incoming_window=self.incoming_window,
            next_outgoing_id=self.next_outgoing_id,
            outgoing_window=OUTGOING_WINDOW,
        )
        if link is not None:
            f.handle = link.handle
            f.delivery_count = link.delivery_count
            f.link_credit = link.credit
            f.drain = drain or None
            f.echo = echo or None
            if isinstance(link, SenderLink):
                f.available = link.available()
        self.conn.send_frame(self.channel, f)

    # -- frames -------------------------------------------------------------------------------

    def on_frame(self, perf: Any, body: bytes, off: int) -> None:
        if isinstance(perf, P.Attach):
            self.on_attach(perf)
        elif isinstance(perf, P.Flow):
            self.on_flow(perf)
        elif isinstance(perf, P.Disposition):
            self.on_disposition(perf)
        elif isinstance(perf, P.Detach):
            self.on_detach(perf)
        elif isinstance(perf, P.Transfer):
            self.on_transfer(perf, body, off)
        else:
            raise SessionError10(
                "amqp:illegal-state", f"unexpected {type(perf).__name__.lower()} on a session"
            )

    def _link(self, handle: int, what: str) -> Any:
        link = self.links.get(handle)
        if link is None:
            raise SessionError10(
                "amqp:session:unattached-handle",
                f"{what} on handle {handle}, which is not attached",
            )
        return link

    def on_transfer(self, t: Any, body: bytes, off: int) -> None:
        link = self.links.get(t.handle)
        if link is None:
            raise SessionError10(
                "amqp:session:unattached-handle",
                f"transfer on handle {t.handle}, which is not attached",
            )
        if self.incoming_window <= 0:
            raise SessionError10(
                "amqp:session:window-violation", "transfer beyond the session's incoming window"
            )
        self.incoming_window -= 1
        self.next_incoming_id = (self.next_incoming_id + 1) & MASK
        if not isinstance(link, ReceiverLink):
            raise SessionError10(
                "amqp:session:errant-link", "transfer on a link on which the node is the sender"
            )
        if link.detached:
            return
        try:
            link.on_transfer(t, body, off)
        except LinkError10 as e:
            self.detach(link, e.condition, e.description)
        if self.incoming_window <= INCOMING_WINDOW // 2:
            self.incoming_window = INCOMING_WINDOW
            self.flow()

    def on_attach(self, a: Any) -> None:
        if a.handle in self.links or a.handle in self.refused:
            raise SessionError10("amqp:session:handle-in-use", f"handle {a.handle} is in use")
        if a.handle > self.handle_max:
            raise SessionError10(
                "amqp:not-allowed",
                f"handle {a.handle} exceeds handle-max {self.handle_max}",
            )
        declare = self._queue_to_declare(a)
        if declare is not None:
            self._declare_then_attach(a, declare)
            return
        if a.role and a.handle not in self.source_queues:
            source = self._exchange_source(a)
            if source is not None:
                self._subscribe_to_exchange(a, *source)
                return
        try:
            if a.role:  # the client receives: the node sends from a queue
                link: Any = self._attach_sender(a)
            else:
                link = self._attach_receiver(a)
        except LinkError10 as e:
            if e.condition == "amqp:not-found" and self._attach_when_caught_up(a):
                return
            self._refuse(a, e.condition, e.description)
            return
        except MetadataError as e:
            self._refuse(
                a,
                "amqp:unauthorized-access" if e.code == 403 else "amqp:precondition-failed",
                e.text,
            )
            return
        self.links[a.handle] = link

    # -- attaching to a queue that is declared on the way (v1 /queue/NAME, plain names) -------

    def _queue_to_declare(self, a: Any) -> str | None:
        terminus = a.source if a.role else a.target
        address = getattr(terminus, "address", None)
        if not isinstance(address, str):
            return None
        try:
            name = declared_on_attach(address)
        except BadAddress:
            return None  # the attach refuses it, saying why
        if name is None or self.broker.state.queue(self.vhost, name) is not None:
            return None
        return name

    def _declare_then_attach(self, a: Any, name: str) -> None:
        """Declare the queue (durable, as RabbitMQ 3.x does for /queue/NAME), then attach; the
        session's frames wait meanwhile (a Raft commit in a cluster)."""
        vhost = self.vhost
        try:
            check_queue_declare(vhost, name)
            self.broker.check(self.conn.user, vhost, "configure", "queue", name)
        except DeclareError as e:
            self._refuse(
                a, "amqp:unauthorized-access" if e.code == 403 else "amqp:invalid-field", e.text
            )
            return
        except MetadataError as e:
            self._refuse(a, "amqp:unauthorized-access", e.text)
            return
        cmd = self.broker.declare_queue(vhost, name, True)

        def declared(fut: Any) -> None:
            error = fut.exception() if not fut.cancelled() else MetadataError(541, "cancelled")
            if error is None:
                self.on_attach(a)
            elif isinstance(error, MetadataError):
                self._refuse(a, _declare_condition(error), error.text)
            else:
                self._refuse(a, "amqp:internal-error", f"cannot declare queue '{name}': {error}")

        self.park(self.broker.propose(cmd), declared)

    def _exchange_source(self, a: Any) -> tuple[str, str] | None:
        address = getattr(a.source, "address", None)
        if not isinstance(address, str):
            return None
        try:
            return exchange_source(address)
        except BadAddress:
            return None  # the attach refuses it, saying why

    def _subscribe_to_exchange(self, a: Any, exchange: str, key: str) -> None:
        """A v1 /exchange/NAME/KEY or /topic/KEY source, as RabbitMQ 3.x: a server-named queue
        of the link's own (exclusive to the connection, gone with the link), bound to the
        exchange with the key; the link then consumes from it."""
        vhost = self.vhost
        broker = self.broker
        if broker.state.exchange(vhost, exchange) is None:
            self._refuse(a, "amqp:not-found", f"no exchange '{exchange}' in vhost '{vhost}'")
            return
        try:
            broker.check(self.conn.user, vhost, "read", "exchange", exchange)
        except MetadataError as e:
            self._refuse(a, "amqp:unauthorized-access", e.text)
            return
        name = generate_queue_name()
        declare = broker.declare_queue(vhost, name, False, self.conn.id, True)
        bind = cmds.Bind(vhost, exchange, "q", name, key)

        def failed(fut: Any) -> bool:
            error = fut.exception() if not fut.cancelled() else MetadataError(541, "cancelled")
            if error is not None:
                if isinstance(error, MetadataError):
                    self._refuse(a, _declare_condition(error), error.text)
                else:
                    self._refuse(a, "amqp:precondition-failed", str(error))
            return error is not None

        def declared(fut: Any) -> None:
            if not failed(fut):
                self.conn.exclusive_queues.add(name)
                self.park(broker.propose(bind), bound)

        def bound(fut: Any) -> None:
            if not failed(fut):
                self.source_queues[a.handle] = name
                self.on_attach(a)

        self.park(broker.propose(declare), declared)

    def _attach_when_caught_up(self, a: Any) -> bool:
        """The address may name a queue or exchange another node created a moment ago
        (Broker.caught_up): attach once more when this node has applied what was committed
        before; a second not-found is the answer."""
        if self._retrying:
            return False
        fut = self.broker.caught_up()
        if fut is None:
            return False

        def again(_: Any) -> None:
            self._retrying = True
            try:
                self.on_attach(a)
            finally:
                self._retrying = False

        self.park(fut, again)
        return True

    def park(self, fut: Any, then: Any) -> None:
        """Hold the session's later frames until `fut` resolves and `then(fut)` ran."""
        self.parked = deque()

        def resume(f: Any) -> None:
            parked, self.parked = self.parked, None
            if not self.open:
                return
            then(f)
            conn = self.conn
            while parked and self.parked is None and self.open:
                conn.replay(self, parked.popleft())
            if parked and self.parked is not None:
                self.parked.extendleft(reversed(parked))
            conn.flush_soon()

        fut.add_done_callback(resume)

    def _refuse(self, a: Any, condition: str, description: str) -> None:
        """The spec's refusal: an attach with a null terminus, then a detach with the error."""
        self.refused.add(a.handle)
        reply = P.Attach(
            name=a.name,
            handle=a.handle,
            role=not a.role,
            source=None if a.role else a.source,
            target=a.target if a.role else None,
            initial_delivery_count=0 if a.role else None,
        )
        self.conn.send_frame(self.channel, reply)
        self.conn.send_frame(
            self.channel,
            P.Detach(handle=a.handle, closed=True, error=P.error(condition, description)),
        )

    def _attach_receiver(self, a: Any) -> ReceiverLink:
        target = a.target
        if isinstance(target, P.Coordinator) or (
            target is not None and not isinstance(target, P.Target)
        ):
            raise LinkError10("amqp:not-implemented", "transactions are not supported")
        address = target.address if target is not None else None
        exchange: str | None = None
        key: str | None = None
        if address is not None:
            if not isinstance(address, str):
                raise LinkError10("amqp:invalid-field", "target address is not a string")
            try:
                exchange, key = parse_target(address)
            except BadAddress as e:
                raise LinkError10("amqp:invalid-field", f"bad target address '{address}': {e}")
            self._check_exchange(exchange, key)
        link = ReceiverLink(self, a, exchange, key)
        self.conn.send_frame(
            self.channel,
            P.Attach(
                name=a.name,
                handle=a.handle,
                role=True,
                snd_settle_mode=a.snd_settle_mode,
                rcv_settle_mode=0,
                source=a.source,
                target=a.target,
                max_message_size=self.conn.settings.max_message_size,
            ),
        )
        if not self.conn.blocked:
            link.credit = L.PUBLISH_CREDIT
            self.flow(link)
        return link

    def _check_exchange(self, exchange: str, key: str | None) -> None:
        broker = self.broker
        vhost = self.vhost
        if exchange == "":
            if key is not None and broker.state.queue(vhost, key) is None:
                raise LinkError10("amqp:not-found", f"no queue '{key}' in vhost '{vhost}'")
        else:
            ex = broker.state.exchange(vhost, exchange)
            if ex is None:
                raise LinkError10("amqp:not-found", f"no exchange '{exchange}' in vhost '{vhost}'")
            if ex.internal:
                raise LinkError10(
                    "amqp:unauthorized-access",
                    f"cannot publish to internal exchange '{exchange}' in vhost '{vhost}'",
                )
        broker.check(self.conn.user, vhost, "write", "exchange", exchange)

    def _attach_sender(self, a: Any) -> SenderLink:
        source = a.source
        if not isinstance(source, P.Source):
            raise LinkError10("amqp:invalid-field", "attach without a source")
        if source.dynamic:
            raise LinkError10("amqp:not-implemented", "dynamic sources are not supported")
        address = source.address
        if not isinstance(address, str):
            raise LinkError10("amqp:invalid-field", "source address is not a string")
        name = self.source_queues.get(a.handle)
        try:
            if name is None:
                name = parse_source(address)
        except BadAddress as e:
            raise LinkError10("amqp:invalid-field", f"bad source address '{address}': {e}")
        vhost = self.vhost
        qdef = self.broker.state.queue(vhost, name)
        q = self.broker.queue(vhost, name)
        if qdef is None or q is None:
            raise LinkError10("amqp:not-found", f"no queue '{name}' in vhost '{vhost}'")
        self.broker.check(self.conn.user, vhost, "read", "queue", name)
        if qdef.exclusive_owner is not None and qdef.exclusive_owner != self.conn.id:
            raise LinkError10(
                "amqp:resource-locked",
                f"cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'",
            )
        if q.has_exclusive_consumer():
            raise LinkError10(
                "amqp:resource-locked",
                f"queue '{name}' in vhost '{vhost}' has an exclusive consumer",
            )
        link = SenderLink(self, a, q)
        self.conn.send_frame(
            self.channel,
            P.Attach(
                name=a.name,
                handle=a.handle,
                role=False,
                snd_settle_mode=a.snd_settle_mode,
                rcv_settle_mode=0,
                source=a.source,
                target=a.target,
                initial_delivery_count=0,
            ),
        )
        self.senders.append(link)
        q.subscribe(link)
        return link

    def on_flow(self, f: Any) -> None:
        # Session part: how many more transfer frames the client takes.
        nid = f.next_incoming_id if f.next_incoming_id is not None else 0
        self.remote_incoming_window = (nid + f.incoming_window - self.next_outgoing_id) & MASK
        if self.remote_incoming_window > 2**31:
            self.remote_incoming_window = 0
        self.remote_outgoing_window = f.outgoing_window
        self._send_pending()
        if f.handle is None:
            if f.echo:
                self.flow()
            if self.remote_incoming_window and not self.pending_frames:
                self.kick_senders()
            return
        link = self._link(f.handle, "flow")
        link.on_flow(f)

    def on_disposition(self, d: Any) -> None:
        if not d.role:
            return  # the client settling its own transfers to us: nothing to do
        state = d.state
        modified = None
        if state is None:
            if not d.settled:
                return
            outcome = ACCEPTED
        elif isinstance(state, P.Accepted):
            outcome = ACCEPTED
        elif isinstance(state, P.Rejected):
            outcome = REJECTED
        elif isinstance(state, P.Released):
            outcome = RELEASED
        elif isinstance(state, P.Modified):
            outcome = Outcome.MODIFIED
            modified = Modified(
                bool(state.delivery_failed),
                bool(state.undeliverable_here),
                dict(state.message_annotations or {}),
            )

        else:
            return  # received (or unknown): not terminal
        first = d.first
        last = d.last if d.last is not None else first
        unsettled = self.unsettled
        if last < first:
            return
        ids = (
            range(first, last + 1)
            if last - first <= len(unsettled)
            else sorted(k for k in unsettled if first <= k <= last)
        )
        touched: set[SenderLink] = set()
        for did in ids:
            entry = unsettled.pop(did, None)
            if entry is None:
                continue
            q, msg, link = entry
            link.unsettled -= 1
            touched.add(link)
            if modified is not None:
                q.settle(msg, outcome, _with_consumer(modified, link))
            else:
                q.settle(msg, outcome)
        for link in touched:
            if not link.detached:
                link.queue.kick()

    def on_detach(self, d: Any) -> None:
        if d.handle in self.refused:
            self.refused.discard(d.handle)  # the answer to our refusal: the handle is free
            return
        link = self._link(d.handle, "detach")
        del self.links[d.handle]
        self.source_queues.pop(d.handle, None)  # its queue goes with its last consumer
        if d.error is not None:
            log.info("AMQP 1.0 link detached by the client: %s", d.error)
        if not link.detached:
            link.teardown()
            self.conn.send_frame(self.channel, P.Detach(handle=d.handle, closed=d.closed))

    def detach(self, link: Any, condition: str, description: str) -> None:
        """Detach a link with an error; the client's answering detach frees the handle."""
        if link.detached:
            return
        log.info(
            "AMQP 1.0 connection %s: link '%s' detached: %s %s",
            self.conn.id,
            link.name,
            condition,
            description,
        )
        link.teardown()
        self.conn.send_frame(
            self.channel,
            P.Detach(handle=link.handle, closed=True, error=P.error(condition, description)),
        )
        self.conn.flush_soon()

    # -- sending ------------------------------------------------------------------------------

    def _send_pending(self) -> None:
        pending = self.pending_frames
        conn = self.conn
        while pending and self.remote_incoming_window > 0:
            conn.send(pending.popleft())
            self.remote_incoming_window -= 1
            self.next_outgoing_id = (self.next_outgoing_id + 1) & MASK

    def kick_senders(self) -> None:
        for link in list(self.senders):
            if not link.detached:
                link.queue.kick()
                link.finish_drain()

    # -- settling what the client published ---------------------------------------------------

    def accept(self, did: int) -> None:
        self.accepts.append(did)
        self.conn.dirty.add(self)

    def flush_dispositions(self) -> None:
        ids = self.accepts
        if not ids or not self.open:
            ids.clear()
            return
        conn = self.conn
        first = prev = ids[0]
        for did in ids[1:]:
            if did == prev + 1:
                prev = did
                continue
            conn.send(frame_disposition(self.channel, first, prev, P.ACCEPTED))
            first = prev = did
        conn.send(frame_disposition(self.channel, first, prev, P.ACCEPTED))
        ids.clear()

    def settle_incoming(self, did: int, state: Any) -> None:
        """A non-accepted outcome for a client's transfer: sent at once, in order after accepts."""
        self.flush_dispositions()
        self.conn.send(frame_disposition(self.channel, did, did, state.encode_amqp()))

    def store_committed(self, committed: int, failed: frozenset[int]) -> None:
        pending = self.pending
        if not self.open:
            pending.clear()
        while pending and pending[0][1] <= committed:
            did, epoch = pending.popleft()
            if epoch in failed:
                self.settle_incoming(
                    did,
                    P.Rejected(error=P.error("amqp:internal-error", "message store write failed")),
                )
            else:
                self.accept(did)
        self.conn.flush_soon()
        if not pending and self.broker.store is not None:
            self.broker.store.watchers.discard(self)

    def alarm_cleared(self) -> None:
        for link in list(self.links.values()):
            if isinstance(link, ReceiverLink) and not link.detached:
                link.maybe_grant(force=True)

    # -- teardown -----------------------------------------------------------------------------

    def teardown(self) -> None:
        self.open = False
        links = list(self.links.values())
        self.links.clear()
        for link in links:
            link.teardown()
        self.senders.clear()
        self.accepts.clear()
        self.pending.clear()
        self.pending_frames.clear()
        if self.broker.store is not None:
            self.broker.store.watchers.discard(self)


def _with_consumer(m: Modified, link: SenderLink) -> Modified:
    if not m.undeliverable_here:
        return m
    try:
        return Modified(m.delivery_failed, m.undeliverable_here, m.annotations, link)  # type: ignore[call-arg]
    except TypeError:  # a core without per-consumer exclusion
        return m


def frame_disposition(channel: int, first: int, last: int, state: bytes) -> bytes:
    # role=receiver, first, last, settled=true, state
    fields = b"\x41" + _uint(first) + _uint(last) + b"\x41" + state
    body = b"\x00\x53\x15\xc0" + _pB(len(fields) + 1) + b"\x05" + fields
    return _frame_head(8 + len(body), 2, 0, channel) + body


def _declare_condition(e: MetadataError) -> str:
    """The condition of a queue declaration the metadata refused: the vhost's queue limit is a
    resource limit (RabbitMQ 4 says amqp:resource-limit-exceeded), anything else a failed
    precondition."""
    if isinstance(e, QueueLimitExceeded):
        return "amqp:resource-limit-exceeded"
    return "amqp:precondition-failed"
