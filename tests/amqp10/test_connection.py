"""The AMQP 1.0 state machine without sockets: errors the real clients never provoke."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merpati.node.amqp10 import performatives as P
from merpati.node.amqp10.codec import Symbol
from merpati.node.amqp10.connection import Connection10, Settings10
from merpati.node.broker import Broker, hash_password
from merpati.node.metadata import commands as cmds

from ._support import frame


class Shell:
    def __init__(self) -> None:
        self.closed = False
        self.reading = True

    def schedule_flush(self) -> None:
        pass

    def close(self, after: float = 0.0) -> None:
        self.closed = True

    def set_reading(self, on: bool) -> None:
        self.reading = on


def frames(data: bytes) -> list:
    out = []
    while data.startswith(b"AMQP"):
        data = data[8:]
    while data:
        size, doff = struct.unpack_from(">IB", data)
        body = data[doff * 4 : size]
        if body:
            out.append(P.decode_body(body)[0])
        data = data[size:]
    return out


@pytest.fixture
def conn():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield logged_in()
    loop.close()


def logged_in() -> Connection10:
    broker = Broker("n1")
    for cmd in (
        cmds.AddVhost("/"),
        cmds.PutUser("guest", hash_password("guest"), ("administrator",)),
        cmds.SetPermissions("guest", "/"),
        cmds.DeclareQueue("/", "q", leader="n1"),
    ):
        broker.metadata.apply(cmd)
    c = Connection10(broker, Shell(), ("127.0.0.1", 1), True, Settings10(frame_max=4096))
    c.data_received(b"AMQP\x03\x01\x00\x00")
    c.data_received(
        frame(0, P.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\0guest\0guest"), ftype=1)
    )
    c.data_received(
        b"AMQP\x00\x01\x00\x00" + frame(0, P.Open(container_id="t", idle_time_out=2000))
    )
    c.take_output()
    assert c.state == "running"
    return c


def begin_attach(c: Connection10) -> P.Flow:
    c.data_received(frame(0, P.Begin(next_outgoing_id=0, incoming_window=10, outgoing_window=10)))
    c.data_received(
        frame(0, P.Attach(name="l", handle=0, role=False, target=P.Target(address="/queues/q")))
    )
    return (
        [f for f in frames(c.take_output()) if isinstance(f, P.Flow)][0] if not c.blocked else None
    )


MSG = b"\x00\x53\x75\xa0\x01x"


def test_bad_sasl_password_fails_the_outcome():
    loop = asyncio.new_event_loop()
    broker = Broker("n1")
    broker.metadata.apply(cmds.PutUser("guest", hash_password("guest")))
    c = Connection10(broker, Shell(), None, True)
    c.data_received(b"AMQP\x03\x01\x00\x00")
    c.data_received(
        frame(0, P.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\0guest\0x"), ftype=1)
    )
    outcome = frames(c.take_output())[-1]
    assert isinstance(outcome, P.SaslOutcome) and outcome.code == 1
    assert c.shell.closed
    loop.close()


def test_transfer_without_credit_detaches_the_link(conn):
    conn.blocked = True  # a resource alarm: no credit is granted
    begin_attach(conn)
    conn.data_received(frame(0, P.Transfer(handle=0, delivery_id=0, delivery_tag=b"a"), MSG))
    detach = [f for f in frames(conn.take_output()) if isinstance(f, P.Detach)][0]
    assert detach.error.condition == "amqp:link:transfer-limit-exceeded"


def test_credit_is_withheld_until_every_alarm_clears(conn):
    conn.on_alarm(frozenset({"disk"}))
    assert begin_attach(conn) is None  # attached, but no credit
    assert not [f for f in frames(conn.take_output()) if isinstance(f, P.Flow)]
    conn.on_alarm(frozenset({"memory"}))  # the disk alarm cleared, a memory alarm stands
    assert not [f for f in frames(conn.take_output()) if isinstance(f, P.Flow)]
    conn.on_alarm(frozenset())
    flows = [f for f in frames(conn.take_output()) if isinstance(f, P.Flow)]
    assert flows and flows[-1].link_credit > 0


@pytest.mark.parametrize("frames_of", [1, 3])
def test_message_above_max_message_size_detaches_the_link(conn, frames_of):
    conn.settings.max_message_size = 2000
    begin_attach(conn)
    payload = b"\x00\x53\x75\xb0" + (2500).to_bytes(4, "big") + b"z" * 2500
    step = -(-len(payload) // frames_of)
    chunks = [payload[i : i + step] for i in range(0, len(payload), step)]
    for i, chunk in enumerate(chunks):
        conn.data_received(
            frame(
                0,
                P.Transfer(handle=0, delivery_id=0, delivery_tag=b"a", more=i < len(chunks) - 1),
                chunk,
            )
        )
    detach = [f for f in frames(conn.take_output()) if isinstance(f, P.Detach)][0]
    assert detach.error.condition == "amqp:link:message-size-exceeded"
    assert conn.broker.queue("/", "q").stats_now()[0] == 0


def test_multi_frame_transfer_is_assembled(conn):
    begin_attach(conn)
    body = b"y" * 10000
    payload = b"\x00\x53\x75\xb0" + len(body).to_bytes(4, "big") + body
    chunks = [payload[i : i + 3000] for i in range(0, len(payload), 3000)]
    for i, chunk in enumerate(chunks):
        more = i < len(chunks) - 1
        conn.data_received(
            frame(
                0,
                P.Transfer(
                    handle=0, delivery_id=0 if i == 0 else None, delivery_tag=b"t", more=more
                ),
                chunk,
            )
        )
    q = conn.broker.queue("/", "q")
    msg = q.get_now(False)
    assert msg is not None and msg.body == body


def test_small_max_frame_size_and_oversized_frames():
    loop = asyncio.new_event_loop()
    broker = Broker("n1")
    broker.metadata.apply(cmds.AddVhost("/"))
    c = Connection10(broker, Shell(), None, True, Settings10(anonymous=True))
    broker.metadata.apply(cmds.PutUser("guest", hash_password("guest")))
    broker.metadata.apply(cmds.SetPermissions("guest", "/"))
    c.data_received(
        b"AMQP\x00\x01\x00\x00" + frame(0, P.Open(container_id="t", max_frame_size=100))
    )
    close = frames(c.take_output())[-1]
    assert close.error.condition == "amqp:frame-size-too-small"
    c = Connection10(broker, Shell(), None, True, Settings10(anonymous=True, frame_max=4096))
    c.data_received(b"AMQP\x00\x01\x00\x00" + frame(0, P.Open(container_id="t")))
    c.data_received(struct.pack(">IBBH", 5000, 2, 0, 0))
    close = frames(c.take_output())[-1]
    assert close.error.condition == "amqp:connection:framing-error"
    assert c.shell.closed
    loop.close()


def test_idle_timeout(conn, monkeypatch):
    import merpati.node.amqp10.connection as mod

    assert conn.heartbeat  # the client asked for 2 s: we send within 1 s
    now = mod.time.monotonic()
    conn.recv_activity = conn.send_activity = False
    monkeypatch.setattr(mod.time, "monotonic", lambda: now + 1.5)
    conn.heartbeat_tick()
    assert conn.take_output() == b"\x00\x00\x00\x08\x02\x00\x00\x00"  # an empty frame
    monkeypatch.setattr(mod.time, "monotonic", lambda: now + 1000)
    conn.heartbeat_tick()
    close = frames(conn.take_output())[-1]
    assert close.error.condition == "amqp:resource-limit-exceeded"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunks=st.lists(st.binary(max_size=64), max_size=6), framed=st.booleans())
def test_fuzzed_frames_after_login_fail_cleanly(conn, chunks, framed, caplog):
    """Random bytes (raw, or wrapped in well-formed frame headers) never escape as exceptions."""
    conn = logged_in()
    conn.data_received(
        frame(0, P.Begin(next_outgoing_id=0, incoming_window=10, outgoing_window=10))
    )
    for chunk in chunks:
        if framed:
            chunk = struct.pack(">IBBH", 8 + len(chunk), 2, 0, 0) + chunk
        conn.data_received(chunk)
        conn.take_output()
    assert "internal error" not in caplog.text
