"""Run `merpati ctl` (python -m node ctl) against a node's management API, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def ctl(
    node: Any,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess:
    """`merpati ctl --port <node's management port> ARGS...`; with `check` (the default) a non-zero
    exit fails the test with its output. `timeout` only bounds a hung command (drain-node --wait
    takes long on a loaded machine)."""
    out = subprocess.run(
        [sys.executable, "-m", "merpati.node", "ctl", "--port", str(node.management_port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def ctl_out(node: Any, *args: str, **kw: Any) -> str:
    """The standard output of a `ctl` that must succeed."""
    return ctl(node, *args, check=True, **kw).stdout
