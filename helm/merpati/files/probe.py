"""Probes and the preStop hook of the Merpati chart (run inside the node's container).

python /etc/merpati/scripts/probe.py ready     readiness: the AMQP port accepts, the management API
                                               answers ready-to-serve-clients, and in a cluster the
                                               node sees a Raft majority (merpati_raft_has_quorum 1)
python /etc/merpati/scripts/probe.py prestop   in a cluster, drains the node first: it gets no new
                                               queues and hands the queues it leads, with their
                                               messages, to the other nodes (POST .../drain, waiting
                                               up to 2/3 of PRESTOP_TIMEOUT); then waits (until
                                               PRESTOP_TIMEOUT s have passed) until stopping this node
                                               no longer leaves Raft without a majority
                                               (node-is-quorum-critical answers 200), and returns.
                                               It never fails: the kubelet stops the pod anyway.
"""

import base64
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

AMQP = int(os.environ.get("MERPATI_AMQP_PORT", "5672"))
MGMT = int(os.environ.get("MERPATI_MANAGEMENT_PORT", "15672"))
METRICS = int(os.environ.get("MERPATI_METRICS_PORT", "15692"))
USER = os.environ.get("MERPATI_CTL_USER", "guest")
PASSWORD = os.environ.get("MERPATI_CTL_PASSWORD", "guest")
CLUSTERED = os.environ.get("MERPATI_PROBE_CLUSTERED", "false") == "true"
NODE = os.environ.get("MERPATI_NODE_ID", "")


def get(
    port: int, path: str, auth: bool = True, body: dict | None = None, timeout: float = 5
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
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


def drain(wait: float) -> None:
    """Hand this node's queues (and their messages) to the other nodes before it stops."""
    node = NODE
    if not node:
        status, body = get(MGMT, "/api/overview")
        node = json.loads(body)["node"] if status == 200 else ""
    path = "/api/merpati/cluster/nodes/" + urllib.parse.quote(node, safe="") + "/drain"
    try:
        status, body = get(MGMT, path, body={"timeout": wait}, timeout=wait + 15)
    except OSError as e:
        print(f"drain: {e}", flush=True)
        return
    if status != 200:
        print(f"drain: {status} {body}", flush=True)  # e.g. no other node to move queues to
        return
    report = json.loads(body)
    print(
        f"drain: {len(report['moved'])} queue(s) moved, {len(report['pending'])} still handing "
        f"over, {len(report['not_moved'])} not moved",
        flush=True,
    )
    for entry in report["pending"] + report["not_moved"]:
        print(f"  {json.dumps(entry)}", flush=True)


def prestop() -> int:
    budget = float(os.environ.get("PRESTOP_TIMEOUT", "100"))
    deadline = time.monotonic() + budget
    if CLUSTERED:
        try:
            drain(max(1.0, budget * 2 / 3))
        except (OSError, ValueError, KeyError) as e:
            print(f"drain: {e}", flush=True)
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
