"""deploy/Dockerfile built for real with buildah (no Docker daemon), then checked and run.

Opt-in: skipped unless buildah is installed (`apt-get install buildah`). It builds with the vfs
storage driver and chroot isolation, which need root but no daemon, no overlay and no user
namespaces. About 40 s for the build on 2 cores, plus a minute the first time for the base image.

The base image: $MERPATI_IMAGE_BASE when set, else `python:3.11-slim` when buildah has it or can
pull it, else one made from Debian packages with debootstrap (bookworm: python3 3.11, python3-venv,
python-is-python3, ca-certificates), for machines that reach package registries but no container
registry; it is kept in buildah's storage as localhost/merpati-base:bookworm-py311 for later runs.
The host's /etc/pip.conf and CA bundle are mounted into the build's RUN steps when present, so pip
inside works where pip here does (a TLS-intercepting proxy, a private index).

Checked: the final image runs as a non-root user whose uid is the chart's runAsUser, has no
compiler, keeps its HEALTHCHECK (Docker format), exposes the chart's ports, declares /data; the
node started in it with the ENTRYPOINT's command answers AMQP (a publish and a get with pika), the
HEALTHCHECK's command passes inside it, and SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pika
import pytest
import yaml

from tests.deploy.chart import CHART, ROOT
from tests.support.node import free_port

pytestmark = pytest.mark.skipif(
    shutil.which("buildah") is None,
    reason="buildah is not installed (apt-get install buildah): the image is not built",
)

IMAGE = "localhost/merpati:test-image"
DEBIAN_BASE = "localhost/merpati-base:bookworm-py311"
ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


def buildah(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["buildah", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, (args, r.stdout[-3000:], r.stderr[-3000:])
    return r


def has_image(name: str) -> bool:
    return buildah("inspect", "--type", "image", name, check=False).returncode == 0


def debian_base() -> str | None:
    """A Python 3.11 base image from Debian packages (debootstrap), made once."""
    if has_image(DEBIAN_BASE):
        return DEBIAN_BASE
    if shutil.which("debootstrap") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="merpati-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        r = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python-is-python3,ca-certificates",
                "bookworm",
                str(rootfs),
                "http://deb.debian.org/debian",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:])
            return None
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / cache).glob("*"):
                if f.is_file():
                    f.unlink()
        ctr = buildah("from", "scratch").stdout.strip()
        buildah("copy", "-q", ctr, str(rootfs), "/", timeout=600)
        buildah("config", "--env", "LANG=C.UTF-8", "--cmd", '["python3"]', ctr)
        buildah("commit", "-q", "--rm", ctr, DEBIAN_BASE, timeout=600)
    return DEBIAN_BASE


@pytest.fixture(scope="module")
def base_image() -> str:
    if os.environ.get("MERPATI_IMAGE_BASE"):
        return os.environ["MERPATI_IMAGE_BASE"]
    official = "docker.io/library/python:3.11-slim"
    if has_image(official):
        return official
    try:
        if buildah("pull", "-q", official, timeout=300, check=False).returncode == 0:
            return official
    except subprocess.TimeoutExpired:
        pass
    base = debian_base()
    if base is None:
        pytest.skip("no python:3.11-slim (no registry reachable) and no debootstrap to make one")
    return base


@pytest.fixture(scope="module")
def image(base_image):
    mounts: list[str] = []
    for f in ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt"):
        if Path(f).is_file():
            mounts += ["-v", f"{f}:{f}:ro"]
    t0 = time.monotonic()
    buildah(
        "bud",
        "--format",
        "docker",  # OCI images have no HEALTHCHECK
        "--pull=never",
        "--build-arg",
        f"PYTHON_IMAGE={base_image}",
        *mounts,
        "-f",
        "deploy/Dockerfile",
        "-t",
        IMAGE,
        str(ROOT),
        timeout=900,
    )
    print(f"built {IMAGE} from {base_image} in {time.monotonic() - t0:.0f} s")
    yield IMAGE
    buildah("rmi", "-f", IMAGE, check=False)


@pytest.fixture
def container(image):
    ctr = buildah("from", "--pull=never", image).stdout.strip()
    yield ctr
    buildah("rm", ctr, check=False)


def image_config(image: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image).stdout)["Docker"]["config"]


def test_image_configuration(image, container):
    config = image_config(image)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert config["Entrypoint"] == ["merpati", "server"]
    assert config["User"] not in ("", "root", "0")
    uid = buildah("run", container, "--", "id", "-u").stdout.strip()
    assert int(uid) == values["podSecurityContext"]["runAsUser"] != 0
    assert config["Healthcheck"]["Test"][0] in ("CMD", "CMD-SHELL")
    assert "MERPATI_AMQP_PORT" in " ".join(config["Healthcheck"]["Test"])
    ports = {int(p.split("/")[0]) for p in config["ExposedPorts"]}
    chart = values["ports"]
    assert {
        chart["amqp"],
        chart["management"],
        chart["metrics"],
        chart["cluster"],
        chart["cluster"] + 1,
    } <= ports
    assert "/data" in config["Volumes"]
    # No compiler left in the final stage (the build stage installs gcc).
    r = buildah("run", container, "--", "sh", "-c", "command -v gcc cc c++ clang", check=False)
    assert r.returncode != 0 and r.stdout.strip() == "", r.stdout
    listing = buildah("images", "--format", "{{.Name}}:{{.Tag}} {{.Size}}").stdout
    print(next(line for line in listing.splitlines() if "test-image" in line))


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def test_node_runs_in_the_image(image, container, tmp_path):
    amqp, management, metrics = free_port(), free_port(), free_port()
    buildah(
        "config",
        "--env",
        f"MERPATI_AMQP_PORT={amqp}",
        "--env",
        f"MERPATI_MANAGEMENT_PORT={management}",
        "--env",
        f"MERPATI_METRICS_PORT={metrics}",
        # chroot isolation shares this host's network: loopback only, not the image's 0.0.0.0
        "--env",
        "MERPATI_BIND=127.0.0.1",
        container,
    )
    config = image_config(image)
    log_path = tmp_path / "node.log"
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["buildah", "run", container, "--", *config["Entrypoint"]],
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        while b" ready: " not in log_path.read_bytes():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() - t0 < 60, log_path.read_text()
            time.sleep(0.1)
        print(f"node ready in the image after {time.monotonic() - t0:.1f} s")
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp))
        ch = conn.channel()
        ch.confirm_delivery()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"from the image")
        assert ch.basic_get(q, auto_ack=True)[2] == b"from the image"
        conn.close()
        test = config["Healthcheck"]["Test"]
        cmd = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
        r = buildah("run", container, "--", *cmd, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        # SIGTERM to the node (the container's main process), as `docker stop` sends it.
        (node,) = [
            p
            for p in descendants(proc.pid)
            if b"merpati\x00server" in Path(f"/proc/{p}/cmdline").read_bytes()
            and b"python" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        os.kill(node, signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        assert b" stopped" in log_path.read_bytes()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
