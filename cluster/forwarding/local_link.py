"""Forwarding's streams between nodes of one host, over a Unix socket instead of gRPC.

Why: grpc.aio spends about 60 us of CPU per streamed message at each end, in its own threads
and callbacks, whatever the message holds. A forwarded publish that travels alone (a producer
held to 1,000 msg/s fills no batch) costs four such messages (request out and in, result out
and in): `bench/forwarding.py` measures about 250 us of CPU for one message per write over gRPC.
Workers of one host (`merpati server --workers N`) forward a large share of their traffic to each
other, so there that cost decided the latency: two workers at 16,000 msg/s fell behind by
seconds. Over this link the same message costs a few microseconds of framing.

What it carries: the bidirectional streams of the Forwarding service (Publish and Consume),
with the same protobuf messages, the same handlers on the serving side (`ForwardingServer`'s)
and a call object with grpc.aio's surface on the calling side (iterate the responses, `cancel()`,
errors raised as `grpc.aio.AioRpcError` with a status code), so neither side has a second
implementation of what a stream means. Unary calls, Ping and replication stay on gRPC.

Who uses it: a node started with `--local-link-dir DIR` listens on `DIR/<node id>.sock` (mode
0600, so only its own user can connect) and opens its streams to a peer through the peer's socket
there when the file exists, else through gRPC. `--workers` gives it to every worker. Calls carry
the same metadata as over gRPC, so the cluster secret is checked the same way.

Wire format: frames of `!IBI` (payload length, kind, stream id) then the payload. The calling side
numbers its streams; kinds OPEN (method and metadata as JSON), MSG (one serialized message either
way), HALF_CLOSE (no more requests), CANCEL, and END from the serving side (status code name and
details as JSON). A lost connection ends every stream on it with UNAVAILABLE; the next stream
opened connects again.

Flow control is the streams' own: Publish is bounded by the calling Peer's in-flight limit,
Consume by credit. There is deliberately no pause of the socket: streams share it, and pausing
it for a congested Publish would also stop the Consume settlements that drain the congestion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

log = logging.getLogger("merpati.forwarding")

HEADER = struct.Struct("!IBI")
OPEN, MSG, HALF_CLOSE, CANCEL, END = 1, 2, 3, 4, 5
# A frame larger than this is a broken peer, not a message (batches are cut at 1 MiB of bodies).
MAX_FRAME = 64 << 20
# sockaddr_un's path is 108 bytes with its terminating NUL.
MAX_PATH = 107

_DONE = object()  # end of a stream's requests or responses


def socket_path(directory: str, node_id: str) -> str:
    return os.path.join(directory, f"{node_id}.sock")


def usable_path(path: str) -> bool:
    return len(os.fsencode(path)) <= MAX_PATH


def _frame(kind: int, sid: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), kind, sid) + payload


class _FrameReader:
    """Splits what a socket delivers into frames (sans-I/O: `feed` bytes, get frames)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += data
        frames = []
        pos = 0
        size = HEADER.size
        end = len(buf)
        while end - pos >= size:
            length, kind, sid = HEADER.unpack_from(buf, pos)
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes (limit {MAX_FRAME})")
            if end - pos - size < length:
                break
            start = pos + size
            frames.append((kind, sid, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames


# -- the serving side -----------------------------------------------------------------------------


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """What the Forwarding handlers use of grpc.aio.ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


# method name -> (request message class, handler(request_iterator, context) -> async iterator)
Methods = dict[str, tuple[Any, Callable[[Any, Any], AsyncIterator[Any]]]]


class LinkServer:
    """Serves `methods` on a Unix socket."""

    def __init__(self, methods: Methods) -> None:
        self.methods = methods
        self.path = ""
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_ServerConnection] = set()

    async def start(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a node that was killed
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _ServerConnection(self), path)
        os.chmod(path, 0o600)
        self.path = path

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._connections):
            conn.abort()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        await server.wait_closed()


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.reader = _FrameReader()
        self.streams: dict[int, tuple[asyncio.Queue, asyncio.Task]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ValueError as e:
            log.warning("local link: %s; closing the connection", e)
            self.abort()
            return
        for kind, sid, payload in frames:
            if kind == MSG:
                entry = self.streams.get(sid)
                if entry is not None:
                    entry[0].put_nowait(payload)
            elif kind == OPEN:
                self._open(sid, payload)
            elif kind == HALF_CLOSE:
                entry = self.streams.get(sid)
                if entry is not None:
                    entry[0].put_nowait(_DONE)
            elif kind == CANCEL:
                entry = self.streams.get(sid)
                if entry is not None:
                    entry[1].cancel()

    def _open(self, sid: int, payload: bytes) -> None:
        try:
            head = json.loads(payload)
            method = self.server.methods[head["method"]]
            metadata = tuple((str(k), str(v)) for k, v in head.get("metadata", ()))
        except (ValueError, KeyError, TypeError) as e:
            self._end(sid, grpc.StatusCode.UNIMPLEMENTED, f"cannot open stream: {e!r}")
            return
        requests: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(self._serve(sid, method, requests, metadata))
        self.streams[sid] = (requests, task)

    async def _serve(self, sid: int, method: Any, requests: asyncio.Queue, metadata: Any) -> None:
        request_cls, handler = method
        code, details = grpc.StatusCode.OK, ""

        async def request_iterator() -> Any:
            while True:
                item = await requests.get()
                if item is _DONE:
                    return
                yield request_cls.FromString(item)

        try:
            async for response in handler(request_iterator(), _Context(metadata)):
                if self.transport is None or self.transport.is_closing():
                    break
                self.transport.write(_frame(MSG, sid, response.SerializeToString()))
        except asyncio.CancelledError:
            code, details = grpc.StatusCode.CANCELLED, "cancelled by the caller"
        except _Aborted as e:
            code, details = e.code, e.details
        except Exception as e:  # a bug in a handler ends its stream, not the node
            log.exception("local link stream %d failed", sid)
            code, details = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
        finally:
            self.streams.pop(sid, None)
        self._end(sid, code, details)

    def _end(self, sid: int, code: grpc.StatusCode, details: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            payload = json.dumps({"code": code.name, "details": details}).encode()
            self.transport.write(_frame(END, sid, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server._connections.discard(self)
        for _requests, task in list(self.streams.values()):
            task.cancel()
        self.streams.clear()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# -- the calling side -----------------------------------------------------------------------------


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class LinkClient:
    """One node's link to one peer's socket: a connection made on first use, shared by the
    streams, made again after it is lost."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: _ClientConnection | None = None
        self._connecting: asyncio.Future | None = None
        self._next_sid = 1
        self.closed = False

    def available(self) -> bool:
        """Whether the peer listens here (a node of another host never does)."""
        return not self.closed and os.path.exists(self.path)

    def stream(self, method: str, requests: Any, response_cls: Any, metadata: Any) -> LinkCall:
        sid = self._next_sid
        self._next_sid = sid + 1
        return LinkCall(self, sid, method, requests, response_cls, metadata)

    async def connection(self) -> _ClientConnection:
        conn = self._conn
        if conn is not None and not conn.lost:
            return conn
        if self.closed:
            raise _rpc_error(grpc.StatusCode.CANCELLED, "the link is closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await loop.create_unix_connection(_ClientConnection, self.path)
        except OSError as e:
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE, f"cannot reach {self.path}: {e}") from e
        self._conn = conn
        return conn

    def close(self) -> None:
        self.closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _ClientConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = _FrameReader()
        self.calls: dict[int, LinkCall] = {}
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, kind: int, sid: int, payload: bytes = b"") -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(_frame(kind, sid, payload))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ValueError as e:
            log.warning("local link: %s; closing the connection", e)
            self.close()
            return
        for kind, sid, payload in frames:
            call = self.calls.get(sid)
            if call is None:
                continue
            if kind == MSG:
                call._responses.put_nowait(payload)
            elif kind == END:
                try:
                    end = json.loads(payload)
                    code = grpc.StatusCode[end["code"]]
                    details = str(end.get("details", ""))
                except (ValueError, KeyError, TypeError):
                    code, details = grpc.StatusCode.INTERNAL, "malformed end of stream"
                call._ended(code, details)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        for call in list(self.calls.values()):
            call._ended(grpc.StatusCode.UNAVAILABLE, f"local link lost: {exc or 'closed'}")
        self.calls.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class LinkCall:
    """A stream on the link, shaped as grpc.aio's stream-stream call."""

    def __init__(
        self,
        client: LinkClient,
        sid: int,
        method: str,
        requests: Any,
        response_cls: Any,
        metadata: Any,
    ) -> None:
        self.sid = sid
        self._response_cls = response_cls
        self._responses: asyncio.Queue = asyncio.Queue()
        self._conn: _ClientConnection | None = None
        self._status: tuple[grpc.StatusCode, str] | None = None
        head = json.dumps({"method": method, "metadata": [list(kv) for kv in metadata or ()]})
        self._pump = asyncio.ensure_future(self._send(client, head.encode(), requests))

    async def _send(self, client: LinkClient, head: bytes, requests: Any) -> None:
        try:
            conn = await client.connection()
        except grpc.aio.AioRpcError as e:
            self._ended(e.code(), e.details() or "")
            return
        if self._status is not None:
            return  # cancelled while connecting
        self._conn = conn
        conn.calls[self.sid] = self
        conn.send(OPEN, self.sid, head)
        try:
            async for request in requests:
                if self._status is not None or conn.lost:
                    return
                conn.send(MSG, self.sid, request.SerializeToString())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the request iterator failed: as grpc, the call is cancelled
            log.debug("local link stream %d: requests failed: %r", self.sid, e)
            self.cancel()
            return
        conn.send(HALF_CLOSE, self.sid)

    def _ended(self, code: grpc.StatusCode, details: str) -> None:
        if self._status is None:
            self._status = (code, details)
            self._responses.put_nowait(_DONE)
        conn = self._conn
        if conn is not None:
            conn.calls.pop(self.sid, None)

    def cancel(self) -> bool:
        if self._status is not None:
            return False
        conn = self._conn
        if conn is not None:
            conn.send(CANCEL, self.sid)
        self._ended(grpc.StatusCode.CANCELLED, "cancelled")
        if self._pump is not asyncio.current_task():
            self._pump.cancel()
        return True

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read()

    async def _read(self) -> AsyncIterator[Any]:
        responses = self._responses
        from_string = self._response_cls.FromString
        while True:
            try:
                item = await responses.get()
            except asyncio.CancelledError:
                self.cancel()  # as grpc.aio: the task reading a call was cancelled, so is the call
                raise
            if item is _DONE:
                break
            yield from_string(item)
        assert self._status is not None
        code, details = self._status
        if code == grpc.StatusCode.CANCELLED:
            raise asyncio.CancelledError()
        if code != grpc.StatusCode.OK:
            raise _rpc_error(code, details)
