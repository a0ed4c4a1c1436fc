"""How long a quorum queue is unavailable when its leader is SIGKILLed, and that nothing a
publisher saw confirmed is lost (not a test).

Three real node processes on loopback. Each round: declare a quorum queue, publish with confirms
through a node that survives (one message at a time, a nack means publish again), SIGKILL the
queue's leader, and keep publishing; the figure is the time from the kill to the first confirm
after it. Then every message is read back and counted. The killed node is restarted before the
next round.

    python -m bench.quorum_failover [--rounds 5]
"""

from __future__ import annotations

import argparse
import signal
import statistics
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


def round_(cluster, i: int) -> tuple[float, int]:  # noqa: ANN001
    name = f"failover-{i}"
    conn = pika.BlockingConnection(pika.URLParameters(cluster["n1"].url))
    conn.channel().queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    conn.close()
    leader = leader_of(cluster["n1"], name)
    survivor = next(n for n in ("n1", "n2", "n3") if n != leader)
    conn = pika.BlockingConnection(pika.URLParameters(cluster[survivor].url))
    ch = conn.channel()
    ch.confirm_delivery()
    sent = [b"b%d" % k for k in range(200)]
    for body in sent:
        publish(ch, name, body)
    killed = time.monotonic()
    cluster[leader].stop(sig=signal.SIGKILL)
    nacks = publish(ch, name, b"after")
    took = time.monotonic() - killed
    got = set()
    while True:
        method, _p, body = ch.basic_get(name, auto_ack=True)
        if method is None:
            break
        got.add(body)
    lost = set(sent) - got
    assert not lost, f"lost {len(lost)} confirmed messages"
    conn.close()
    cluster[leader].start()
    return took, nacks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cluster = start_cluster()
    try:
        times = []
        for i in range(args.rounds):
            took, nacks = round_(cluster, i)
            times.append(took)
            print(
                f"round {i}: first confirm {took:.2f} s after the kill ({nacks} nacks), none lost"
            )
        print(f"median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    finally:
        cluster.stop()
        cluster.discard()


if __name__ == "__main__":
    main()
