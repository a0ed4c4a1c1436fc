"""One AMQP 0-9-1 channel: its methods mapped onto the broker core.

Theory of operation: a channel handles its methods strictly in arrival order. Most run to completion
at once; a method that changes metadata proposes a command and, if the log has not applied it yet,
the channel parks every later frame (methods and publishes) until the reply is sent. On a single
node the log applies at once, so nothing is ever parked; in a cluster the same code waits for Raft.

Errors are raised as `ChannelError` (soft: the channel closes) or `ConnectionError091` (hard: the
connection closes); `connection` turns them into channel.close / connection.close frames.

Deliveries and settlements: every delivery in ack mode gets the channel's next delivery tag and an
entry in `unacked` (insertion order = tag order, which makes `multiple` a prefix walk). Settlements
map to the core outcomes: ack = accepted, reject/nack requeue=false = rejected, requeue=true and
channel close = released.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.declare import (
    DeclareError,
    check_exchange_declare,
    check_queue_arguments,
    check_reserved_name,
)
from ..core.message import Message
from ..core.outcome import ACCEPTED, REJECTED, RELEASED
from ..core.publish import UNROUTED
from ..core.queue import QueueHandle
from ..metadata import commands as cmds
from ..metadata.state import MetadataError
from ..routing.headers import HeadersError, HeadersMatcher
from ..wire.properties import FLAG_USER_ID, decode_properties, flags_of
from ..wire.table import as_int, encode_shortstr
from . import render, spec
from .constants import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    RESOURCE_ERROR,
    RESOURCE_LOCKED,
)

if TYPE_CHECKING:
    from .connection import Connection091


# Deliveries stop once this many bytes wait for the socket; they resume after the next write.
OUT_LIMIT = 256 * 1024


class ChannelError(Exception):
    """A soft error: closes the channel with `code`."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id


class ConnectionError091(Exception):
    """A hard error: closes the connection with `code`."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id


def _err(e: MetadataError) -> ChannelError:
    return ChannelError(e.code, e.text)


def _declare_error(e: DeclareError) -> ChannelError | ConnectionError091:
    """A refused declaration: 503 closes the connection, the rest close the channel."""
    return ConnectionError091(e.code, e.text) if e.hard else ChannelError(e.code, e.text)


class Consumer091:
    """A basic.consume subscription; the core's `Consumer` for 0-9-1."""

    __slots__ = (
        "channel",
        "tag",
        "ctag_raw",
        "queue",
        "no_ack",
        "exclusive",
        "prefetch",
        "unacked",
        "arguments",
        "priority",
    )

    def __init__(
        self,
        channel: Channel,
        tag: str,
        queue: QueueHandle,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: dict[str, Any],
    ) -> None:
        self.channel = channel
        self.tag = tag
        self.ctag_raw = encode_shortstr(tag)
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.arguments = arguments
        self.priority = as_int(arguments.get("x-priority", 0)) or 0

    def can_take(self) -> bool:
        ch = self.channel
        conn = ch.conn
        if conn.write_paused or conn.out_bytes > OUT_LIMIT:
            conn.starved = True
            return False
        if not ch.active:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        return not (ch.global_prefetch and len(ch.unacked) >= ch.global_prefetch)

    def deliver(self, queue: QueueHandle, msg: Message) -> bool:
        ch = self.channel
        conn = ch.conn
        counters = ch.counters
        if msg.redelivered:
            counters.redelivered += 1
        if self.no_ack:
            counters.delivered_autoack += 1
            conn.send(
                render.deliver(
                    ch.number,
                    self.ctag_raw,
                    ch.next_tag(),
                    msg.redelivered,
                    msg.route_raw,
                    msg.props_raw,
                    msg.body,
                    conn.frame_max,
                )
            )
            return False
        counters.delivered_ack += 1
        ch.delivery_tag = tag = ch.delivery_tag + 1
        ch.unacked[tag] = (queue, msg, self)
        self.unacked += 1
        conn.send(
            render.deliver(
                ch.number,
                self.ctag_raw,
                tag,
                msg.redelivered,
                msg.route_raw,
                msg.props_raw,
                msg.body,
                conn.frame_max,
            )
        )
        return True

    def backpressured(self) -> bool:
        conn = self.channel.conn
        return conn.write_paused or conn.out_bytes > OUT_LIMIT

    def cancelled(self, queue: QueueHandle, reason: str) -> None:
        ch = self.channel
        if ch.consumers.pop(self.tag, None) is None:
            return
        if ch.conn.capabilities.get("consumer_cancel_notify") and ch.is_open:
            ch.send_method(spec.BasicCancel(consumer_tag=self.tag, nowait=True))


class Channel:
    def __init__(self, conn: Connection091, number: int) -> None:
        self.conn = conn
        self.broker = conn.broker
        self.counters = conn.broker.counters
        self.number = number
        self.is_open = True
        self.closing = False
        self.active = True  # channel.flow
        self.consumers: dict[str, Consumer091] = {}
        self.unacked: dict[int, tuple[QueueHandle, Message, Consumer091 | None]] = {}
        self.delivery_tag = 0
        self.consumer_prefetch = 0
        self.global_prefetch = 0
        self.last_queue = ""  # the queue an empty queue name refers to
        self.confirm = False
        self.publish_seq = 0
        self.ack_upto = 0  # highest publish seq confirmed and not yet acknowledged to the client
        # Publishes whose confirm waits for a store commit: (publish seq, store epoch), in order.
        self.pending: deque[tuple[int, int]] = deque()
        self.watching = False  # registered with the ledger for commits
        self.tx_epoch = 0
        self.tx: list[Callable[[], None]] | None = None
        # Frames that arrived while a metadata command was in flight.
        self.parked: deque[tuple[str, tuple]] | None = None
        self._exchange_cache: dict[str, Any] = {}
        self._handlers: dict[str, Callable[[Any], None]] = {
            "channel.flow": self._flow,
            "channel.flow-ok": self._ignore,
            "exchange.declare": self._exchange_declare,
            "exchange.delete": self._exchange_delete,
            "exchange.bind": self._exchange_bind,
            "exchange.unbind": self._exchange_unbind,
            "queue.declare": self._queue_declare,
            "queue.bind": self._queue_bind,
            "queue.unbind": self._queue_unbind,
            "queue.purge": self._queue_purge,
            "queue.delete": self._queue_delete,
            "basic.qos": self._basic_qos,
            "basic.consume": self._basic_consume,
            "basic.cancel": self._basic_cancel,
            "basic.get": self._basic_get,
            "basic.ack": self._basic_ack,
            "basic.reject": self._basic_reject,
            "basic.nack": self._basic_nack,
            "basic.recover-async": self._basic_recover_async,
            "basic.recover": self._basic_recover,
            "confirm.select": self._confirm_select,
            "tx.select": self._tx_select,
            "tx.commit": self._tx_commit,
            "tx.rollback": self._tx_rollback,
        }

    @property
    def vhost(self) -> str:
        return self.conn.vhost

    @property
    def user(self) -> str:
        return self.conn.user

    def next_tag(self) -> int:
        self.delivery_tag += 1
        return self.delivery_tag

    def send_method(self, method: Any) -> None:
        self.conn.send(render.method_frame(self.number, method))

    # -- dispatch -----------------------------------------------------------------------------

    def handle_method(self, method: Any) -> None:
        if self.parked is not None:
            self.parked.append(("m", (method,)))
            return
        handler = self._handlers.get(method.NAME)
        if handler is None:
            raise ConnectionError091(
                COMMAND_INVALID,
                f"method {method.NAME} is not valid from a client on a channel",
                method.CLASS_ID,
                method.METHOD_ID,
            )
        try:
            handler(method)
        except MetadataError as e:
            raise ChannelError(e.code, e.text, method.CLASS_ID, method.METHOD_ID)
        except ChannelError as e:
            if not e.class_id:
                e.class_id, e.method_id = method.CLASS_ID, method.METHOD_ID
            raise
        except ConnectionError091 as e:
            if not e.class_id:
                e.class_id, e.method_id = method.CLASS_ID, method.METHOD_ID
            raise

    def _ignore(self, m: Any) -> None:
        return None

    def _await(self, fut: asyncio.Future, then: Callable[[Any], None], method: Any) -> None:
        """Continue with `then(result)` once `fut` resolves, keeping later frames in order."""
        if fut.done():
            then(_result(fut))
            return
        self.parked = deque()

        def resume(f: asyncio.Future) -> None:
            parked, self.parked = self.parked, None
            if self.closing or not self.is_open:
                return
            try:
                try:
                    then(_result(f))
                except MetadataError as e:
                    raise ChannelError(e.code, e.text, method.CLASS_ID, method.METHOD_ID)
                while parked and self.parked is None and self.is_open and not self.closing:
                    kind, args = parked.popleft()
                    if kind == "m":
                        self.handle_method(*args)
                    else:
                        self.publish(*args)
                if parked and self.parked is not None:
                    self.parked.extendleft(reversed(parked))
            except (ChannelError, ConnectionError091) as e:
                self.conn.protocol_error(self.number, e)
            self.conn.flush_soon()

        fut.add_done_callback(resume)

    # -- channel ------------------------------------------------------------------------------

    def _flow(self, m: spec.ChannelFlow) -> None:  # type: ignore[name-defined]
        self.active = m.active
        self.send_method(spec.ChannelFlowOk(active=m.active))
        if m.active:
            self.kick_consumers()

    # -- exchanges ----------------------------------------------------------------------------

    def _exchange_declare(self, m: Any) -> None:
        state = self.broker.state
        name = m.exchange
        if m.passive:
            if not name:
                self._reply(m.nowait, spec.ExchangeDeclareOk())
                return
            if state.exchange(self.vhost, name) is None:
                raise ChannelError(NOT_FOUND, f"no exchange '{name}' in vhost '{self.vhost}'")
            self._reply(m.nowait, spec.ExchangeDeclareOk())
            return
        args = m.arguments or {}
        try:
            # Redeclaring an existing amq.* exchange equivalently is allowed, as in RabbitMQ.
            exists = state.exchange(self.vhost, name) is not None
            check_exchange_declare(self.vhost, name, m.type, args, exists=exists)
        except DeclareError as e:
            raise _declare_error(e)
        self.broker.check(self.user, self.vhost, "configure", "exchange", name)
        cmd = cmds.DeclareExchange(
            self.vhost, name, m.type, m.durable, m.auto_delete, m.internal, args
        )
        self._await(
            self.broker.propose(cmd), lambda _: self._reply(m.nowait, spec.ExchangeDeclareOk()), m
        )

    def _exchange_delete(self, m: Any) -> None:
        name = m.exchange
        if not name:
            raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        if name.startswith("amq."):
            raise ChannelError(
                ACCESS_REFUSED,
                f"deletion of system exchange '{name}' in vhost '{self.vhost}' not allowed",
            )
        if self.broker.state.exchange(self.vhost, name) is None:
            # Deleting a missing exchange succeeds, as in RabbitMQ since 3.6.
            self._reply(m.nowait, spec.ExchangeDeleteOk())
            return
        self.broker.check(self.user, self.vhost, "configure", "exchange", name)
        cmd = cmds.DeleteExchange(self.vhost, name, m.if_unused)
        self._await(
            self.broker.propose(cmd), lambda _: self._reply(m.nowait, spec.ExchangeDeleteOk()), m
        )

    def _exchange_bind(self, m: Any) -> None:
        self._binding(m, cmds.Bind, "e", m.destination, m.source, spec.ExchangeBindOk())

    def _exchange_unbind(self, m: Any) -> None:
        self._binding(m, cmds.Unbind, "e", m.destination, m.source, spec.ExchangeUnbindOk())

    def _queue_bind(self, m: Any) -> None:
        self._binding(m, cmds.Bind, "q", self._queue_name(m.queue), m.exchange, spec.QueueBindOk())

    def _queue_unbind(self, m: Any) -> None:
        self._binding(
            m,
            cmds.Unbind,
            "q",
            self._queue_name(m.queue),
            m.exchange,
            spec.QueueUnbindOk(),
            nowait=False,
        )

    def _binding(
        self,
        m: Any,
        kind: type,
        dkind: str,
        dest: str,
        source: str,
        ok: Any,
        nowait: bool | None = None,
    ) -> None:
        state = self.broker.state
        if not source or (dkind == "e" and not dest):
            raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        unbind = kind is cmds.Unbind
        ex = state.exchange(self.vhost, source)
        qdef = state.queue(self.vhost, dest) if dkind == "q" else None
        missing_dest = qdef is None if dkind == "q" else state.exchange(self.vhost, dest) is None
        if unbind and (ex is None or missing_dest):
            # Unbinding what does not exist succeeds, as in RabbitMQ.
            self._reply(m.nowait if nowait is None else nowait, ok)
            return
        if ex is None:
            raise ChannelError(NOT_FOUND, f"no exchange '{source}' in vhost '{self.vhost}'")
        if missing_dest:
            what = "queue" if dkind == "q" else "exchange"
            raise ChannelError(NOT_FOUND, f"no {what} '{dest}' in vhost '{self.vhost}'")
        if qdef is not None:
            self._check_exclusive(qdef)
        self.broker.check(
            self.user, self.vhost, "write", "queue" if dkind == "q" else "exchange", dest
        )
        self.broker.check(self.user, self.vhost, "read", "exchange", source)
        args = m.arguments or {}
        if ex.type == "headers":
            try:
                HeadersMatcher.validate(args)
            except HeadersError as e:
                raise ChannelError(PRECONDITION_FAILED, str(e))
        cmd = kind(self.vhost, source, dkind, dest, m.routing_key, args)
        self._await(
            self.broker.propose(cmd),
            lambda _: self._reply(m.nowait if nowait is None else nowait, ok),
            m,
        )

    # -- queues -------------------------------------------------------------------------------

    def _queue_name(self, name: str) -> str:
        # An empty queue name means the last queue declared on this channel, as the spec says.
        if not name:
            if not self.last_queue:
                raise ChannelError(NOT_FOUND, "no previously declared queue")
            return self.last_queue
        return name

    def _check_exclusive(self, qdef: Any) -> None:
        if qdef.exclusive_owner is not None and qdef.exclusive_owner != self.conn.id:
            raise ChannelError(
                RESOURCE_LOCKED,
                f"cannot obtain exclusive access to locked queue '{qdef.name}' in vhost '{qdef.vhost}'. "
                "It could be originally declared on another connection or the exclusive property value "
                "does not match that of the original declaration.",
            )

    def _queue_declare(self, m: Any) -> None:
        state = self.broker.state
        name = m.queue
        if m.passive:
            name = self._queue_name(name)
            qdef = state.queue(self.vhost, name)
            if qdef is None:
                raise ChannelError(NOT_FOUND, f"no queue '{name}' in vhost '{self.vhost}'")
            self._check_exclusive(qdef)
            self._declare_ok(m, name)
            return
        args = m.arguments or {}
        try:
            if not name:
                name = self._generated_name()
            else:
                check_reserved_name("queue", name)
            self.broker.check(self.user, self.vhost, "configure", "queue", name)
            check_queue_arguments(self.vhost, name, args)
        except DeclareError as e:
            raise _declare_error(e)
        qdef = state.queue(self.vhost, name)
        if qdef is not None:
            self._check_exclusive(qdef)
        cmd = cmds.DeclareQueue(
            self.vhost,
            name,
            m.durable,
            self.conn.id if m.exclusive else None,
            m.auto_delete,
            args,
            self.broker.place_queue(m.exclusive),
        )

        def done(result: Any) -> None:
            if result == "created" and m.exclusive:
                self.conn.exclusive_queues.add(name)
            self._declare_ok(m, name)

        self._await(self.broker.propose(cmd), done, m)

    def _generated_name(self) -> str:
        from ..broker import generate_queue_name

        return generate_queue_name()

    def _declare_ok(self, m: Any, name: str) -> None:
        self.last_queue = name
        if m.nowait:
            return
        q = self.broker.queue(self.vhost, name)
        if q is None:
            self.send_method(spec.QueueDeclareOk(queue=name, message_count=0, consumer_count=0))
            return
        q.touch()

        def reply(stats: tuple[int, int]) -> None:
            self.send_method(
                spec.QueueDeclareOk(queue=name, message_count=stats[0], consumer_count=stats[1])
            )

        self._await(q.stats(), reply, m)

    def _existing_queue(self, name: str) -> QueueHandle:
        qdef = self.broker.state.queue(self.vhost, name)
        q = self.broker.queue(self.vhost, name)
        if qdef is None or q is None:
            raise ChannelError(NOT_FOUND, f"no queue '{name}' in vhost '{self.vhost}'")
        self._check_exclusive(qdef)
        return q

    def _queue_purge(self, m: Any) -> None:
        name = self._queue_name(m.queue)
        q = self._existing_queue(name)
        self.broker.check(self.user, self.vhost, "read", "queue", name)
        self._await(
            q.purge(), lambda n: self._reply(m.nowait, spec.QueuePurgeOk(message_count=n)), m
        )

    def _queue_delete(self, m: Any) -> None:
        name = self._queue_name(m.queue)
        qdef = self.broker.state.queue(self.vhost, name)
        if qdef is None:
            # Deleting a missing queue succeeds, as in RabbitMQ since 3.6.
            self._reply(m.nowait, spec.QueueDeleteOk(message_count=0))
            return
        q = self._existing_queue(name)
        self.broker.check(self.user, self.vhost, "configure", "queue", name)
        self._await(q.stats(), lambda stats: self._delete_queue(m, name, *stats), m)

    def _delete_queue(self, m: Any, name: str, messages: int, consumers: int) -> None:
        if m.if_unused and consumers:
            raise ChannelError(
                PRECONDITION_FAILED, f"queue '{name}' in vhost '{self.vhost}' in use"
            )
        if m.if_empty and messages:
            raise ChannelError(
                PRECONDITION_FAILED, f"queue '{name}' in vhost '{self.vhost}' not empty"
            )
        cmd = cmds.DeleteQueue(self.vhost, name)

        def done(_: Any) -> None:
            self.conn.exclusive_queues.discard(name)
            self._reply(m.nowait, spec.QueueDeleteOk(message_count=messages))

        self._await(self.broker.propose(cmd), done, m)

    # -- basic: consumers ---------------------------------------------------------------------

    def _basic_qos(self, m: Any) -> None:
        if m.prefetch_size:
            raise ConnectionError091(NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})")
        if m.global_:
            self.global_prefetch = m.prefetch_count
        else:
            self.consumer_prefetch = m.prefetch_count
        self.send_method(spec.BasicQosOk())
        self.kick_consumers()

    def _basic_consume(self, m: Any) -> None:
        name = self._queue_name(m.queue)
        q = self._existing_queue(name)
        self.broker.check(self.user, self.vhost, "read", "queue", name)
        tag = m.consumer_tag or "amq.ctag-" + secrets.token_urlsafe(16)
        if tag in self.consumers:
            raise ConnectionError091(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'")
        # For a queue on another node this sees the consumers through this node; its leader
        # checks the rest when the subscription reaches it.
        if q.has_exclusive_consumer() or (m.exclusive and q.consumer_count):
            raise ChannelError(
                ACCESS_REFUSED, f"queue '{name}' in vhost '{self.vhost}' in exclusive use"
            )
        args = m.arguments or {}
        prio = args.get("x-priority")
        if prio is not None and as_int(prio) is None:
            raise ChannelError(
                PRECONDITION_FAILED,
                f"invalid arg 'x-priority' for consumer '{tag}': expected an integer",
            )
        consumer = Consumer091(self, tag, q, m.no_ack, m.exclusive, self.consumer_prefetch, args)
        self.consumers[tag] = consumer
        if not m.nowait:
            self.send_method(spec.BasicConsumeOk(consumer_tag=tag))
        q.subscribe(consumer)

    def _basic_cancel(self, m: Any) -> None:
        consumer = self.consumers.pop(m.consumer_tag, None)
        deleting = None
        if consumer is not None:
            # Its unacked deliveries stay on the channel and can still be acked, as in RabbitMQ;
            # they are released when the channel closes.
            consumer.queue.unsubscribe(consumer)
            deleting = consumer.queue.deleting
        if m.nowait:
            return
        ok = spec.BasicCancelOk(consumer_tag=m.consumer_tag)
        if deleting is not None and not deleting.done():
            # An auto-delete queue lost its last consumer: reply once it is gone.
            self._await(_settled(deleting), lambda _: self.send_method(ok), m)
        else:
            self.send_method(ok)

    def kick_consumers(self) -> None:
        seen: set[int] = set()
        for c in list(self.consumers.values()):
            if id(c.queue) not in seen:
                seen.add(id(c.queue))
                c.queue.kick()

    def _basic_get(self, m: Any) -> None:
        name = self._queue_name(m.queue)
        q = self._existing_queue(name)
        self.broker.check(self.user, self.vhost, "read", "queue", name)
        self._await(q.get(not m.no_ack), lambda r: self._got(q, m, r[0], r[1]), m)

    def _got(self, q: QueueHandle, m: Any, msg: Message | None, remaining: int) -> None:
        if msg is None:
            self.counters.get_empty += 1
            self.send_method(spec.BasicGetEmpty())
            return
        tag = self.next_tag()
        if msg.redelivered:
            self.counters.redelivered += 1
        if not m.no_ack:
            self.counters.get_ack += 1
            self.unacked[tag] = (q, msg, None)
        else:
            self.counters.get_autoack += 1
        self.conn.send(
            render.get_ok(
                self.number,
                tag,
                msg.redelivered,
                msg.route_raw,
                remaining,
                msg.props_raw,
                msg.body,
                self.conn.frame_max,
            )
        )

    # -- basic: settlement --------------------------------------------------------------------

    def _take(
        self, tag: int, multiple: bool
    ) -> list[tuple[QueueHandle, Message, Consumer091 | None]]:
        unacked = self.unacked
        if multiple:
            if tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if tag not in unacked and (not unacked or tag < next(iter(unacked))):
                raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
            keys = []
            for t in unacked:
                if t > tag:
                    break
                keys.append(t)
            return [unacked.pop(t) for t in keys]
        entry = unacked.pop(tag, None)
        if entry is None:
            raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        return [entry]

    def _settle(self, entries: list, outcome: Any) -> None:
        kick = False
        for q, msg, consumer in entries:
            if consumer is not None:
                consumer.unacked -= 1
                kick = True
            q.settle(msg, outcome)
        if kick:
            self.kick_consumers()

    def _defer(self, tag: int, multiple: bool, outcome: Any) -> None:
        """In a transaction: check the tag now, settle at commit, forget at rollback."""
        if tag not in self.unacked and not (
            multiple and (tag == 0 or (self.unacked and tag > next(iter(self.unacked))))
        ):
            raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        self.tx.append(lambda: self._settle(self._take(tag, multiple), outcome))  # type: ignore[union-attr]

    def _basic_ack(self, m: Any) -> None:
        if self.tx is not None:
            self._defer(m.delivery_tag, m.multiple, ACCEPTED)
            return
        unacked = self.unacked
        if not m.multiple:
            entry = unacked.pop(m.delivery_tag, None)
            if entry is None:
                raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {m.delivery_tag}")
            q, msg, consumer = entry
            self.counters.acked += 1
            q.settle(msg, ACCEPTED)
            if consumer is not None:
                consumer.unacked -= 1
                consumer.queue.kick()
                if self.global_prefetch:
                    self.kick_consumers()
            return
        entries = self._take(m.delivery_tag, True)
        self.counters.acked += len(entries)
        self._settle(entries, ACCEPTED)

    def _basic_reject(self, m: Any) -> None:
        self._reject(m.delivery_tag, False, m.requeue)

    def _basic_nack(self, m: Any) -> None:
        self._reject(m.delivery_tag, m.multiple, m.requeue)

    def _reject(self, tag: int, multiple: bool, requeue: bool) -> None:
        outcome = RELEASED if requeue else REJECTED
        if self.tx is not None:
            self._defer(tag, multiple, outcome)
            return
        self._settle(self._take(tag, multiple), outcome)

    def _recover(self, requeue: bool) -> None:
        if requeue:
            self.release_all()
            self.kick_consumers()
            return
        # requeue=false: redeliver each to its original consumer, marked redelivered, new tags.
        entries = list(self.unacked.items())
        self.unacked.clear()
        for _tag, (q, msg, consumer) in entries:
            if consumer is None or consumer.tag not in self.consumers:
                q.settle(msg, RELEASED)
                continue
            msg.redelivered = True
            consumer.unacked -= 1
            tag = self.next_tag()
            self.unacked[tag] = (q, msg, consumer)
            consumer.unacked += 1
            self.conn.send(
                render.deliver(
                    self.number,
                    consumer.ctag_raw,
                    tag,
                    True,
                    msg.route_raw,
                    msg.props_raw,
                    msg.body,
                    self.conn.frame_max,
                )
            )

    def _basic_recover_async(self, m: Any) -> None:
        self._recover(m.requeue)

    def _basic_recover(self, m: Any) -> None:
        self._recover(m.requeue)
        self.send_method(spec.BasicRecoverOk())

    # -- confirms and transactions ------------------------------------------------------------

    def _confirm_select(self, m: Any) -> None:
        if self.tx is not None:
            raise ChannelError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode")
        self.confirm = True
        self._reply(m.nowait, spec.ConfirmSelectOk())

    def _tx_select(self, m: Any) -> None:
        if self.confirm:
            raise ChannelError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode")
        if self.tx is None:
            self.tx = []
        self.send_method(spec.TxSelectOk())

    def _tx_commit(self, m: Any) -> None:
        if self.tx is None:
            raise ChannelError(PRECONDITION_FAILED, "channel is not transactional")
        actions, self.tx = self.tx, []
        self.tx_epoch = 0
        for action in actions:
            action()
        store = self.broker.store
        if self.tx_epoch and store is not None and self.tx_epoch > store.committed:
            # commit-ok promises the persistent messages are on disk: wait for their commit.
            self._await(_settled(store.wait(self.tx_epoch)), self._tx_stored, m)
            return
        self.send_method(spec.TxCommitOk())

    def _tx_stored(self, error: BaseException | None) -> None:
        if error is not None:
            raise ConnectionError091(RESOURCE_ERROR, f"message store write failed: {error}", 90, 20)
        self.send_method(spec.TxCommitOk())

    def _tx_rollback(self, m: Any) -> None:
        if self.tx is None:
            raise ChannelError(PRECONDITION_FAILED, "channel is not transactional")
        # Deferred publishes are dropped; deferred settlements never happened, so their deliveries
        # stay unacked.
        self.tx = []
        self.send_method(spec.TxRollbackOk())

    # -- publishing ---------------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        immediate: bool,
        route_raw: bytes,
        props_raw: bytes,
        body: bytes,
    ) -> None:
        if self.parked is not None:
            self.parked.append(
                ("p", (exchange, routing_key, mandatory, immediate, route_raw, props_raw, body))
            )
            return
        if immediate:
            raise ConnectionError091(NOT_IMPLEMENTED, "immediate=true", 60, 40)
        ex = self._exchange_cache.get(exchange)
        if ex is None or self.broker.state.exchange(self.vhost, exchange) is not ex:
            ex = self._lookup_exchange(exchange)
        if flags_of(props_raw) & FLAG_USER_ID:
            user_id = decode_properties(props_raw).get("user_id")  # validated by the frame reader
            if user_id != self.user:
                raise ChannelError(
                    PRECONDITION_FAILED,
                    f"user_id property set to '{user_id}' but authenticated user was '{self.user}'",
                    60,
                    40,
                )
        msg = Message(exchange, routing_key, route_raw, props_raw, body)
        msg.publisher = self.conn
        self.counters.published += 1
        if self.confirm:
            self.publish_seq += 1
        if self.tx is not None:
            self.tx.append(lambda: self._route(ex, msg, mandatory, 0))
            return
        self._route(ex, msg, mandatory, self.publish_seq if self.confirm else 0)

    def _lookup_exchange(self, exchange: str) -> Any:
        ex = self.broker.state.exchange(self.vhost, exchange)
        if ex is None:
            raise ChannelError(
                NOT_FOUND, f"no exchange '{exchange}' in vhost '{self.vhost}'", 60, 40
            )
        if ex.internal:
            raise ChannelError(
                ACCESS_REFUSED,
                f"cannot publish to internal exchange '{exchange}' in vhost '{self.vhost}'",
                60,
                40,
            )
        self.broker.check(self.user, self.vhost, "write", "exchange", exchange)
        if len(self._exchange_cache) > 256:
            self._exchange_cache.clear()
        self._exchange_cache[exchange] = ex
        return ex

    def _route(self, ex: Any, msg: Message, mandatory: bool, seq: int) -> None:
        # Without a confirm or a transaction nothing waits for the message's store token, so a
        # queue on another node need not report it back.
        epoch, _ = self.broker.publish(
            self.vhost, ex, msg, seq != 0 or self.tx is not None, self.conn
        )
        rejected = False
        if epoch < 0:
            if epoch == UNROUTED:
                if mandatory:
                    self.counters.unroutable_returned += 1
                    self.conn.send(
                        render.basic_return(
                            self.number,
                            NO_ROUTE,
                            "NO_ROUTE",
                            msg.route_raw,
                            msg.props_raw,
                            msg.body,
                            self.conn.frame_max,
                        )
                    )
                else:
                    self.counters.unroutable_dropped += 1
            else:
                rejected = True  # x-overflow reject-publish: the publisher gets a nack
            epoch = 0
        if epoch > self.tx_epoch:
            self.tx_epoch = epoch
        if seq:
            if rejected:
                if self.pending:
                    self.pending.append((seq, -1))  # nacked in order, after what precedes it
                else:
                    self.flush_confirms()
                    self.conn.send(render.basic_nack(self.number, seq, False))
            elif epoch or self.pending:
                # The confirm waits for the store commit that holds the message (group commit).
                self.pending.append((seq, epoch))
                if epoch and not self.watching:
                    self.watching = True
                    self.broker.store.watchers.add(self)
            else:
                self.counters.confirmed += 1
                self.ack_upto = seq
                self.conn.confirm_dirty.add(self)

    def store_committed(self, committed: int, failed: frozenset[int]) -> None:
        """The store committed every epoch up to `committed` (those in `failed` did not make it)."""
        pending = self.pending
        if not self.is_open:
            pending.clear()
        while pending and pending[0][1] <= committed:
            seq, epoch = pending.popleft()
            if epoch < 0 or epoch in failed:
                self.flush_confirms()
                self.conn.send(render.basic_nack(self.number, seq, False))
            else:
                self.counters.confirmed += 1
                self.ack_upto = seq
        if self.ack_upto:
            self.conn.confirm_dirty.add(self)
            self.conn.flush_soon()
        if not pending:
            self.watching = False
            self.broker.store.watchers.discard(self)

    def flush_confirms(self) -> None:
        if self.ack_upto and self.is_open:
            self.conn.send(render.basic_ack(self.number, self.ack_upto, True))
        self.ack_upto = 0

    # -- replies and teardown -----------------------------------------------------------------

    def _reply(self, nowait: bool, method: Any) -> None:
        if not nowait:
            self.send_method(method)

    def release_all(self) -> None:
        """Release every unacked delivery back to its queue, in delivery order."""
        if not self.unacked:
            return
        by_queue: dict[int, tuple[QueueHandle, list[Message]]] = {}
        for q, msg, consumer in self.unacked.values():
            if consumer is not None:
                consumer.unacked -= 1
            by_queue.setdefault(id(q), (q, []))[1].append(msg)
        self.unacked.clear()
        for q, msgs in by_queue.values():
            q.release_many(msgs)

    def teardown(self) -> None:
        """The channel is gone (closed either way, or its connection was lost)."""
        self.is_open = False
        self.parked = None
        self.tx = None
        consumers = list(self.consumers.values())
        self.consumers.clear()
        for c in consumers:
            c.queue.unsubscribe(c)
        self.release_all()
        self.conn.confirm_dirty.discard(self)
        self.pending.clear()
        self.watching = False
        if self.broker.store is not None:
            self.broker.store.watchers.discard(self)


def _settled(fut: asyncio.Future) -> asyncio.Future:
    """A future resolved with `fut`'s exception (or None) instead of failing."""
    out = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: out.set_result(None if f.cancelled() else f.exception()))
    return out


def _result(fut: asyncio.Future) -> Any:
    exc = fut.exception()
    if exc is not None:
        raise exc
    return fut.result()
