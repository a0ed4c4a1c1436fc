"""The container's entrypoint logic outside a container: three `merpati server` processes started
with the environment the chart's StatefulSet gives its pods form one cluster.

Taken as rendered: the `merpati` container's env of the StatefulSet (`helm template`, 3 replicas)
on top of the image's ENV (deploy/Dockerfile), and the command, the Dockerfile's ENTRYPOINT
`merpati server`, run as the console script pyproject.toml names (node.cli:main) with this
checkout's interpreter in a clean environment (no MERPATI_* from the host).

Filled in as Kubernetes would: `fieldRef: metadata.name` is the pod name (mq-merpati-0..2),
`secretKeyRef` a value of the rendered Secret, HOSTNAME the pod name. The volumes an env value
points into (MERPATI_CLUSTER_SECRET_FILE, MERPATI_DATA_DIR) are materialized in a temp dir per pod
(a Secret's items as files, a claim or emptyDir as an empty directory) and the path rewritten, so a
variable naming a file its mount does not provide fails here.

Substituted, because one host stands in for a pod network:

- Addresses. Pods share their ports and differ by IP; here pod i is 127.0.0.(i+1) (all of
  127/8 is loopback on Linux) and MERPATI_BIND, 0.0.0.0 in the pod, is that address. The ports are
  identical for the three nodes as in Kubernetes, but chosen free for the run and given to the
  chart as values (ports.*) rather than the defaults, which other processes here may hold.
- Peer discovery. MERPATI_PEERS is `dns:<headless>.<ns>.svc.cluster.local:<cluster port>`. It is
  resolved by the real cluster.membership.parse_peers, in this process, against the records a
  cluster's DNS would serve for the rendered headless Service and StatefulSet (the name: every
  pod's address; each address: `<pod>.<headless>.<ns>.svc.cluster.local`); the nodes then get the
  members it returns in the list form, `<pod>=<pod address>:<port>`, i.e. each pod host name
  replaced by the address it resolves to. The nodes do not resolve the DNS form themselves:
  ClusterNode listens on a member's host only when it is a loopback address literal, else on
  0.0.0.0 (right in a pod, which owns its IP), so three nodes here given host names would all bind
  0.0.0.0 on one cluster port; a resolver override in the node would exist only for this test.
- Localhost. `merpati ctl` (MERPATI_CTL_* from the pod env) gets MERPATI_CTL_HOST = the pod's
  address, and files/probe.py (hard-wired to 127.0.0.1, the pod's loopback) runs with 127.0.0.1
  replaced by it; pod 0, on 127.0.0.1, needs neither.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pika
import pytest

from merpati.cluster.membership import parse_peers
from merpati.node.config import Config, load
from tests.deploy.chart import CHART, ROOT, by_kind, container, one, render
from tests.support.clients import connect
from tests.support.names import uid

NAMESPACE = "mq"
CLUSTER_DOMAIN = "cluster.local"  # the chart's default clusterDomain, the DNS suffix of the pods
REPLICAS = 3


# -- what the image and the chart say ---------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage of deploy/Dockerfile, continuations joined."""
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    stages: list[list[tuple[str, str]]] = []
    for ln in lines:
        instr, _, args = ln.partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        if stages:  # ARGs before the first FROM belong to no stage
            stages[-1].append((instr.upper(), args.strip()))
    return stages[-1]


def image_env() -> dict[str, str]:
    """The final stage's ENV, PATH aside (the host's PATH stands in for it)."""
    out: dict[str, str] = {}
    for instr, args in dockerfile_instructions():
        if instr == "ENV":
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                if name != "PATH":
                    out[name] = value
    return out


def entrypoint_command() -> list[str]:
    """The ENTRYPOINT as a command line here: its console script run by this interpreter."""
    (entry,) = [json.loads(a) for i, a in dockerfile_instructions() if i == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts[entry[0]].partition(":")
    code = (
        f"import sys; from {module} import {func}; sys.argv[0] = {entry[0]!r}; sys.exit({func}())"
    )
    return [sys.executable, "-c", code, *entry[1:]]


def secret_data(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in by_kind(docs, "Secret")
    }


def resolve_value(e: dict, pod: str, secrets: dict[str, dict[str, str]]) -> str:
    """An env entry's value as the kubelet sets it; a kind of valueFrom not handled here fails."""
    if "value" in e:
        return e["value"]
    source = e["valueFrom"]
    if "fieldRef" in source:
        assert source["fieldRef"]["fieldPath"] == "metadata.name", e
        return pod
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        return secrets[ref["name"]][ref["key"]]
    raise AssertionError(f"no stand-in for {e}")


@dataclass
class Pod:
    name: str
    address: str
    env: dict[str, str]
    root: Path  # where this pod's volumes live
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "node.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def materialize_path(path: str, c: dict, pod_spec: dict, sts: dict, docs, root: Path) -> Path:
    """The file or directory `path` of the container, from the volume mounted over it."""
    secrets = secret_data(docs)
    configmaps = {m["metadata"]["name"]: m["data"] for m in by_kind(docs, "ConfigMap")}
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    for m in c["volumeMounts"]:
        mount = m["mountPath"].rstrip("/")
        if path != mount and not path.startswith(mount + "/"):
            continue
        local = root / m["name"]
        local.mkdir(parents=True, exist_ok=True)
        vol = volumes.get(m["name"], {})
        if "secret" in vol:
            data = secrets[vol["secret"]["secretName"]]
            items = vol["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (local / item["path"]).write_text(data[item["key"]])
        elif "configMap" in vol:
            for k, v in configmaps[vol["configMap"]["name"]].items():
                (local / k).write_text(v)
        else:
            assert m["name"] in claims or "emptyDir" in vol, (m, vol)
        target = local / path[len(mount) :].lstrip("/")
        assert target.exists(), (
            f"{path}: the volume {m['name']} mounted at {mount} has no such file"
        )
        return target
    raise AssertionError(f"{path} is on no volume of the container")


def free_ports() -> dict[str, int]:
    """amqp, management, metrics and cluster (cluster + 1 for Raft), free on every address."""
    held: list[socket.socket] = []
    try:
        ports: dict[str, int] = {}
        for name in ("amqp", "management", "metrics", "cluster"):
            while True:
                s = socket.socket()
                s.bind(("0.0.0.0", 0))
                port = s.getsockname()[1]
                if name != "cluster":
                    held.append(s)
                    break
                raft = socket.socket()
                try:
                    raft.bind(("0.0.0.0", port + 1))
                except OSError:
                    s.close()
                    raft.close()
                    continue
                held += [s, raft]
                break
            ports[name] = port
        return ports
    finally:
        for s in held:
            s.close()


def dns_records(docs: list[dict], addresses: dict[str, str]) -> tuple[dict, dict]:
    """What a cluster's DNS serves for the rendered StatefulSet: the headless service's name
    resolves to every pod (ready or not), each pod's address back to <pod>.<service>.<ns>.svc."""
    sts = one(docs, "StatefulSet")
    service = one(docs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True  # the nodes resolve before ready
    domain = f"{service['metadata']['name']}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"
    forward = {domain: list(addresses.values())}
    reverse = {addr: f"{pod}.{domain}" for pod, addr in addresses.items()}
    return forward, reverse


def peers_list(spec: str, cfg: Config, forward: dict, reverse: dict) -> str:
    """The DNS form resolved by parse_peers against `forward`/`reverse`, as the list form with
    every member's host name replaced by its address."""

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in forward:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: no such name")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in forward[host]]

    def gethostbyaddr(ip):
        return reverse[ip], [], [ip]

    with (
        mock.patch("socket.getaddrinfo", getaddrinfo),
        mock.patch("socket.gethostbyaddr", gethostbyaddr),
    ):
        members = parse_peers(spec, cfg.resolved_raft_port() - cfg.cluster_port)
    address_of = {name: addr for addr, name in reverse.items()}
    return ",".join(f"{m.node_id}={address_of[m.host]}:{m.cluster_port}" for m in members)


def make_pods(helm: str, tmp: Path, *sets: str) -> tuple[list[Pod], list[dict]]:
    docs = render(helm, f"replicaCount={REPLICAS}", *sets, namespace=NAMESPACE)
    sts = one(docs, "StatefulSet")
    pod_spec = sts["spec"]["template"]["spec"]
    c = container(docs)
    secrets = secret_data(docs)
    names = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]
    addresses = {pod: f"127.0.0.{i + 1}" for i, pod in enumerate(names)}
    forward, reverse = dns_records(docs, addresses)
    pods = []
    for pod in names:
        root = tmp / pod
        env = image_env()
        env.update({e["name"]: resolve_value(e, pod, secrets) for e in c["env"]})
        for name in ("MERPATI_CLUSTER_SECRET_FILE", "MERPATI_DATA_DIR"):
            env[name] = str(materialize_path(env[name], c, pod_spec, sts, docs, root))
        assert env["MERPATI_BIND"] == "0.0.0.0"
        env["MERPATI_BIND"] = addresses[pod]
        cfg = load({}, environ=env)
        env["MERPATI_PEERS"] = peers_list(env["MERPATI_PEERS"], cfg, forward, reverse)
        env["HOSTNAME"] = pod
        env["PATH"] = os.environ["PATH"]
        pods.append(Pod(pod, addresses[pod], env, root))
    return pods, docs


# -- the environment as configuration (no processes) --------------------------------------------


def _names_read(path: Path, prefix: str) -> set[str]:
    return set(re.findall(r"[\"'](" + prefix + r"[A-Z0-9_]+)[\"']", path.read_text()))


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["replicaCount=1"],
        ["config.MERPATI_STORE_SYNC=normal", "config.MERPATI_LOG_LEVEL=debug"],
        ["tls.enabled=true", "tls.secretName=t", "persistence.enabled=false"],
    ],
)
def test_every_variable_of_the_pod_is_read_by_someone(helm, sets):
    """A misspelt MERPATI_* would be ignored without a word: each one the chart sets is a
    setting of node/config.py, or read by `merpati ctl` (tools/ctl.py) or the probes."""
    docs = render(helm, *sets, namespace=NAMESPACE)
    settings = {"MERPATI_" + f.upper() for f in Config.__dataclass_fields__ if f != "users"}
    ctl = _names_read(ROOT / "tools" / "ctl.py", "MERPATI_CTL_")
    probe_py = CHART / "files" / "probe.py"
    probe = _names_read(probe_py, "MERPATI_") | _names_read(probe_py, "PRESTOP_")
    for e in container(docs)["env"]:
        assert e["name"] in settings | ctl | probe, e["name"]


def test_pod_environment_is_the_configuration_the_chart_means(helm, tmp_path):
    pods, docs = make_pods(helm, tmp_path)
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for i, pod in enumerate(pods):
        env = dict(pod.env, MERPATI_BIND="0.0.0.0")  # as in the pod
        cfg = load({}, environ=env)
        assert cfg.resolved_node_id() == pod.name == f"mq-merpati-{i}"
        assert cfg.data_dir == env["MERPATI_DATA_DIR"] and Path(cfg.data_dir).is_dir()
        assert (
            Path(cfg.cluster_secret_file).read_text()
            == secret_data(docs)["mq-merpati"]["cluster-secret"]
        )
        assert (cfg.amqp_port, cfg.management_port, cfg.metrics_port) == (
            ports["amqp"],
            ports["management"],
            ports["metrics"],
        )
        assert (cfg.cluster_port, cfg.resolved_raft_port()) == (ports["cluster"], ports["raft"])
        assert cfg.default_user == "admin" and len(cfg.default_pass) >= 16
        # Every pod names the same members, node ids = pod names, itself among them.
        assert cfg.peers == ",".join(
            f"mq-merpati-{j}=127.0.0.{j + 1}:{ports['cluster']}" for j in range(REPLICAS)
        )


def test_service_links_cannot_shadow_a_setting(helm):
    """Kubernetes puts <SERVICE>_PORT=tcp://IP:PORT (and more) into every container for each
    Service of the namespace unless enableServiceLinks is false. A release whose Service is named
    e.g. merpati-raft would have MERPATI_RAFT_PORT=tcp://... read as --raft-port, and the node
    would refuse to start; the chart turns the links off (nothing reads them)."""
    docs = render(helm, "fullnameOverride=merpati-raft", namespace=NAMESPACE)
    assert one(docs, "StatefulSet")["spec"]["template"]["spec"]["enableServiceLinks"] is False
    link = {"MERPATI_RAFT_PORT": "tcp://10.96.0.10:5672"}
    with pytest.raises(ValueError, match="raft-port"):
        load({}, environ=link)


# -- three processes -------------------------------------------------------------------------


def start(pod: Pod) -> None:
    pod.root.mkdir(parents=True, exist_ok=True)
    with open(pod.log_path, "ab") as log:
        pod.proc = subprocess.Popen(
            entrypoint_command(), stdout=log, stderr=subprocess.STDOUT, env=pod.env, cwd=ROOT
        )


def stop(pods: list[Pod]) -> None:
    for pod in pods:
        if pod.proc is not None and pod.proc.poll() is None:
            pod.proc.send_signal(signal.SIGTERM)
    for pod in pods:
        if pod.proc is not None:
            try:
                pod.proc.wait(15)
            except subprocess.TimeoutExpired:
                pod.proc.kill()
                pod.proc.wait()


class PortTaken(Exception):
    pass


def wait_ready(pods: list[Pod], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(pods)
    while waiting:
        for pod in list(waiting):
            assert pod.proc is not None
            text = pod.log()
            if pod.proc.poll() is not None:
                if "address already in use" in text:
                    raise PortTaken(text)
                raise AssertionError(f"{pod.name} exited with {pod.proc.returncode}:\n{text}")
            if " ready: " in text:
                waiting.remove(pod)
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.log()}" for p in waiting)
            raise AssertionError(f"not ready in {timeout}s:\n{logs}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def statefulset(helm, tmp_path_factory):
    """Three nodes started from the rendered StatefulSet's environment (see the module doc)."""
    for attempt in range(3):
        tmp = tmp_path_factory.mktemp("statefulset")
        ports = free_ports()
        pods, docs = make_pods(helm, tmp, *(f"ports.{k}={v}" for k, v in ports.items()))
        try:
            for pod in pods:  # Parallel pod management: all at once
                start(pod)
            wait_ready(pods, timeout=45)
        except PortTaken:
            stop(pods)
            if attempt == 2:
                raise
            continue
        except BaseException:
            stop(pods)
            raise
        yield pods, docs, ports
        stop(pods)
        for pod in pods:
            assert "Traceback" not in pod.log(), pod.log()
        return


def ctl(pod: Pod, *args: str) -> subprocess.CompletedProcess:
    env = dict(pod.env, MERPATI_CTL_HOST=pod.address)
    cmd = [*entrypoint_command()[:-1], "ctl", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)


def cluster_status(pod: Pod) -> dict:
    r = ctl(pod, "--formatter", "json", "cluster_status")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_three_pods_form_one_cluster(statefulset):
    pods, _, ports = statefulset
    names = sorted(p.name for p in pods)
    deadline = time.monotonic() + 20
    while True:
        statuses = {p.name: cluster_status(p) for p in pods}
        leaders = {s["raft_leader"] for s in statuses.values()}
        running = [sorted(s["running"]) for s in statuses.values()]
        if (len(leaders) == 1 and None not in leaders and running == [names] * 3) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.5)
    for name, s in statuses.items():
        assert sorted(s["members"]) == names, (name, s)
        assert sorted(s["running"]) == names, (name, s)
        assert [n["name"] for n in s["nodes"]][0] == name
        assert s["members"] == {p.name: f"{p.address}:{ports['cluster']}" for p in pods}, (
            "members differ"
        )
    assert len(leaders) == 1 and leaders <= set(names), statuses


def test_readiness_probe_and_prestop_pass(statefulset):
    """files/probe.py from the rendered ConfigMap, with the pod env: ready (AMQP port, the
    ready-to-serve-clients check, a Raft majority since MERPATI_PROBE_CLUSTERED is true), and
    prestop returns at once while every node is up (none is quorum-critical)."""
    pods, docs, _ = statefulset
    script = one(docs, "ConfigMap")["data"]["probe.py"]
    for pod in pods:
        assert pod.env["MERPATI_PROBE_CLUSTERED"] == "true"
        probe = pod.root / "probe.py"
        probe.write_text(script.replace("127.0.0.1", pod.address))
        deadline = time.monotonic() + 20
        while True:
            r = subprocess.run(
                [sys.executable, str(probe), "ready"],
                env=pod.env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.returncode == 0, (pod.name, r.stdout + r.stderr)
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, str(probe), "prestop"],
            env=pod.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0 and time.monotonic() - t0 < 10, (pod.name, r.stdout + r.stderr)


def test_queue_declared_on_one_pod_is_used_from_another(statefulset):
    pods, _, ports = statefulset
    env = pods[0].env
    user, password = env["MERPATI_DEFAULT_USER"], env["MERPATI_DEFAULT_PASS"]
    queue = uid("k8s")
    a, b, c = (
        connect(host=p.address, port=ports["amqp"], user=user, password=password)
        for p in pods[1:] + pods[:1]
    )
    try:
        ch = a.channel()
        ch.queue_declare(queue, durable=True)
        pub = b.channel()
        pub.confirm_delivery()
        pub.queue_declare(queue, passive=True)
        for i in range(10):
            pub.basic_publish("", queue, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
        got = []
        cons = c.channel()
        deadline = time.monotonic() + 10
        while len(got) < 10 and time.monotonic() < deadline:
            method, _, body = cons.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            got.append(body)
        assert got == [f"m{i}".encode() for i in range(10)]
        cons.queue_delete(queue)
    finally:
        for conn in (a, b, c):
            conn.close()
