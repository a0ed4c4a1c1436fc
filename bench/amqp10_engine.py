"""Server-side CPU per AMQP 1.0 message: Merpati's own sans-I/O engine vs python-qpid-proton's.

Both engines are fed the same kind of client bytes in memory (no sockets): a proton client
sends N unsettled 100-byte messages; the server side decodes each transfer and message and
settles it accepted. Merpati's figure includes its whole publish path (conversion to the core
message, routing, enqueue, the accepted disposition); proton's only its engine and message decode.

    python bench/amqp10_engine.py [N]
"""

from __future__ import annotations

import asyncio
import sys
import time


def client_transfers(n: int, size: int = 100) -> bytes:
    """N unsettled transfers of a proton-encoded message (one data section), as a client sends."""
    import struct

    from proton import Message

    from merpati.node.amqp10 import performatives as P

    body = Message(body=b"x" * size, inferred=True).encode()
    out = []
    for i in range(n):
        perf = P.Transfer(
            handle=0,
            delivery_id=i,
            delivery_tag=struct.pack(">I", i),
            message_format=0,
            settled=False,
        ).encode_amqp()
        frame_body = perf + body
        out.append(struct.pack(">IBBH", 8 + len(frame_body), 2, 0, 0) + frame_body)
    return b"".join(out)


def bench_merpati(n: int) -> float:
    from merpati.node.amqp10 import performatives as P
    from merpati.node.amqp10.codec import Symbol
    from merpati.node.amqp10.connection import Connection10
    from merpati.node.broker import Broker, hash_password
    from merpati.node.metadata import commands as cmds

    class Shell:
        def schedule_flush(self):
            pass

        def close(self, after=0.0):
            pass

        def set_reading(self, on):
            pass

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    broker = Broker("n1")
    for cmd in (
        cmds.AddVhost("/"),
        cmds.PutUser("guest", hash_password("guest")),
        cmds.SetPermissions("guest", "/"),
        cmds.DeclareQueue("/", "bench", leader="n1"),
    ):
        broker.metadata.apply(cmd)
    import merpati.node.amqp10.links as L
    import merpati.node.amqp10.session as S

    L.PUBLISH_CREDIT = n + 10  # one grant for the whole run
    c = Connection10(broker, Shell(), None, True)
    import struct

    def f(perf, ftype=0):
        body = perf.encode_amqp()
        return struct.pack(">IBBH", 8 + len(body), 2, ftype, 0) + body

    c.data_received(
        b"AMQP\x03\x01\x00\x00"
        + f(P.SaslInit(mechanism=Symbol("PLAIN"), initial_response=b"\0guest\0guest"), 1)
    )
    c.data_received(
        b"AMQP\x00\x01\x00\x00"
        + f(P.Open(container_id="c"))
        + f(P.Begin(next_outgoing_id=0, incoming_window=2**31 - 1, outgoing_window=2**31 - 1))
    )
    c.data_received(
        f(P.Attach(name="l", handle=0, role=False, target=P.Target(address="/queues/bench")))
    )
    c.take_output()
    S.INCOMING_WINDOW = 2**31 - 1
    c.sessions[0].incoming_window = 2**31 - 1
    transfers = client_transfers(n)
    chunks = [transfers[i : i + 65536] for i in range(0, len(transfers), 65536)]
    t0 = time.process_time()
    for ch in chunks:
        c.data_received(ch)
        c.take_output()
    dt = time.process_time() - t0
    assert broker.queue("/", "bench").stats_now()[0] == n, broker.queue("/", "bench").stats_now()
    return dt / n * 1e6


def bench_proton(n: int, decode: bool = True) -> float:
    from proton import Collector, Connection, Delivery, Event, Message, Transport

    server = Transport(Transport.SERVER)
    sasl = server.sasl()
    sasl.allowed_mechs("ANONYMOUS")
    conn = Connection()
    coll = Collector()
    conn.collect(coll)
    server.bind(conn)
    # A proton client to do the handshake and attach.
    client = Transport()
    client.sasl().allowed_mechs("ANONYMOUS")
    cc = Connection()
    client.bind(cc)
    cc.open()
    cs = cc.session()
    cs.open()
    snd = cs.sender("bench")
    snd.target.address = "/queues/bench"
    snd.open()

    def pump(a, b):
        moved = 0
        while a.pending() > 0:
            data = a.peek(a.pending())
            a.pop(len(data))
            b.push(data)
            moved += len(data)
        return moved

    def serve():
        while True:
            ev = coll.peek()
            if ev is None:
                break
            t = ev.type
            if t == Event.CONNECTION_REMOTE_OPEN:
                ev.connection.open()
            elif t == Event.SESSION_REMOTE_OPEN:
                ev.session.open()
            elif t == Event.LINK_REMOTE_OPEN:
                ev.link.open()
                ev.link.flow(n + 10)
            elif t == Event.DELIVERY:
                d = ev.delivery
                if d.readable and not d.partial:
                    raw = d.link.recv(d.pending)
                    if decode:
                        Message().decode(raw)
                    d.link.advance()
                    d.update(Delivery.ACCEPTED)
                    d.settle()
            coll.pop()

    for _ in range(10):
        pump(client, server)
        serve()
        pump(server, client)
    assert snd.credit >= n, snd.credit
    body = Message(body=b"x" * 100, inferred=True).encode()
    # Produce all client bytes first (client cost is not counted).
    for i in range(n):
        snd.delivery(str(i).encode())
        snd.send(body)
        snd.advance()
    chunks = []
    while client.pending() > 0:
        chunk = client.peek(min(client.pending(), 65536))
        client.pop(len(chunk))
        chunks.append(chunk)
    t0 = time.process_time()
    for ch in chunks:
        while ch:
            cap = server.capacity()
            server.push(ch[:cap])
            ch = ch[cap:]
            serve()
            while server.pending() > 0:
                server.pop(server.pending())
    dt = time.process_time() - t0
    return dt / n * 1e6


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    benches = (
        ("merpati sans-I/O (full publish path)", bench_merpati),
        ("python-qpid-proton engine + Message.decode", bench_proton),
        ("python-qpid-proton engine only (no message decode)", lambda n: bench_proton(n, False)),
    )
    for name, fn in benches:
        best = min(fn(n) for _ in range(3))
        print(f"{name}: {best:.1f} us of server CPU per message ({n} x 100 B, unsettled)")
