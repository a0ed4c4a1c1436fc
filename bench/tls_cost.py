"""What TLS costs in throughput (not a test): `merpati perf` against one node's plain and AMQPS
ports, alternating, same run, same settings; medians of the rounds.

    python -m bench.tls_cost [--rounds 3] [--seconds 10] [--size 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.certs import CA, amqps_flags
from tests.support.node import NodeProcess, free_port


def perf(uri: str, seconds: int, size: int, cacert: str) -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "merpati.node",
            "perf",
            "--uri",
            uri,
            "-x",
            "1",
            "-y",
            "1",
            "-s",
            str(size),
            "-c",
            "100",
            "-q",
            "200",
            "-z",
            str(seconds),
            "--json",
            "--cacert",
            cacert,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout)["receive_rate_median"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--size", type=int, default=1000)
    args = p.parse_args()
    certs = Path(tempfile.mkdtemp(prefix="merpati-bench-tls-"))
    ca = CA.create("bench CA")
    ca.write(certs / "ca.pem")
    ca.issue("bench-server", certs, "server", server=True)
    tls_port = free_port()
    node = NodeProcess(*amqps_flags(tls_port, certs)).start()
    plain, tls = [], []
    try:
        for _ in range(args.rounds):
            plain.append(
                perf(
                    f"amqp://guest:guest@127.0.0.1:{node.port}/",
                    args.seconds,
                    args.size,
                    str(certs / "ca.pem"),
                )
            )
            tls.append(
                perf(
                    f"amqps://guest:guest@localhost:{tls_port}/",
                    args.seconds,
                    args.size,
                    str(certs / "ca.pem"),
                )
            )
    finally:
        node.stop()
        node.discard()
    mp, mt = statistics.median(plain), statistics.median(tls)
    print(f"plain {[round(x) for x in plain]} median {mp:.0f} msg/s")
    print(f"TLS   {[round(x) for x in tls]} median {mt:.0f} msg/s  ({mt / mp:.2f} of plain)")


if __name__ == "__main__":
    main()
