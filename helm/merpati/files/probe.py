"""Probes and the preStop hook of the Merpati chart (run inside the node's container).

python /etc/merpati/scripts/probe.py ready     readiness: the AMQP port accepts, the management API
                                               answers ready-to-serve-clients, and in a cluster the
                                               node sees a Raft majority (merpati_raft_has_quorum 1)
python /etc/merpati/scripts/probe.py prestop   waits (up to PRESTOP_TIMEOUT s) until stopping this
                                               node no longer leaves Raft without a majority
                                               (node-is-quorum-critical answers 200), then returns
"""

import base64
import os
import socket
import sys
import time
import urllib.error
import urllib.request

AMQP = int(os.environ.get("MERPATI_AMQP_PORT", "5672"))
MGMT = int(os.environ.get("MERPATI_MANAGEMENT_PORT", "15672"))
METRICS = int(os.environ.get("MERPATI_METRICS_PORT", "15692"))
USER = os.environ.get("MERPATI_CTL_USER", "guest")
PASSWORD = os.environ.get("MERPATI_CTL_PASSWORD", "guest")
CLUSTERED = os.environ.get("MERPATI_PROBE_CLUSTERED", "false") == "true"


def get(port: int, path: str, auth: bool = True) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def ready() -> int:
    socket.create_connection(("127.0.0.1", AMQP), 3).close()
    status, body = get(MGMT, "/api/health/checks/ready-to-serve-clients")
    if status != 200:
        print(f"ready-to-serve-clients: {status} {body}")
        return 1
    if CLUSTERED and METRICS:
        status, body = get(METRICS, "/metrics", auth=False)
        has = [ln for ln in body.splitlines() if ln.startswith("merpati_raft_has_quorum")]
        if status != 200 or not has or float(has[0].split()[-1]) != 1:
            print("the node sees no Raft majority yet")
            return 1
    return 0


def prestop() -> int:
    deadline = time.monotonic() + float(os.environ.get("PRESTOP_TIMEOUT", "100"))
    while time.monotonic() < deadline:
        try:
            status, body = get(MGMT, "/api/health/checks/node-is-quorum-critical")
        except OSError:
            return 0  # the node does not answer: nothing to wait for
        if status == 200:
            return 0
        print(f"waiting: {body}", flush=True)
        time.sleep(2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit({"ready": ready, "prestop": prestop}[sys.argv[1]]())
    except OSError as e:
        print(e)
        sys.exit(1)
