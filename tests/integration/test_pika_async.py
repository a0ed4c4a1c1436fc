"""pika's callback adapters (SelectConnection, AsyncioConnection) against a real node.

Each test is a small callback-driven script. `Script` runs the adapter's ioloop until the script calls
`done()` (or fails); a watchdog timer stops the loop and fails the test if that never happens.
"""

from __future__ import annotations

import asyncio
import functools

import pika
import pika.exceptions as pex
from pika.adapters.asyncio_connection import AsyncioConnection

from tests.support.names import uid


class Script:
    """Drive one SelectConnection: `start(conn)` is called once the connection is open."""

    def __init__(self, node, start, timeout: float = 5.0, adapter: str = "select") -> None:
        self.node = node
        self.start = start
        self.timeout = timeout
        self.adapter = adapter
        self.error: BaseException | str | None = None
        self.finished = False
        self.closed_reason: BaseException | None = None
        self.conn = None
        self.events: list = []

    # -- script API -------------------------------------------------------------------------

    def done(self) -> None:
        self.finished = True
        if self.conn.is_open:
            self.conn.close()
        else:
            self._stop()

    def fail(self, why) -> None:
        if self.error is None:
            self.error = why
        if self.conn.is_open:
            self.conn.close()
        else:
            self._stop()

    def guard(self, fn):
        """Wrap a callback so an assertion error inside it fails the script instead of vanishing."""

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            try:
                return fn(*a, **kw)
            except BaseException as e:  # noqa: BLE001
                self.fail(e)

        return wrapper

    # -- running ----------------------------------------------------------------------------

    def _stop(self) -> None:
        if self.adapter == "select":
            self.conn.ioloop.stop()
        else:
            if not self._loop_future.done():
                self._loop_future.set_result(None)

    def _on_open(self, conn) -> None:
        self.guard(self.start)(self, conn)

    def _on_open_error(self, conn, err) -> None:
        self.error = err
        self._stop()

    def _on_closed(self, conn, reason) -> None:
        self.closed_reason = reason
        self._stop()

    def _watchdog(self) -> None:
        if not self.finished:
            self.fail(f"script did not finish within {self.timeout}s; events so far: {self.events}")

    def run(self) -> Script:
        params = pika.URLParameters(self.node.url)
        if self.adapter == "select":
            self.conn = pika.SelectConnection(
                params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            self.conn.ioloop.call_later(self.timeout, self._watchdog)
            self.conn.ioloop.start()
        else:

            async def main():
                loop = asyncio.get_running_loop()
                self._loop_future = loop.create_future()
                self.conn = AsyncioConnection(
                    params,
                    on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error,
                    on_close_callback=self._on_closed,
                    custom_ioloop=loop,
                )
                handle = loop.call_later(self.timeout, self._watchdog)
                await self._loop_future
                handle.cancel()
                # Let the transport finish closing.
                if not self.conn.is_closed:
                    await asyncio.sleep(0)

            asyncio.run(main())
        if isinstance(self.error, BaseException):
            raise self.error
        assert self.error is None, self.error
        assert self.finished
        return self


# -- the basic lifecycle ----------------------------------------------------------------------


def _lifecycle(s: Script, conn) -> None:
    """connect → channel → confirm.select → declare → publish N with confirms → consume → ack → verify empty."""
    n = 10
    q = uid("async-q")
    state = {"acked": set(), "received": []}

    def on_channel(ch):
        s.events.append("channel")
        ch.confirm_delivery(s.guard(on_confirm), callback=s.guard(lambda _f: declare(ch)))

    def declare(ch):
        s.events.append("confirm-select-ok")
        ch.queue_declare(q, exclusive=True, callback=s.guard(lambda frame: declared(ch, frame)))

    def declared(ch, frame):
        assert frame.method.queue == q
        assert frame.method.message_count == 0 and frame.method.consumer_count == 0
        s.events.append("declared")
        for i in range(n):
            ch.basic_publish(
                "", q, f"m{i}".encode(), pika.BasicProperties(message_id=str(i), delivery_mode=2)
            )

    def on_confirm(frame):
        m = frame.method
        assert isinstance(m, pika.spec.Basic.Ack), m
        tags = range(1, m.delivery_tag + 1) if m.multiple else [m.delivery_tag]
        state["acked"].update(tags)
        if len(state["acked"]) == n:
            assert state["acked"] == set(range(1, n + 1))
            s.events.append("all-confirmed")
            consume(s.channel)

    def consume(ch):
        ch.basic_qos(
            prefetch_count=3,
            callback=s.guard(
                lambda _f: ch.basic_consume(q, s.guard(lambda c, m, p, b: on_message(c, m, p, b)))
            ),
        )

    def on_message(ch, method, props, body):
        state["received"].append((body, props.message_id, method.redelivered))
        ch.basic_ack(method.delivery_tag)
        if len(state["received"]) == n:
            assert [b for b, _, _ in state["received"]] == [f"m{i}".encode() for i in range(n)]
            assert [mid for _, mid, _ in state["received"]] == [str(i) for i in range(n)]
            assert not any(r for _, _, r in state["received"])
            # Acks are asynchronous; a passive declare on the same channel is processed after them.
            ch.queue_declare(q, passive=True, callback=s.guard(verify_empty))

    def verify_empty(frame):
        assert frame.method.message_count == 0
        assert frame.method.consumer_count == 1
        s.events.append("verified")
        s.done()

    def on_channel_wrapper(ch):
        s.channel = ch
        on_channel(ch)

    conn.channel(on_open_callback=s.guard(on_channel_wrapper))


def test_select_connection_lifecycle(node):
    s = Script(node, _lifecycle).run()
    assert isinstance(s.closed_reason, pex.ConnectionClosedByClient)
    assert s.closed_reason.reply_code == 200
    assert s.events[-1] == "verified"


def test_asyncio_connection_lifecycle(node):
    s = Script(node, _lifecycle, adapter="asyncio").run()
    assert isinstance(s.closed_reason, pex.ConnectionClosedByClient)
    assert s.events[-1] == "verified"


# -- returns, cancels, broker-closed channels -------------------------------------------------


def test_mandatory_return_arrives_before_confirm(node):
    order = []

    def start(s, conn):
        def on_channel(ch):
            ch.add_on_return_callback(
                s.guard(
                    lambda c, method, props, body: order.append(("return", method.reply_code, body))
                )
            )
            ch.confirm_delivery(
                s.guard(on_confirm),
                callback=s.guard(
                    lambda _f: ch.basic_publish(
                        "amq.direct", uid("nobody"), b"bounce", mandatory=True
                    )
                ),
            )

        def on_confirm(frame):
            order.append(
                (
                    "ack" if isinstance(frame.method, pika.spec.Basic.Ack) else "nack",
                    frame.method.delivery_tag,
                )
            )
            s.done()

        conn.channel(on_open_callback=s.guard(on_channel))

    Script(node, start).run()
    # RabbitMQ sends basic.return before the basic.ack of an unroutable mandatory message.
    assert order == [("return", 312, b"bounce"), ("ack", 1)]


def test_consumer_cancel_notification(node):
    got = {}

    def start(s, conn):
        q = uid("cancel-q")

        def on_channel(ch):
            ch.add_on_cancel_callback(s.guard(on_cancel))
            ch.queue_declare(q, callback=s.guard(lambda _f: subscribe(ch)))

        def subscribe(ch):
            got["tag"] = ch.basic_consume(
                q, lambda *a: None, callback=s.guard(lambda _f: delete_elsewhere())
            )

        def delete_elsewhere():
            conn.channel(on_open_callback=s.guard(lambda ch2: ch2.queue_delete(q)))

        def on_cancel(frame):
            got["cancelled"] = frame.method.consumer_tag
            s.done()

        conn.channel(on_open_callback=s.guard(on_channel))

    Script(node, start).run()
    assert got["cancelled"] == got["tag"]


def test_channel_closed_by_broker_keeps_connection(node):
    seen = {}

    def start(s, conn):
        def on_channel(ch):
            ch.add_on_close_callback(s.guard(on_channel_closed))
            ch.queue_declare(uid("missing"), passive=True)

        def on_channel_closed(ch, reason):
            seen["reason"] = reason
            # The connection is still usable.
            conn.channel(
                on_open_callback=s.guard(
                    lambda ch2: ch2.queue_declare(
                        "",
                        exclusive=True,
                        callback=s.guard(
                            lambda f: (seen.setdefault("q", f.method.queue), s.done())
                        ),
                    )
                )
            )

        conn.channel(on_open_callback=s.guard(on_channel))

    s = Script(node, start).run()
    assert isinstance(seen["reason"], pex.ChannelClosedByBroker)
    assert seen["reason"].reply_code == 404
    assert seen["q"].startswith("amq.gen-")
    assert isinstance(s.closed_reason, pex.ConnectionClosedByClient)


def test_nack_requeue_redelivers_in_order(node):
    got = []

    def start(s, conn):
        q = uid("nack-q")

        def on_channel(ch):
            ch.confirm_delivery(
                lambda f: None,
                callback=s.guard(
                    lambda _f: ch.queue_declare(
                        q, exclusive=True, callback=s.guard(lambda _f2: publish(ch))
                    )
                ),
            )

        def publish(ch):
            for b in (b"a", b"b", b"c"):
                ch.basic_publish("", q, b)
            ch.basic_qos(
                prefetch_count=1,
                callback=s.guard(lambda _f: ch.basic_consume(q, s.guard(on_message))),
            )

        def on_message(ch, method, props, body):
            got.append((body, method.redelivered))
            if body == b"a" and not method.redelivered:
                ch.basic_nack(method.delivery_tag, requeue=True)
                return
            ch.basic_ack(method.delivery_tag)
            if len(got) == 4:
                s.done()

        conn.channel(on_open_callback=s.guard(on_channel))

    Script(node, start).run()
    assert got == [(b"a", False), (b"a", True), (b"b", False), (b"c", False)]


def test_wrong_password_open_error(node):
    errors = []

    def on_error(conn, err):
        errors.append(err)
        conn.ioloop.stop()

    params = pika.URLParameters(f"amqp://guest:bad@127.0.0.1:{node.port}/")
    conn = pika.SelectConnection(
        params, on_open_callback=lambda c: c.ioloop.stop(), on_open_error_callback=on_error
    )
    conn.ioloop.call_later(5, conn.ioloop.stop)
    conn.ioloop.start()
    assert len(errors) == 1
    assert isinstance(errors[0], pex.ProbableAuthenticationError)
    assert "403" in str(errors[0])
