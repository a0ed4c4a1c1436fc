"""In-memory AMQP 0-9-1: a `Broker` (LocalLog metadata, no store) and one `Connection091` driven
through a fake transport shell, as h11's tests drive its state machine. No sockets.

The connection is sans-I/O: bytes go in through `data_received`, what it has to write comes out
of `take_output`. `Client` feeds it frames built with the node's own encoder and parses what comes
out back into `Frame`s (methods decoded with the node's `spec`, content assembled per method).

This is the one test module that knows where the 0-9-1 internals live (node.amqp091.*,
node.broker, node.metadata): when the listener or the property codec moves, only the imports here
change. Tests import `spec`, the reply-code constants and `Client` from this module.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from merpati.node.amqp091 import render, spec
from merpati.node.amqp091.connection import Connection091, Settings
from merpati.node.amqp091.constants import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_BODY,
    FRAME_END,
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    NOT_ALLOWED,
    NOT_FOUND,
    PRECONDITION_FAILED,
    PROTOCOL_HEADER,
    UNEXPECTED_FRAME,
)
from merpati.node.broker import Broker, hash_password
from merpati.node.metadata import commands as cmds
from merpati.node.metadata.log import LocalLog
from merpati.node.wire.properties import decode_properties, encode_properties

__all__ = [
    "ACCESS_REFUSED",
    "CHANNEL_ERROR",
    "COMMAND_INVALID",
    "FRAME_ERROR",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "NOT_ALLOWED",
    "NOT_FOUND",
    "PRECONDITION_FAILED",
    "PROTOCOL_HEADER",
    "UNEXPECTED_FRAME",
    "Client",
    "FakeShell",
    "FakeTimer",
    "Frame",
    "Settings",
    "in_loop",
    "new_broker",
    "raw_frame",
    "render",
    "spec",
]


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an `async def` test in a fresh event loop (the broker's futures need a running one),
    bounded so a test that waits for a frame that never comes fails instead of hanging."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(10):
                await test(*args, **kwargs)

        asyncio.run(bounded())

    return run


async def new_broker(
    users: dict[str, str] | None = None, vhosts: tuple[str, ...] = ("/",)
) -> Broker:
    """A broker on one node with `vhosts` and `users` (name -> password, all allowed on every
    vhost): by default guest/guest on '/', as a node's first boot makes it."""
    broker = Broker("n1", LocalLog())
    for vhost in vhosts:
        await broker.propose(cmds.AddVhost(vhost))
    for name, password in (users if users is not None else {"guest": "guest"}).items():
        await broker.propose(cmds.PutUser(name, hash_password(password), ("administrator",)))
        for vhost in vhosts:
            await broker.propose(cmds.SetPermissions(name, vhost))
    return broker


class FakeTimer:
    """A timer the connection asked the shell for; it never fires by itself (`fire` it)."""

    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert not self.cancelled, "a cancelled timer fired"
        self.cancelled = True
        self.callback()


class FakeShell:
    """The transport shell as the connection sees it; records what it was asked to do."""

    def __init__(self) -> None:
        self.flushes = 0
        self.closed = False
        self.close_after: float | None = None
        self.reading = True
        self.timers: list[FakeTimer] = []

    def schedule_flush(self) -> None:
        self.flushes += 1

    def close(self, after: float = 0.0) -> None:
        self.closed = True
        self.close_after = after

    def set_reading(self, on: bool) -> None:
        self.reading = on

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(delay, callback)
        self.timers.append(timer)
        return timer

    @property
    def armed(self) -> list[FakeTimer]:
        """The timers neither fired nor cancelled."""
        return [t for t in self.timers if not t.cancelled]


@dataclass
class Frame:
    """One frame the server wrote; a content-bearing method carries its properties and body."""

    type: int
    channel: int
    payload: bytes
    method: Any = None  # the decoded method (a spec namedtuple) of a method frame
    properties: dict[str, Any] | None = None
    body: bytes = b""
    body_frames: list[bytes] = field(default_factory=list)

    @property
    def name(self) -> str:
        """'basic.deliver', 'heartbeat', 'header', 'body' or 'protocol-header'."""
        if self.method is not None:
            return self.method.NAME
        return {
            FRAME_HEARTBEAT: "heartbeat",
            FRAME_HEADER: "header",
            FRAME_BODY: "body",
            0: "protocol-header",
        }.get(self.type, str(self.type))

    def is_(self, cls: type) -> bool:
        """The method is of `cls` (namedtuples of equal fields compare equal across classes)."""
        return type(self.method) is cls


def parse(data: bytes) -> list[Frame]:
    """Server output -> frames, with each content header and its body frames folded into the
    method before them. A protocol header (the answer to a bad one) is a `protocol-header` frame."""
    frames: list[Frame] = []
    off = 0
    content: Frame | None = None
    remaining = 0
    if data.startswith(b"AMQP"):
        frames.append(Frame(0, 0, data[:8]))
        off = 8
    while off < len(data):
        ftype, channel, size = struct.unpack_from(">BHI", data, off)
        payload = data[off + 7 : off + 7 + size]
        assert data[off + 7 + size] == FRAME_END, f"no frame end after frame at {off}"
        off += 8 + size
        if ftype == FRAME_METHOD:
            f = Frame(ftype, channel, payload, method=spec.decode_method(payload))
            frames.append(f)
            content = f if f.method.HAS_CONTENT else None
        elif ftype == FRAME_HEADER:
            assert content is not None and content.channel == channel, "header without its method"
            _cls, _weight, remaining = struct.unpack_from(">HHQ", payload)
            content.properties = decode_properties(payload[12:])
            if not remaining:
                content = None
        elif ftype == FRAME_BODY:
            assert content is not None and content.channel == channel, "body without its method"
            content.body += payload
            content.body_frames.append(payload)
            remaining -= len(payload)
            if remaining <= 0:
                content = None
        else:
            frames.append(Frame(ftype, channel, payload))
    return frames


def raw_frame(ftype: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    """Any frame, well-formed or not (wrong type, channel, end octet...)."""
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes((end,))


class Client:
    """A client on a fake socket: each call feeds frames and returns what the server wrote."""

    def __init__(
        self,
        broker: Broker,
        settings: Settings | None = None,
        loopback: bool = True,
        peer: Any = ("127.0.0.1", 40000),
    ) -> None:
        self.broker = broker
        self.shell = FakeShell()
        self.conn = Connection091(broker, self.shell, peer, loopback, settings)
        self.frame_max = self.conn.settings.frame_max

    # -- bytes in, frames out -----------------------------------------------------------------

    def feed(self, data: bytes) -> list[Frame]:
        self.conn.data_received(data)
        return self.take()

    def take(self) -> list[Frame]:
        """What the transport would write now (pending confirms included)."""
        return parse(self.conn.take_output())

    async def settle(self) -> list[Frame]:
        """Let callbacks scheduled on the loop run, then take the output."""
        for _ in range(3):
            await asyncio.sleep(0)
        return self.take()

    def send(self, channel: int, method: Any) -> list[Frame]:
        return self.feed(render.method_frame(channel, method))

    def publish_method(self, channel: int, exchange: str, routing_key: str) -> list[Frame]:
        """basic.publish alone: its content header and body are still due."""
        return self.send(channel, spec.BasicPublish(exchange=exchange, routing_key=routing_key))

    def publish_bytes(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict[str, Any] | None = None,
        mandatory: bool = False,
    ) -> bytes:
        """basic.publish, content header and body frames (split at the negotiated frame_max)."""
        method = spec.BasicPublish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
        props_raw = encode_properties(properties or {})
        return render.method_frame(channel, method) + b"".join(
            render.content_frames(channel, props_raw, body, self.frame_max)
        )

    def publish(
        self, channel: int, exchange: str, routing_key: str, body: bytes, **kw: Any
    ) -> list[Frame]:
        """One message (`kw`: properties, mandatory), fed in one read."""
        return self.feed(self.publish_bytes(channel, exchange, routing_key, body, **kw))

    # -- the usual sequences ------------------------------------------------------------------

    def handshake(
        self,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        frame_max: int = 0,
        heartbeat: int = 0,
        capabilities: dict[str, Any] | None = None,
        channel_max: int = 0,
    ) -> list[Frame]:
        """Header, start-ok (PLAIN), tune-ok, open: everything the server answered on the way."""
        out = self.feed(PROTOCOL_HEADER)
        caps = capabilities if capabilities is not None else {"authentication_failure_close": True}
        out += self.send(
            0,
            spec.ConnectionStartOk(
                client_properties={"product": "test", "capabilities": caps},
                mechanism="PLAIN",
                response=b"\x00" + user.encode() + b"\x00" + password.encode(),
                locale="en_US",
            ),
        )
        if self.conn.state != "tune-ok":
            return out
        if frame_max:
            self.frame_max = frame_max
        out += self.send(
            0,
            spec.ConnectionTuneOk(
                channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat
            ),
        )
        if self.conn.state != "open":
            return out
        return out + self.send(0, spec.ConnectionOpen(virtual_host=vhost))

    def open(self, *channels: int) -> None:
        """A running connection with `channels` (default: 1) open; the replies are checked."""
        names = [f.name for f in self.handshake()]
        assert names == ["connection.start", "connection.tune", "connection.open-ok"], names
        for n in channels or (1,):
            assert [f.name for f in self.send(n, spec.ChannelOpen())] == ["channel.open-ok"]

    def declare(self, channel: int, queue: str, **fields: Any) -> Frame:
        """queue.declare; the single frame of the reply (declare-ok or channel.close)."""
        out = self.send(channel, spec.QueueDeclare(queue=queue, **fields))
        assert len(out) == 1, out
        return out[0]
