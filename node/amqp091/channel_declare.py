"""Channel methods that change metadata: exchange and queue declare, bind, unbind, delete, purge.

Each checks what it can locally, proposes a metadata command and replies once the log applies it
(`Channel._await`, which parks later frames meanwhile; see channel.py for the theory of operation).
"""

from __future__ import annotations

from typing import Any

from ..core.declare import (
    DeclareError,
    check_exchange_declare,
    check_not_default_exchange,
    check_queue_arguments,
    check_quorum_declare,
    check_reserved_name,
    check_server_named,
    declared_queue_type,
)
from ..core.reply_to import PSEUDO_QUEUE as REPLY_TO
from ..metadata import commands as cmds
from ..routing.headers import HeadersError, HeadersMatcher
from . import spec
from .channel_base import ChannelCore, ChannelError, ConnectionError091
from .constants import ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED


def _declare_error(e: DeclareError) -> ChannelError | ConnectionError091:
    """A refused declaration: 503 closes the connection, the rest close the channel."""
    return ConnectionError091(e.code, e.text) if e.hard else ChannelError(e.code, e.text)


class DeclareMixin(ChannelCore):
    """exchange.* and queue.* for `Channel`."""

    # -- exchanges ----------------------------------------------------------------------------

    def _exchange_declare(self, m: Any) -> None:
        state = self.broker.state
        name = m.exchange
        if m.passive:
            try:
                check_not_default_exchange(name)  # passive too, as RabbitMQ (aiormq relies on it)
            except DeclareError as e:
                raise _declare_error(e)
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
        try:
            check_not_default_exchange(name)
        except DeclareError as e:
            raise _declare_error(e)
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

    def _queue_declare(self, m: Any) -> None:
        state = self.broker.state
        name = m.queue
        if m.passive:
            if name == REPLY_TO:  # direct reply-to's pseudo-queue always exists, as RabbitMQ
                self._reply(
                    m.nowait, spec.QueueDeclareOk(queue=name, message_count=0, consumer_count=0)
                )
                return
            name = self._queue_name(name)
            qdef = state.queue(self.vhost, name)
            if qdef is None:
                raise ChannelError(NOT_FOUND, f"no queue '{name}' in vhost '{self.vhost}'")
            self._check_exclusive(qdef)
            self._declare_ok(m, name)
            return
        args = m.arguments or {}
        props = {"durable": m.durable, "exclusive": m.exclusive, "auto_delete": m.auto_delete}
        default_type = self.broker.default_queue_type_in(self.vhost)
        try:
            if not name:
                check_server_named(declared_queue_type(args, **props, default_type=default_type))
                name = self._generated_name()
            else:
                check_reserved_name("queue", name)
            self.broker.check(self.user, self.vhost, "configure", "queue", name)
            check_queue_arguments(self.vhost, name, args)
            qdef = state.queue(self.vhost, name)
            if qdef is None:
                check_quorum_declare(self.vhost, name, args, **props, default_type=default_type)
        except DeclareError as e:
            raise _declare_error(e)
        if qdef is not None:
            self._check_exclusive(qdef)
        cmd = self.broker.declare_queue(
            self.vhost, name, m.durable, self.conn.id if m.exclusive else None, m.auto_delete, args
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
        self.deleting_queue = name  # basic.cancel of our consumers follows the delete-ok

        def done(_: Any) -> None:
            self.conn.exclusive_queues.discard(name)
            self._reply(m.nowait, spec.QueueDeleteOk(message_count=messages))
            self.deleting_queue = None
            held, self.held_cancels = self.held_cancels, []
            for tag in held:
                self.notify_cancelled(tag)

        self._await(self.broker.propose(cmd), done, m)
