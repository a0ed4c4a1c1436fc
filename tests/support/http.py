"""Plain HTTP for the tests (urllib only): rabbitmqadmin-style calls to the management API."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote


def q(name: str) -> str:
    """A path segment as RabbitMQ's API wants it ('/' -> '%2F')."""
    return quote(name, safe="")


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    user: str = "guest",
    password: str = "guest",
) -> tuple[int, Any]:
    """(status, decoded JSON or None); errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def scrape(base: str, path: str = "/metrics") -> str:
    with urllib.request.urlopen(base + path, timeout=10) as resp:
        return resp.read().decode()


def samples(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels as printed, sorted by the client)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
