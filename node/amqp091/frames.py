"""Sans-I/O frame reader for AMQP 0-9-1: bytes in, calls on a handler out.

Theory of operation: `FrameReader.feed(data)` cuts the byte stream into frames, checks each frame's
envelope (size against frame_max, the frame-end octet, the frame type), and assembles content
(basic.publish + content header + body frames) per channel. It calls

    handler.on_method(channel, payload)            every method frame except basic.publish
    handler.on_publish(channel, exchange, routing_key, mandatory, immediate,
                       route_raw, props_raw, body)  a complete published message
    handler.on_heartbeat()

and raises `FrameError` for anything malformed, which the caller turns into connection.close with
the code carried in the error. basic.publish is decoded by hand here rather than by the general
codec: it is the method that arrives once per message, and this path avoids building a method
object, a dict, or a copy of the body when a frame holds a whole body.

`route_raw` is the exchange and routing key exactly as they arrived (two shortstrs): basic.deliver
and basic.return carry those same bytes, so they are never re-encoded.
"""

from __future__ import annotations

import struct
from typing import Protocol

from ..wire.properties import decode_properties
from ..wire.table import DecodeError
from .constants import (
    FRAME_BODY,
    FRAME_END,
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    UNEXPECTED_FRAME,
)

_unpack_frame = struct.Struct(">BHI").unpack_from
_unpack_header = struct.Struct(">HHQ").unpack_from
_PUBLISH_ID = b"\x00\x3c\x00\x28"


class ProtocolError091(Exception):
    """An AMQP 0-9-1 error: the reply code and text of the close it causes, and the method at
    fault (its class and method ids, 0 when none)."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id


class FrameError(ProtocolError091):
    """A connection-level protocol error found while reading frames."""


class FrameHandler(Protocol):
    def on_method(self, channel: int, payload: bytes) -> None: ...

    def on_publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        immediate: bool,
        route_raw: bytes,
        props_raw: bytes,
        body: bytes,
    ) -> None: ...

    def on_heartbeat(self) -> None: ...


class _Content:
    """A publish waiting for its content header and body frames."""

    __slots__ = (
        "exchange",
        "routing_key",
        "mandatory",
        "immediate",
        "route_raw",
        "props_raw",
        "remaining",
        "parts",
    )

    def __init__(
        self, exchange: str, routing_key: str, mandatory: bool, immediate: bool, route_raw: bytes
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self.immediate = immediate
        self.route_raw = route_raw
        self.props_raw: bytes | None = None
        self.remaining = 0
        self.parts: list[bytes] = []


class FrameReader:
    """Cuts bytes into frames and assembles published content; see the module docstring."""

    __slots__ = (
        "handler",
        "frame_max",
        "max_body",
        "stopped",
        "held",
        "_buf",
        "_need",
        "_content",
        "_valid_props",
    )

    def __init__(
        self, handler: FrameHandler, frame_max: int, max_body: int = 128 * 1024 * 1024
    ) -> None:
        self.handler = handler
        self.frame_max = frame_max
        self.max_body = max_body
        # Set by the handler when the connection is closing: the rest of the input is discarded.
        self.stopped = False
        # Set by the handler to stop at the frame it just handled and keep the rest for later
        # (a publish held by a resource alarm); `feed(b"")` after clearing it goes on.
        self.held = False
        self._buf = bytearray()
        # Bytes the buffered partial frame needs before it is worth parsing again; this keeps a
        # large frame arriving in many small reads from being re-scanned on every read.
        self._need = 0
        self._content: dict[int, _Content] = {}
        # Property lists already checked: publishers repeat theirs, so most checks are a lookup.
        self._valid_props: set[bytes] = set()

    def pending_content(self, channel: int) -> bool:
        return channel in self._content

    def drop_content(self, channel: int) -> None:
        self._content.pop(channel, None)

    def feed(self, data: bytes) -> None:
        if type(data) is not bytes:
            data = bytes(data)
        if self.held:  # bytes that were on their way when reading paused
            self._buf += data
            return
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return
            buf: bytes | bytearray = bytes(self._buf)
            self._buf.clear()
        else:
            buf = data
        n = len(buf)
        off = 0
        # The spec counts frame_max with the 8 octets of header and end, but clients that split
        # bodies into frame_max-sized payloads (amqpstorm) work with RabbitMQ, which accepts a
        # payload of up to frame_max: so does this reader. (What the node sends keeps to the spec.)
        max_payload = self.frame_max
        handler = self.handler
        contents = self._content
        valid_props = self._valid_props
        try:
            while n - off >= 7 and not self.stopped and not self.held:
                ftype, channel, size = _unpack_frame(buf, off)
                if size > max_payload:
                    raise FrameError(
                        FRAME_ERROR,
                        f"frame size {size} exceeds the negotiated frame_max {self.frame_max}",
                    )
                start = off + 7
                end = start + size
                if end >= n:
                    self._need = end + 1 - off
                    break
                if buf[end] != FRAME_END:
                    raise FrameError(FRAME_ERROR, f"frame end octet 0x{buf[end]:02x} is not 0xce")
                off = end + 1
                if ftype == FRAME_METHOD:
                    if channel in contents:
                        raise FrameError(
                            UNEXPECTED_FRAME,
                            f"expected a content header on channel {channel}, got a method frame",
                        )
                    if buf[start : start + 4] == _PUBLISH_ID:
                        self._publish_method(buf, start, end, channel)
                    else:
                        handler.on_method(channel, buf[start:end])
                elif ftype == FRAME_BODY:
                    content = contents.get(channel)
                    if content is None or content.props_raw is None:
                        raise FrameError(
                            UNEXPECTED_FRAME, f"unexpected content body frame on channel {channel}"
                        )
                    content.remaining -= size
                    if content.remaining < 0:
                        raise FrameError(
                            FRAME_ERROR,
                            f"content body on channel {channel} is longer than its header announced",
                        )
                    content.parts.append(buf[start:end])
                    if content.remaining == 0:
                        del contents[channel]
                        parts = content.parts
                        body = parts[0] if len(parts) == 1 else b"".join(parts)
                        handler.on_publish(
                            channel,
                            content.exchange,
                            content.routing_key,
                            content.mandatory,
                            content.immediate,
                            content.route_raw,
                            content.props_raw,
                            body,
                        )
                elif ftype == FRAME_HEADER:
                    content = contents.get(channel)
                    if content is None or content.props_raw is not None:
                        raise FrameError(
                            UNEXPECTED_FRAME,
                            f"unexpected content header frame on channel {channel}",
                        )
                    if size < 14:
                        raise FrameError(
                            FRAME_ERROR, f"content header on channel {channel} is too short"
                        )
                    class_id, weight, body_size = _unpack_header(buf, start)
                    if class_id != 60:
                        raise FrameError(
                            FRAME_ERROR,
                            f"content header class {class_id} does not match basic.publish",
                        )
                    if body_size > self.max_body:
                        raise FrameError(
                            FRAME_ERROR,
                            f"message body of {body_size} bytes exceeds the maximum of {self.max_body}",
                        )
                    props_raw = buf[start + 12 : end]
                    if props_raw not in valid_props:
                        self._validate_props(props_raw, channel)
                    if body_size == 0:
                        del contents[channel]
                        handler.on_publish(
                            channel,
                            content.exchange,
                            content.routing_key,
                            content.mandatory,
                            content.immediate,
                            content.route_raw,
                            props_raw,
                            b"",
                        )
                    else:
                        content.props_raw = props_raw
                        content.remaining = body_size
                elif ftype == FRAME_HEARTBEAT:
                    if channel != 0:
                        raise FrameError(
                            UNEXPECTED_FRAME,
                            f"heartbeat frame on channel {channel}, expected channel 0",
                        )
                    handler.on_heartbeat()
                else:
                    raise FrameError(FRAME_ERROR, f"unknown frame type {ftype}")
        finally:
            if off < n and not self.stopped:
                self._buf += buf[off:]
                if self.held:
                    self._need = 0  # whatever is left is parsed when the hold ends
                elif n - off < 7:
                    self._need = 7

    def _validate_props(self, props_raw: bytes, channel: int) -> None:
        # Every consumer decodes these bytes: a malformed list must stop here, not at them.
        try:
            decode_properties(props_raw)
        except DecodeError as e:
            raise FrameError(
                FRAME_ERROR,
                f"cannot decode content header properties on channel {channel}: {e}",
                60,
                40,
            )
        if len(self._valid_props) >= 256:
            self._valid_props.clear()
        self._valid_props.add(props_raw)

    def _publish_method(self, buf: bytes, start: int, end: int, channel: int) -> None:
        # basic.publish: class+method (4), ticket (2), exchange shortstr, routing-key shortstr, bits.
        p = start + 6
        try:
            elen = buf[p]
            q = p + 1 + elen
            rlen = buf[q]
            bits_at = q + 1 + rlen
        except IndexError:
            raise FrameError(
                FRAME_ERROR, "cannot decode basic.publish: truncated arguments", 60, 40
            )
        if bits_at != end - 1:
            raise FrameError(
                FRAME_ERROR,
                "cannot decode basic.publish: argument lengths do not match the frame",
                60,
                40,
            )
        try:
            exchange = buf[p + 1 : q].decode("utf-8")
            routing_key = buf[q + 1 : bits_at].decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(
                FRAME_ERROR,
                "cannot decode basic.publish: exchange or routing key is not UTF-8",
                60,
                40,
            )
        bits = buf[bits_at]
        self._content[channel] = _Content(
            exchange, routing_key, bool(bits & 1), bool(bits & 2), buf[p:bits_at]
        )
