"""node.listener: the protocol header picks the front end; in memory, with a fake transport."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from merpati.node.amqp091.connection import Connection091, Settings
from merpati.node.amqp10.connection import Connection10, Settings10
from merpati.node.listener import AMQPProtocol

HEADER_091 = b"AMQP\x00\x00\x09\x01"
HEADER_SASL = b"AMQP\x03\x01\x00\x00"


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return len(self.written)  # nothing is ever read by this peer

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _broker() -> Any:
    return SimpleNamespace(node_id="rabbit@test", incarnation=1, connections=set())


def run(chunks: list[bytes]) -> tuple[AMQPProtocol, FakeTransport]:
    """Feed chunks to a fresh listener protocol, let the loop run its callbacks, close it."""

    async def main() -> tuple[AMQPProtocol, FakeTransport]:
        proto = AMQPProtocol(_broker(), Settings(), Settings10())
        transport = FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            proto.data_received(chunk)
        for _ in range(3):
            await asyncio.sleep(0)
        if proto._close_timer is not None:
            proto._close_timer.cancel()
        return proto, transport

    return asyncio.run(main())


@pytest.mark.parametrize("chunks", [[HEADER_091], [b"AM", b"QP\x00", b"\x00\x09\x01"]])
def test_091_header_gets_connection_start(chunks: list[bytes]) -> None:
    proto, transport = run(chunks)
    assert isinstance(proto.conn, Connection091)
    assert proto.conn.state == "start-ok"
    # A method frame (type 1) on channel 0 carrying connection.start (class 10, method 10).
    assert transport.written[:3] == b"\x01\x00\x00"
    assert transport.written[7:11] == b"\x00\x0a\x00\x0a"
    assert not transport.closed


@pytest.mark.parametrize("chunks", [[HEADER_SASL], [b"AMQP", b"\x03\x01\x00\x00"]])
def test_sasl_header_picks_amqp10(chunks: list[bytes]) -> None:
    proto, transport = run(chunks)
    assert isinstance(proto.conn, Connection10)
    assert proto.conn.settings.frame_max == Settings10().frame_max
    # The SASL header echoed, then a sasl-mechanisms frame (frame type 1).
    assert transport.written.startswith(HEADER_SASL)
    assert transport.written[8 + 5] == 1
    assert not transport.closed


@pytest.mark.parametrize(
    "chunks",
    [
        [b"GET / HTTP/1.1\r\n\r\n"],
        [b"AMQP\x00\x00\x09\x02"],  # 0-9-2: not a version we speak
        [b"AMQP\x01\x01\x00\x0a"],  # 0-10
        [b"AMQ", b"X"],
    ],
)
def test_bad_header_gets_091_header_and_close(chunks: list[bytes]) -> None:
    proto, transport = run(chunks)
    assert isinstance(proto.conn, Connection091)
    assert bytes(transport.written) == HEADER_091
    assert transport.closed
    assert proto.conn.state == "closed"


def test_partial_header_waits() -> None:
    proto, transport = run([b"AMQP\x00"])
    assert proto.conn is None
    assert transport.written == b"" and not transport.closed


def test_bytes_after_the_header_reach_the_front_end() -> None:
    # The 0-9-1 header and the start of the next frame in one read: the front end sees both
    # (an incomplete frame is buffered, not an error).
    proto, transport = run([HEADER_091 + b"\x01\x00\x00"])
    assert isinstance(proto.conn, Connection091)
    assert proto.conn.state == "start-ok"
    assert not transport.closed


def test_write_pause_resume_and_loss_reach_the_front_end() -> None:
    proto, transport = run([HEADER_091])
    conn = proto.conn
    assert conn is not None
    proto.pause_writing()
    assert conn.write_paused
    proto.resume_writing()
    assert not conn.write_paused
    proto.set_reading(False)
    assert not transport.reading
    proto.connection_lost(None)
    assert conn.state == "closed"


def test_a_front_end_timer_runs_its_callback_and_writes_what_it_produced() -> None:
    """Shell.call_later (the 0-9-1 acknowledgement timeout check): output goes out right after
    the callback; a timer of a closed socket does nothing."""

    async def main() -> tuple[list[str], FakeTransport]:
        proto = AMQPProtocol(_broker(), Settings(), Settings10())
        transport = FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        proto.data_received(HEADER_091)
        transport.written.clear()
        ran: list[str] = []

        def tick() -> None:
            ran.append("tick")
            assert proto.conn is not None
            proto.conn.send(b"out")  # type: ignore[attr-defined]

        proto.call_later(0.01, tick)
        proto.call_later(0.05, lambda: ran.append("late"))  # due after the socket closed
        cancelled = proto.call_later(0.01, lambda: ran.append("cancelled"))
        cancelled.cancel()
        await asyncio.sleep(0.03)
        assert bytes(transport.written) == b"out"
        proto.connection_lost(None)
        await asyncio.sleep(0.05)
        if proto._close_timer is not None:
            proto._close_timer.cancel()
        return ran, transport

    ran, _ = asyncio.run(main())
    assert ran == ["tick"]
