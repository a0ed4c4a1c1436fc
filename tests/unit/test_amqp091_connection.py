"""The AMQP 0-9-1 connection state machine in memory: client frames in, server frames out.

A `Client` (tests/support/amqp091.py) feeds bytes to a `Connection091` whose transport shell is
fake, over a `Broker` with its in-memory metadata log. What these tests pin is what a client sees
on the wire: the handshake's frames and negotiation, and the connection-level errors (reply code,
and the class/method they blame) with the connection's state after them.
"""

from __future__ import annotations

from tests.support.amqp091 import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    NOT_ALLOWED,
    PROTOCOL_HEADER,
    UNEXPECTED_FRAME,
    Client,
    Settings,
    in_loop,
    new_broker,
    raw_frame,
    render,
    spec,
)


def connection_close(frames) -> object:
    """The single connection.close among `frames` (on channel 0)."""
    closes = [f for f in frames if f.is_(spec.ConnectionClose)]
    assert len(closes) == 1 and closes[0].channel == 0, [f.name for f in frames]
    return closes[0].method


@in_loop
async def test_handshake_negotiates_and_opens() -> None:
    c = Client(await new_broker())
    start = c.feed(PROTOCOL_HEADER)
    assert [f.name for f in start] == ["connection.start"]
    m = start[0].method
    assert (m.version_major, m.version_minor) == (0, 9)
    assert m.mechanisms == b"PLAIN AMQPLAIN"
    assert m.server_properties["capabilities"]["publisher_confirms"] is True
    assert c.conn.state == "start-ok"

    tune = c.send(
        0,
        spec.ConnectionStartOk(
            client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest"
        ),
    )
    assert [f.name for f in tune] == ["connection.tune"]
    assert tune[0].method == spec.ConnectionTune(channel_max=2047, frame_max=131072, heartbeat=60)

    # tune-ok has no reply; the client's (smaller) limits are what the connection uses.
    assert c.send(0, spec.ConnectionTuneOk(channel_max=10, frame_max=8192, heartbeat=30)) == []
    assert (c.conn.channel_max, c.conn.frame_max, c.conn.heartbeat) == (10, 8192, 30)

    opened = c.send(0, spec.ConnectionOpen(virtual_host="/"))
    assert [f.name for f in opened] == ["connection.open-ok"]
    assert c.conn.state == "running" and c.conn.user == "guest" and c.conn.vhost == "/"
    assert c.conn in c.broker.connections


@in_loop
async def test_header_may_arrive_in_pieces() -> None:
    c = Client(await new_broker())
    assert c.feed(PROTOCOL_HEADER[:3]) == []
    assert c.feed(PROTOCOL_HEADER[3:7]) == []
    assert [f.name for f in c.feed(PROTOCOL_HEADER[7:])] == ["connection.start"]


@in_loop
async def test_unsupported_protocol_header_gets_ours_and_a_close() -> None:
    c = Client(await new_broker())
    out = c.feed(b"AMQP\x00\x00\x08\x00")  # 0-8
    assert [f.name for f in out] == ["protocol-header"]
    assert out[0].payload == PROTOCOL_HEADER
    assert c.conn.state == "closed" and c.shell.closed


@in_loop
async def test_bad_password_with_failure_close_capability_is_403() -> None:
    c = Client(await new_broker())
    out = c.handshake(password="wrong")
    close = connection_close(out)
    assert close.reply_code == 403 and (close.class_id, close.method_id) == (10, 11)
    assert "ACCESS_REFUSED" in close.reply_text
    assert c.conn.state == "closing" and c.shell.close_after == c.conn.settings.close_timeout


@in_loop
async def test_bad_password_without_the_capability_just_closes_the_socket() -> None:
    c = Client(await new_broker())
    out = c.handshake(password="wrong", capabilities={})
    assert [f.name for f in out] == ["connection.start"]
    assert c.conn.state == "closed" and c.shell.closed


@in_loop
async def test_guest_only_from_loopback() -> None:
    c = Client(await new_broker(), loopback=False, peer=("192.0.2.7", 40000))
    close = connection_close(c.handshake())
    assert close.reply_code == 403 and "only connect via localhost" in close.reply_text


@in_loop
async def test_unknown_vhost_is_530_on_open() -> None:
    c = Client(await new_broker())
    close = connection_close(c.handshake(vhost="nowhere"))
    assert close.reply_code == NOT_ALLOWED and (close.class_id, close.method_id) == (10, 40)


@in_loop
async def test_frame_max_below_the_minimum_is_530() -> None:
    c = Client(await new_broker())
    close = connection_close(c.handshake(frame_max=1024))
    assert close.reply_code == NOT_ALLOWED and "frame_max=1024" in close.reply_text


@in_loop
async def test_wrong_method_during_handshake_is_503() -> None:
    c = Client(await new_broker())
    c.feed(PROTOCOL_HEADER)
    close = connection_close(c.send(0, spec.ConnectionOpen(virtual_host="/")))
    assert close.reply_code == COMMAND_INVALID
    assert "expected 'connection.start-ok'" in close.reply_text


@in_loop
async def test_client_close_gets_close_ok_and_releases_everything() -> None:
    c = Client(await new_broker())
    c.open(1, 2)
    out = c.send(0, spec.ConnectionClose(reply_code=200, reply_text="bye"))
    assert [f.name for f in out] == ["connection.close-ok"]
    assert c.conn.state == "closed" and c.shell.closed
    assert c.conn.channels == {} and c.conn not in c.broker.connections


@in_loop
async def test_bad_frame_end_octet_is_501_and_closes_at_once() -> None:
    c = Client(await new_broker())
    c.open()
    out = c.feed(raw_frame(FRAME_METHOD, 1, b"\x00\x14\x00\x28", end=0x00))
    close = connection_close(out)
    assert close.reply_code == FRAME_ERROR and "frame end octet" in close.reply_text
    # Malformed input: no waiting for close-ok, the rest of the stream is not read.
    assert c.conn.state == "closed" and c.shell.closed and c.shell.close_after == 0.0


@in_loop
async def test_frame_larger_than_frame_max_is_501() -> None:
    c = Client(await new_broker(), settings=Settings(frame_max=4096))
    c.open()
    close = connection_close(c.feed(raw_frame(FRAME_METHOD, 1, b"\x00" * 4097)))
    assert (
        close.reply_code == FRAME_ERROR and "exceeds the negotiated frame_max" in close.reply_text
    )


@in_loop
async def test_a_payload_of_frame_max_octets_is_accepted_as_rabbitmq_does() -> None:
    """amqpstorm splits bodies into payloads of frame_max octets (not frame_max - 8)."""
    c = Client(await new_broker(), settings=Settings(frame_max=4096))
    c.handshake(frame_max=4096)
    c.send(1, spec.ChannelOpen())
    c.send(1, spec.QueueDeclare(queue="big"))
    body = bytes(range(256)) * 32  # 8192 octets: two body frames of 4096 octets of payload
    frames = render.content_frames(1, b"\x00\x00", body, 4096 + 8)
    assert len(frames) == 3 + 6  # the header, then two bodies (3 parts each)
    publish = spec.BasicPublish(exchange="", routing_key="big")
    out = c.feed(render.method_frame(1, publish) + b"".join(frames))
    assert not [f for f in out if f.is_(spec.ConnectionClose)]
    got = c.send(1, spec.BasicGet(queue="big", no_ack=True))
    assert [f.body for f in got if f.is_(spec.BasicGetOk)] == [body]


@in_loop
async def test_unknown_frame_type_is_501() -> None:
    c = Client(await new_broker())
    c.open()
    close = connection_close(c.feed(raw_frame(7, 0, b"")))
    assert close.reply_code == FRAME_ERROR and "unknown frame type 7" in close.reply_text


@in_loop
async def test_content_header_without_publish_is_505() -> None:
    c = Client(await new_broker())
    c.open()
    close = connection_close(c.feed(raw_frame(FRAME_HEADER, 1, b"\x00\x3c" + b"\x00" * 12)))
    assert close.reply_code == UNEXPECTED_FRAME


@in_loop
async def test_method_where_content_was_due_is_505() -> None:
    c = Client(await new_broker())
    c.open()
    c.publish_method(1, "", "q")
    close = connection_close(c.send(1, spec.BasicQos(prefetch_count=1)))
    assert close.reply_code == UNEXPECTED_FRAME and "expected a content header" in close.reply_text


@in_loop
async def test_heartbeat_on_a_channel_is_505() -> None:
    c = Client(await new_broker())
    c.open()
    close = connection_close(c.feed(raw_frame(FRAME_HEARTBEAT, 3, b"")))
    assert close.reply_code == UNEXPECTED_FRAME


@in_loop
async def test_truncated_method_arguments_are_501_naming_the_method() -> None:
    c = Client(await new_broker())
    c.open()
    close = connection_close(c.feed(raw_frame(FRAME_METHOD, 1, b"\x00\x32\x00\x0a\x00")))
    assert close.reply_code == FRAME_ERROR and "queue.declare" in close.reply_text
    assert (close.class_id, close.method_id) == (50, 10)


@in_loop
async def test_unknown_method_is_503() -> None:
    c = Client(await new_broker())
    c.open()
    close = connection_close(c.feed(raw_frame(FRAME_METHOD, 1, b"\x00\x63\x00\x01")))
    assert close.reply_code == COMMAND_INVALID and (close.class_id, close.method_id) == (99, 1)


@in_loop
async def test_method_on_a_channel_never_opened_is_504() -> None:
    c = Client(await new_broker())
    c.open()
    close = connection_close(c.send(5, spec.QueueDeclare(queue="q")))
    assert close.reply_code == CHANNEL_ERROR and "expected 'channel.open'" in close.reply_text


@in_loop
async def test_after_server_close_only_close_ok_counts() -> None:
    c = Client(await new_broker())
    c.open()
    connection_close(c.send(7, spec.ChannelFlow(active=True)))  # 504: channel 7 never opened
    assert c.conn.state == "closing"
    assert c.send(1, spec.QueueDeclare(queue="ignored")) == []  # discarded while closing
    assert c.broker.state.queue("/", "ignored") is None
    assert c.send(0, spec.ConnectionCloseOk()) == []
    assert c.conn.state == "closed" and c.shell.closed


@in_loop
async def test_heartbeat_tick_sends_heartbeats_and_gives_up_on_a_silent_peer() -> None:
    c = Client(await new_broker())
    c.handshake(heartbeat=10)
    c.take()
    assert c.conn.tick_interval == 2.5  # a quarter of the interval
    assert c.conn.heartbeat_tick()  # the handshake was activity both ways: nothing to send
    assert c.take() == []
    # Idle: a heartbeat every tick, our own heartbeats not counting as traffic.
    for _ in range(6):
        assert c.conn.heartbeat_tick()
        assert [(f.name, f.channel) for f in c.take()] == [("heartbeat", 0)]
    # Ticks 4 and 8 check the peer: the handshake counted at 4; 8 is the first silent check.
    for _ in range(4):
        assert c.conn.heartbeat_tick()  # ticks 8, 9, 10, 11
    assert not c.conn.heartbeat_tick()  # tick 12: the second silent check in a row
    assert c.conn.state == "closed"


@in_loop
async def test_a_peer_that_only_answers_heartbeats_stays_connected() -> None:
    """@cloudamqp/amqp-client sends nothing but its answers to the server's heartbeats."""
    c = Client(await new_broker())
    c.handshake(heartbeat=1)
    c.take()
    for _ in range(40):  # 20 intervals
        assert c.conn.heartbeat_tick()
        if any(f.name == "heartbeat" for f in c.take()):
            c.feed(raw_frame(FRAME_HEARTBEAT, 0, b""))
    assert c.conn.state == "running"
