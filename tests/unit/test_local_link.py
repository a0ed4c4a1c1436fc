"""cluster/forwarding/local_link.py: the frame reader in memory, then streams over a real Unix
socket with toy handlers (the forwarding handlers themselves run over it in
tests/cluster/test_forwarding.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from merpati.cluster.forwarding.local_link import (
    END,
    HEADER,
    MAX_FRAME,
    MSG,
    OPEN,
    LinkClient,
    LinkServer,
    _frame,
    _FrameReader,
    socket_path,
    usable_path,
)
from merpati.proto.merpati.v1 import forwarding_pb2 as pb


def test_frames_split_anywhere_come_out_whole() -> None:
    wire = _frame(OPEN, 1, b'{"method": "x"}') + _frame(MSG, 1, b"abc") + _frame(END, 7)
    for step in (1, 2, 5, len(wire)):
        reader = _FrameReader()
        frames = []
        for i in range(0, len(wire), step):
            frames += reader.feed(wire[i : i + step])
        assert frames == [(OPEN, 1, b'{"method": "x"}'), (MSG, 1, b"abc"), (END, 7, b"")]


def test_a_frame_larger_than_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        _FrameReader().feed(HEADER.pack(MAX_FRAME + 1, MSG, 1))


def test_socket_paths_longer_than_sockaddr_un_are_not_used() -> None:
    assert usable_path(socket_path("/tmp/links", "merpati-w0@host"))
    assert not usable_path(socket_path("/tmp/" + "d" * 120, "n1"))


class Handlers:
    """Echo (answers each request with the queue name upper-cased) and Refuse (aborts)."""

    def __init__(self) -> None:
        self.metadata: tuple = ()
        self.finished = asyncio.Event()

    async def echo(self, requests: Any, context: Any) -> Any:
        self.metadata = context.invocation_metadata()
        try:
            async for req in requests:
                yield pb.QueueRef(vhost=req.vhost, queue=req.queue.upper())
        finally:
            self.finished.set()

    async def refuse(self, requests: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no queue 'q' in vhost '/'")
        yield pb.QueueRef()  # pragma: no cover (an async generator needs a yield)


async def serve(tmp: Path, handlers: Handlers) -> LinkServer:
    server = LinkServer(
        {"Echo": (pb.QueueRef, handlers.echo), "Refuse": (pb.QueueRef, handlers.refuse)}
    )
    await server.start(str(tmp / "n1.sock"))
    return server


async def requests(*names: str, hold: asyncio.Event | None = None) -> Any:
    for name in names:
        yield pb.QueueRef(vhost="/", queue=name)
    if hold is not None:
        await hold.wait()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_stream_carries_requests_responses_and_metadata(tmp_path: Path) -> None:
    async def main() -> None:
        handlers = Handlers()
        server = await serve(tmp_path, handlers)
        assert oct((tmp_path / "n1.sock").stat().st_mode & 0o777) == "0o600"
        client = LinkClient(str(tmp_path / "n1.sock"))
        assert client.available()
        md = (("merpati-node", "n2"), ("merpati-auth", "t0ken"))
        call = client.stream("Echo", requests("a", "b", "c"), pb.QueueRef, md)
        got = [r.queue async for r in call]
        assert got == ["A", "B", "C"]
        assert handlers.metadata == md
        # A second stream shares the connection.
        call = client.stream("Echo", requests("d"), pb.QueueRef, md)
        assert [r.queue async for r in call] == ["D"]
        client.close()
        await server.stop()
        assert not (tmp_path / "n1.sock").exists()

    run(main())


def test_an_abort_reaches_the_caller_as_its_status(tmp_path: Path) -> None:
    async def main() -> None:
        server = await serve(tmp_path, Handlers())
        client = LinkClient(str(tmp_path / "n1.sock"))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in client.stream("Refuse", requests("q"), pb.QueueRef, ()):
                pass
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details() == "no queue 'q' in vhost '/'"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in client.stream("Nothing", requests(), pb.QueueRef, ()):
                pass
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        client.close()
        await server.stop()

    run(main())


def test_cancelling_the_reading_task_ends_the_handler(tmp_path: Path) -> None:
    async def main() -> None:
        handlers = Handlers()
        server = await serve(tmp_path, handlers)
        client = LinkClient(str(tmp_path / "n1.sock"))
        hold = asyncio.Event()
        call = client.stream("Echo", requests("a", hold=hold), pb.QueueRef, ())
        first = asyncio.Event()

        async def read() -> None:
            async for _ in call:
                first.set()

        task = asyncio.ensure_future(read())
        await first.wait()
        task.cancel()
        await handlers.finished.wait()  # the serving side's stream ended with it
        client.close()
        await server.stop()

    run(main())


def test_a_server_that_goes_away_ends_its_streams_unavailable_and_comes_back(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        handlers = Handlers()
        server = await serve(tmp_path, handlers)
        client = LinkClient(str(tmp_path / "n1.sock"))
        call = client.stream("Echo", requests("a", hold=asyncio.Event()), pb.QueueRef, ())
        it = call.__aiter__()
        assert (await it.__anext__()).queue == "A"
        await server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await it.__anext__()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not client.available()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in client.stream("Echo", requests("b"), pb.QueueRef, ()):
                pass
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        server = await serve(tmp_path, handlers)
        call = client.stream("Echo", requests("c"), pb.QueueRef, ())
        assert [r.queue async for r in call] == ["C"]
        client.close()
        await server.stop()

    run(main())
