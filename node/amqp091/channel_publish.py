"""Publishing with confirms and transactions: basic.publish, confirm.select, tx.*, store commits.

`publish` is the hot path: the connection calls it once per message, with the raw frames.
A confirm waits for the store commit that holds its message (group commit); `store_committed`
is the store's callback for channels registered in its `watchers`.
"""

from __future__ import annotations

from typing import Any

from ..core.message import Message
from ..core.publish import UNROUTED
from ..core.reply_to import PSEUDO_QUEUE as REPLY_TO
from ..wire.properties import (
    FLAG_REPLY_TO,
    FLAG_USER_ID,
    decode_properties,
    encode_properties,
    flags_of,
)
from . import render, spec
from .channel_base import ChannelCore, ChannelError, ConnectionError091, _settled
from .constants import (
    ACCESS_REFUSED,
    NO_ROUTE,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    RESOURCE_ERROR,
)

# Found in the property bytes before anything is decoded (publishes with other reply_to values
# pay one substring search).
_REPLY_TO_RAW = REPLY_TO.encode("ascii")
_PUBLISH = spec.BasicPublish  # the method an error while publishing is blamed on


class PublishMixin(ChannelCore):
    """basic.publish, confirm.select and tx.* for `Channel`."""

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
            if self.broker.state.exchange(self.vhost, exchange) is None and (
                self.rerun_when_caught_up(
                    lambda: self.publish(
                        exchange, routing_key, mandatory, immediate, route_raw, props_raw, body
                    ),
                    _PUBLISH,
                )
            ):
                return  # perhaps an exchange another node declared a moment ago
            ex = self._lookup_exchange(exchange)
        flags = flags_of(props_raw)
        if flags & FLAG_USER_ID:
            user_id = decode_properties(props_raw).get("user_id")  # validated by the frame reader
            if user_id != self.user:
                raise ChannelError(
                    PRECONDITION_FAILED,
                    f"user_id property set to '{user_id}' but authenticated user was '{self.user}'",
                    60,
                    40,
                )
        if flags & FLAG_REPLY_TO and _REPLY_TO_RAW in props_raw:
            props_raw = self._direct_reply_to(props_raw)
        msg = Message(exchange, routing_key, route_raw, props_raw, body)
        msg.publisher = self.conn
        self.counters.published += 1
        if self.confirm:
            self.publish_seq += 1
        if self.tx is not None:
            self.tx.append(lambda: self._route(ex, msg, mandatory, 0))
            return
        self._route(ex, msg, mandatory, self.publish_seq if self.confirm else 0)

    def _direct_reply_to(self, props_raw: bytes) -> bytes:
        """reply_to amq.rabbitmq.reply-to becomes this channel's reply-to name."""
        props = decode_properties(props_raw)
        if props.get("reply_to") != REPLY_TO:
            return props_raw  # a longer name that merely contains it
        if self.reply_to is None:
            raise ChannelError(PRECONDITION_FAILED, "fast reply consumer does not exist", 60, 40)
        props["reply_to"] = self.reply_to.name
        return encode_properties(props)

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
        elif epoch and epoch <= self.broker.store.committed:
            # Resolved already (a replica that stopped leading refuses at once): watchers only
            # hear of a failure when it happens, so look it up.
            rejected = self.broker.store.did_fail(epoch)
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
