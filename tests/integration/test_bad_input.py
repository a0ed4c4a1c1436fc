"""Malformed input on a raw socket: each case must end in the reply RabbitMQ sends, and must neither
take the node down nor disturb other connections (checked with pika after every test)."""

from __future__ import annotations

import socket
import struct
import time
import uuid

import pika
import pytest

from merpati.node.amqp091 import spec
from merpati.node.amqp091.render import method_frame

HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = b"\xce"


def frame(ftype: int, channel: int, payload: bytes, end: bytes = FRAME_END) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + end


def method(channel: int, name: str, **fields) -> bytes:
    return method_frame(channel, spec.BY_NAME[name](**fields))


def content_header(channel: int, body_size: int, props: bytes = b"\x00\x00") -> bytes:
    return frame(2, channel, struct.pack(">HHQ", 60, 0, body_size) + props)


def body(channel: int, data: bytes) -> bytes:
    return frame(3, channel, data)


class Raw:
    """A hand-driven AMQP 0-9-1 client on a plain socket."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed with {len(self.buf)} of {n} bytes buffered")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> tuple[int, int, bytes]:
        ftype, channel, size = struct.unpack(">BHI", self._recv_exact(7))
        payload = self._recv_exact(size)
        end = self._recv_exact(1)
        assert end == FRAME_END, f"server sent a bad frame end {end!r}"
        return ftype, channel, payload

    def read_method(self) -> tuple[int, object]:
        while True:
            ftype, channel, payload = self.read_frame()
            if ftype == 1:
                return channel, spec.decode_method(payload)
            # heartbeats, content frames of deliveries: skip

    def expect(self, name: str, channel: int | None = None):
        ch, m = self.read_method()
        assert name == m.NAME, f"expected {name}, got {m}"
        if channel is not None:
            assert ch == channel
        return m

    def handshake(
        self,
        *,
        frame_max: int = 0,
        capabilities: dict | None = None,
        response: bytes = b"\x00guest\x00guest",
        open_vhost: bool = True,
    ):
        self.send(HEADER)
        start = self.expect("connection.start", 0)
        assert b"PLAIN" in start.mechanisms.split(b" ")
        caps = {"authentication_failure_close": True, "publisher_confirms": True}
        if capabilities is not None:
            caps = capabilities
        self.send(
            method(
                0,
                "connection.start-ok",
                client_properties={"product": "merpati-raw-test", "capabilities": caps},
                mechanism="PLAIN",
                response=response,
                locale="en_US",
            )
        )
        tune = self.expect("connection.tune", 0)
        fm = frame_max or tune.frame_max
        self.frame_max = fm
        self.send(
            method(0, "connection.tune-ok", channel_max=tune.channel_max, frame_max=fm, heartbeat=0)
        )
        if open_vhost:
            self.send(method(0, "connection.open", virtual_host="/"))
            self.expect("connection.open-ok", 0)
        return tune

    def open_channel(self, ch: int = 1) -> None:
        self.send(method(ch, "channel.open"))
        self.expect("channel.open-ok", ch)

    def expect_connection_close(self):
        """Read until connection.close; answer close-ok; the server must then close the socket."""
        while True:
            ch, m = self.read_method()
            if ch == 0 and m.NAME == "connection.close":
                break
            assert m.NAME not in ("connection.close-ok",), m
        try:
            self.send(method(0, "connection.close-ok"))
        except OSError:
            pass  # a server may close right after connection.close on a frame error
        self.assert_eof()
        return m

    def assert_eof(self, timeout: float = 5.0) -> bytes:
        """Everything the server still sends until it closes the socket (fails if it doesn't)."""
        self.sock.settimeout(timeout)
        rest = self.buf
        self.buf = b""
        deadline = time.monotonic() + timeout
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return rest
            except TimeoutError:
                pytest.fail(f"server did not close the socket within {timeout}s (got {rest!r})")
            if not chunk:
                return rest
            rest += chunk
            if time.monotonic() > deadline:
                pytest.fail("server kept sending and did not close")


@pytest.fixture
def raw(node):
    clients: list[Raw] = []

    def factory() -> Raw:
        c = Raw(node.port)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        c.close()


def _pika_roundtrip(conn: pika.BlockingConnection, n: int = 3) -> None:
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(n):
        ch.basic_publish("", q, f"m{i}".encode())
    got = []
    for _ in range(n):
        m, _props, b = ch.basic_get(q, auto_ack=True)
        assert m is not None, "message published with a confirm is missing"
        got.append(b)
    assert got == [f"m{i}".encode() for i in range(n)]
    ch.close()


@pytest.fixture(autouse=True)
def node_survives(node):
    """A bystander connection opened before each test must still work after it, as must new ones."""
    log_start = len(node.log())
    bystander = pika.BlockingConnection(pika.URLParameters(node.url))
    yield
    assert node.alive(), node.log()
    _pika_roundtrip(bystander)
    bystander.close()
    fresh = pika.BlockingConnection(pika.URLParameters(node.url))
    _pika_roundtrip(fresh)
    fresh.close()
    new_log = node.log()[log_start:]
    assert "Traceback" not in new_log, new_log


# -- protocol header -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "greeting",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"AMQP\x00\x00\x0a\x00",  # a version we do not speak (0-10)
        b"AMQP\x01\x01\x00\x09",  # the pre-0-9-1 "AMQP 1 1 0 9" form
        b"XXXXXXXX",
    ],
)
def test_wrong_protocol_header_gets_ours_and_close(raw, greeting):
    c = raw()
    c.send(greeting)
    assert c.assert_eof() == HEADER


def test_header_split_over_several_writes_is_accepted(raw):
    c = raw()
    for b in HEADER:
        c.send(bytes([b]))
        time.sleep(0.01)
    c.expect("connection.start", 0)


# -- frame envelope errors: 501 ------------------------------------------------------------------


def test_frame_larger_than_negotiated_frame_max_is_501(raw):
    c = raw()
    c.handshake(frame_max=8192)
    c.open_channel(1)
    payload = b"\x00" * 9000  # > 8192 - 8
    c.send(frame(3, 1, payload))
    close = c.expect_connection_close()
    assert close.reply_code == 501, close
    assert close.reply_text.startswith("FRAME_ERROR")


def test_frame_size_field_far_beyond_frame_max_is_501_without_waiting_for_payload(raw):
    c = raw()
    c.handshake()
    # Only the 7-byte header of a 2 GiB frame: the server must not wait for (or buffer) it.
    c.send(struct.pack(">BHI", 1, 0, 0x7FFFFFFF))
    close = c.expect_connection_close()
    assert close.reply_code == 501, close


def test_frame_of_exactly_frame_max_is_accepted(raw):
    c = raw()
    c.handshake(frame_max=4096)
    c.open_channel(1)
    q = f"raw-fm-{uuid.uuid4().hex[:8]}"
    c.send(method(1, "queue.declare", queue=q, exclusive=True))
    c.expect("queue.declare-ok", 1)
    c.send(method(1, "confirm.select"))
    c.expect("confirm.select-ok", 1)
    data = b"x" * (4096 - 8)  # the largest body frame allowed
    c.send(
        method(1, "basic.publish", exchange="", routing_key=q)
        + content_header(1, len(data))
        + body(1, data)
    )
    ack = c.expect("basic.ack", 1)
    assert ack.delivery_tag == 1
    c.send(method(1, "basic.get", queue=q, no_ack=True))
    c.expect("basic.get-ok", 1)
    ftype, _, _ = c.read_frame()
    assert ftype == 2
    got = b""
    while len(got) < len(data):
        ftype, _, chunk = c.read_frame()
        assert ftype == 3
        assert len(chunk) <= 4096 - 8, "server sent a frame larger than the negotiated frame_max"
        got += chunk
    assert got == data


def test_bad_frame_end_octet_is_501(raw):
    c = raw()
    c.handshake()
    c.send(frame(1, 1, spec.encode_method(spec.BY_NAME["channel.open"]()), end=b"\x00"))
    close = c.expect_connection_close()
    assert close.reply_code == 501, close


def test_bad_frame_end_during_handshake_is_501(raw):
    c = raw()
    c.send(HEADER)
    c.expect("connection.start", 0)
    ok = spec.encode_method(
        spec.BY_NAME["connection.start-ok"](
            client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest", locale="en_US"
        )
    )
    c.send(frame(1, 0, ok, end=b"\xcf"))
    close = c.expect_connection_close()
    assert close.reply_code == 501, close


@pytest.mark.parametrize("ftype", [0, 4, 5, 7, 9, 0xCE, 0xFF])
def test_unknown_frame_type_is_501(raw, ftype):
    c = raw()
    c.handshake()
    c.send(frame(ftype, 0, b"abc"))
    close = c.expect_connection_close()
    assert close.reply_code == 501, close


def test_heartbeat_on_a_nonzero_channel_is_505(raw):
    # RabbitMQ (rabbit_reader:handle_frame) answers unexpected_frame, not the spec's 501.
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(frame(8, 1, b""))
    close = c.expect_connection_close()
    assert close.reply_code == 505, close


# -- channel and content errors: 504/505 ---------------------------------------------------------


def test_method_on_a_channel_never_opened_is_504(raw):
    c = raw()
    c.handshake()
    c.send(method(7, "queue.declare", queue="", exclusive=True))
    close = c.expect_connection_close()
    assert close.reply_code == 504, close
    assert (close.class_id, close.method_id) == (50, 10)


def test_publish_on_a_channel_never_opened_is_504(raw):
    c = raw()
    c.handshake()
    c.send(
        method(3, "basic.publish", exchange="", routing_key="x")
        + content_header(3, 1)
        + body(3, b"x")
    )
    close = c.expect_connection_close()
    assert close.reply_code == 504, close


def test_second_channel_open_on_an_open_channel_is_504(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(method(1, "channel.open"))
    close = c.expect_connection_close()
    assert close.reply_code == 504, close
    assert (close.class_id, close.method_id) == (20, 10)


def test_content_body_longer_than_header_announced_closes_connection(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(
        method(1, "basic.publish", exchange="", routing_key="nowhere")
        + content_header(1, 5)
        + body(1, b"0123456789")
    )
    close = c.expect_connection_close()
    assert close.reply_code in (501, 505), close


def test_content_header_without_publish_is_505(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(content_header(1, 3))
    close = c.expect_connection_close()
    assert close.reply_code == 505, close


def test_content_body_without_publish_is_505(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(body(1, b"stray"))
    close = c.expect_connection_close()
    assert close.reply_code == 505, close


def test_method_where_content_header_expected_is_505(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(
        method(1, "basic.publish", exchange="", routing_key="x")
        + method(1, "basic.qos", prefetch_count=1)
    )
    close = c.expect_connection_close()
    assert close.reply_code == 505, close


def test_content_header_with_wrong_class_closes_with_5xx(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(
        method(1, "basic.publish", exchange="", routing_key="x")
        + frame(2, 1, struct.pack(">HHQ", 50, 0, 1) + b"\x00\x00")
    )
    close = c.expect_connection_close()
    assert 500 <= close.reply_code < 600, close


def test_malformed_properties_with_user_id_flag_is_a_frame_error_not_an_internal_error(raw):
    # Flags announce user_id (0x0010) but the property list is empty. RabbitMQ decodes the
    # properties of every publish and answers a decode failure with a frame error.
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(
        method(1, "basic.publish", exchange="", routing_key="nowhere")
        + content_header(1, 1, props=b"\x00\x10")
        + body(1, b"x")
    )
    close = c.expect_connection_close()
    assert close.reply_code in (501, 502), close


def test_malformed_properties_never_reach_a_consumer(raw, node):
    # Flags announce content_type (0x8000) but no shortstr follows. Accepting this message would
    # hand every consumer of the queue a content header it cannot parse.
    q = f"raw-badprops-{uuid.uuid4().hex[:8]}"
    good = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = good.channel()
    ch.queue_declare(q, auto_delete=False)
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(
        method(1, "basic.publish", exchange="", routing_key=q)
        + content_header(1, 3, props=b"\x80\x00")
        + body(1, b"bad")
        + method(1, "basic.qos", prefetch_count=1)
    )
    _, reply = c.read_method()
    assert reply.NAME == "connection.close", f"the publish was accepted (got {reply.NAME})"
    assert reply.reply_code in (501, 502), reply
    m, _props, _body = ch.basic_get(q, auto_ack=True)
    assert m is None, "a message with undecodable properties was enqueued"
    ch.queue_delete(q)
    good.close()


# -- method decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [(60, 999), (77, 10), (10, 12), (0, 0)])
def test_unknown_method_is_a_5xx_connection_close(raw, ids):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(frame(1, 1, struct.pack(">HH", *ids) + b"\x00\x00"))
    close = c.expect_connection_close()
    assert 500 <= close.reply_code < 600, close


def test_truncated_method_arguments_are_501(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    full = spec.encode_method(
        spec.BY_NAME["queue.declare"](queue="some-queue-name", arguments={"x-max-length": 10})
    )
    c.send(frame(1, 1, full[:12]))
    close = c.expect_connection_close()
    assert close.reply_code == 501, close


def test_truncated_basic_publish_is_501(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    full = spec.encode_method(
        spec.BY_NAME["basic.publish"](exchange="amq.direct", routing_key="rk")
    )
    c.send(frame(1, 1, full[:8]))
    close = c.expect_connection_close()
    assert close.reply_code == 501, close


def test_method_frame_shorter_than_its_ids_is_501(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(frame(1, 1, b"\x00\x32"))
    close = c.expect_connection_close()
    assert close.reply_code == 501, close


def test_field_table_with_bad_type_letter_is_a_5xx_close(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    table = b"\x01kZ"  # key "k", unknown type letter 'Z'
    payload = (
        struct.pack(">HHH", 50, 10, 0) + b"\x01q" + b"\x00" + struct.pack(">I", len(table)) + table
    )
    c.send(frame(1, 1, payload))
    close = c.expect_connection_close()
    assert close.reply_code in (501, 502), close


def test_trailing_garbage_after_arguments_is_501(raw):
    c = raw()
    c.handshake()
    c.open_channel(1)
    c.send(frame(1, 1, spec.encode_method(spec.BY_NAME["basic.qos"](prefetch_count=1)) + b"junk"))
    close = c.expect_connection_close()
    assert close.reply_code == 501, close


# -- authentication ------------------------------------------------------------------------------


def test_bad_password_with_authentication_failure_close_is_403_naming_user_not_password(raw):
    c = raw()
    c.send(HEADER)
    c.expect("connection.start", 0)
    secret = "hunter2-" + uuid.uuid4().hex[:6]
    c.send(
        method(
            0,
            "connection.start-ok",
            client_properties={"capabilities": {"authentication_failure_close": True}},
            mechanism="PLAIN",
            response=b"\x00guest\x00" + secret.encode(),
            locale="en_US",
        )
    )
    close = c.expect_connection_close()
    assert close.reply_code == 403, close
    assert (close.class_id, close.method_id) == (10, 11)
    assert "guest" in close.reply_text
    assert secret not in close.reply_text
    assert close.reply_text.startswith("ACCESS_REFUSED")


def test_unknown_user_with_authentication_failure_close_is_403(raw, node):
    c = raw()
    c.send(HEADER)
    c.expect("connection.start", 0)
    c.send(
        method(
            0,
            "connection.start-ok",
            client_properties={"capabilities": {"authentication_failure_close": True}},
            mechanism="PLAIN",
            response=b"\x00nobody-here\x00pw-do-not-log",
            locale="en_US",
        )
    )
    close = c.expect_connection_close()
    assert close.reply_code == 403, close
    assert "nobody-here" in close.reply_text
    assert "pw-do-not-log" not in close.reply_text
    assert "pw-do-not-log" not in node.log()


def test_bad_password_without_the_capability_just_closes_the_socket(raw):
    c = raw()
    c.send(HEADER)
    c.expect("connection.start", 0)
    c.send(
        method(
            0,
            "connection.start-ok",
            client_properties={},
            mechanism="PLAIN",
            response=b"\x00guest\x00wrong",
            locale="en_US",
        )
    )
    rest = c.assert_eof()
    assert rest == b"", "no connection.tune (or anything else) may follow a failed login"


def test_pika_gets_probable_authentication_error(node):
    params = pika.URLParameters(f"amqp://guest:wrong@127.0.0.1:{node.port}/")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as ei:
        pika.BlockingConnection(params)
    assert "403" in str(ei.value) or "ACCESS_REFUSED" in str(ei.value)


def test_unsupported_mechanism_is_refused(raw):
    c = raw()
    c.send(HEADER)
    c.expect("connection.start", 0)
    c.send(
        method(
            0,
            "connection.start-ok",
            client_properties={"capabilities": {"authentication_failure_close": True}},
            mechanism="EXTERNAL",
            response=b"",
            locale="en_US",
        )
    )
    close = c.expect_connection_close()
    assert close.reply_code in (403, 504, 530), close


def test_method_out_of_order_during_handshake_closes_with_5xx(raw):
    c = raw()
    c.send(HEADER)
    c.expect("connection.start", 0)
    c.send(method(0, "connection.open", virtual_host="/"))
    close = c.expect_connection_close()
    assert 500 <= close.reply_code < 600, close


def test_open_of_unknown_vhost_is_530(raw):
    c = raw()
    c.handshake(open_vhost=False)
    c.send(method(0, "connection.open", virtual_host="no-such-vhost"))
    close = c.expect_connection_close()
    assert close.reply_code == 530, close


def test_tune_ok_frame_max_above_server_max_is_530(raw):
    c = raw()
    c.send(HEADER)
    c.expect("connection.start", 0)
    c.send(
        method(
            0,
            "connection.start-ok",
            client_properties={},
            mechanism="PLAIN",
            response=b"\x00guest\x00guest",
            locale="en_US",
        )
    )
    tune = c.expect("connection.tune", 0)
    c.send(
        method(0, "connection.tune-ok", channel_max=0, frame_max=tune.frame_max + 1, heartbeat=0)
    )
    close = c.expect_connection_close()
    assert close.reply_code == 530, close


def test_many_bad_connections_in_a_row_leave_the_node_usable(raw, node):
    for i in range(30):
        c = raw()
        c.handshake()
        c.send(frame(1, 1 + i, b"\xff" * (i % 7)))
        c.expect_connection_close()
    assert node.alive()


def test_a_client_that_never_reads_its_socket_is_disconnected_at_the_output_bound(make_node):
    # Every publish is mandatory and unroutable, so the node answers each with basic.return;
    # the client never reads them. Past one largest message (64 KiB here) plus OUTPUT_SLACK of
    # unread output the node drops the connection instead of buffering without end.
    node = make_node("--max-message-size", "65536")
    c = Raw(node.port)
    c.handshake()
    c.open_channel(1)
    c.sock.settimeout(10)
    payload = b"r" * 60000
    publish = (
        method(1, "basic.publish", exchange="", routing_key="nowhere", mandatory=True)
        + content_header(1, len(payload))
        + body(1, payload)
    )
    sent = 0
    with pytest.raises(OSError):
        while sent < 3000:  # 180 MB at most; the bound is about 16 MB
            c.sock.sendall(publish)
            sent += 1
    assert "were not read" in node.log(), f"still connected after {sent} publishes"
    c.close()
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    assert conn.channel().queue_declare("", exclusive=True).method.queue
    conn.close()
