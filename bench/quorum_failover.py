"""How long a quorum queue is unavailable when its leader is SIGKILLed, and that nothing a
publisher saw confirmed is lost (not a test).

Three real node processes on loopback. Each round: declare a quorum queue, publish with confirms
through one node that survives (one message at a time, a nack means publish again) and consume
through the other, SIGKILL the queue's leader once everything was consumed, and keep publishing.
The figures are the times from the kill to the first confirm and to the first delivery after it.
Every confirmed message must then be consumed. The killed node is restarted before the next round.

    python -m bench.quorum_failover [--rounds 10]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import threading
import time

import pika
import pika.exceptions as pex

from tests.cluster.conftest import start_cluster
from tests.support.http import call, q


def leader_of(node, name: str) -> str:  # noqa: ANN001 - a tests.support NodeProcess
    return call(node.management_url, "GET", f"/api/queues/%2F/{q(name)}")[1]["leader"]


def publish(ch, name: str, body: bytes) -> int:  # noqa: ANN001
    nacks = 0
    while True:
        try:
            ch.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2))
            return nacks
        except pex.NackError:
            nacks += 1
            time.sleep(0.01)


def round_(cluster, i: int) -> tuple[float, float, int]:  # noqa: ANN001
    name = f"failover-{i}"
    conn = pika.BlockingConnection(pika.URLParameters(cluster["n1"].url))
    conn.channel().queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    conn.close()
    leader = leader_of(cluster["n1"], name)
    pub_node, con_node = [n for n in ("n1", "n2", "n3") if n != leader]
    consumed: list[tuple[float, bytes]] = []
    stop = threading.Event()

    def consume() -> None:
        c = pika.BlockingConnection(pika.URLParameters(cluster[con_node].url))
        ch = c.channel()
        ch.basic_qos(prefetch_count=100)
        for method, _props, body in ch.consume(name, inactivity_timeout=0.02):
            if stop.is_set():
                break
            if method is not None:
                consumed.append((time.monotonic(), body))
                ch.basic_ack(method.delivery_tag)
        c.close()

    t = threading.Thread(target=consume)
    t.start()
    conn = pika.BlockingConnection(pika.URLParameters(cluster[pub_node].url))
    ch = conn.channel()
    ch.confirm_delivery()
    sent = [b"b%d" % k for k in range(200)]
    for body in sent:
        publish(ch, name, body)
    wait(lambda: len(consumed) >= len(sent))
    killed = time.monotonic()
    cluster[leader].stop(sig=signal.SIGKILL)
    nacks = publish(ch, name, b"a0")
    to_confirm = time.monotonic() - killed
    after = [b"a%d" % k for k in range(1, 50)]
    for body in after:
        publish(ch, name, body)
    sent += [b"a0", *after]
    wait(lambda: {b for _t, b in consumed} >= set(sent))
    stop.set()
    t.join(10)
    conn.close()
    to_delivery = min(at for at, _b in consumed if at > killed) - killed
    cluster[leader].start()
    return to_confirm, to_delivery, nacks


def wait(what, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "a confirmed message was lost (never delivered)"
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    cluster = start_cluster()
    try:
        confirms, deliveries = [], []
        for i in range(args.rounds):
            to_confirm, to_delivery, nacks = round_(cluster, i)
            confirms.append(to_confirm)
            deliveries.append(to_delivery)
            print(
                f"round {i}: after the kill, first confirm {to_confirm:.2f} s, first delivery "
                f"{to_delivery:.2f} s ({nacks} nacks), none lost",
                flush=True,
            )
        for what, times in (("first confirm", confirms), ("first delivery", deliveries)):
            print(f"{what}: median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    finally:
        cluster.stop()
        cluster.discard()


if __name__ == "__main__":
    main()
