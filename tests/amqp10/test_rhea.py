"""AMQP 1.0 with Node's rhea client (tests/amqp10/js; `.ci/run` installs it with npm ci)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from ._support import channel091, queue_count

JS = Path(__file__).parent / "js"

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node (Node.js) is not installed"),
    pytest.mark.skipif(
        not (JS / "node_modules" / "rhea").is_dir(),
        reason="rhea is not installed: npm ci --prefix tests/amqp10/js",
    ),
]


@pytest.mark.parametrize("mode", ["unsettled", "settled"])
def test_rhea_send_and_receive(node, mode):
    q = f"rhea-{uuid.uuid4().hex[:8]}"
    conn, ch = channel091(node)
    ch.queue_declare(q)
    conn.close()
    out = subprocess.run(
        ["node", str(JS / "sendrecv.js"), str(node.port), f"/queues/{q}", "50", mode],
        capture_output=True,
        text=True,
        timeout=30,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, (result, out.stderr)
    assert result["errors"] == []
    assert result["received"] == [f"rhea-{i}" for i in range(50)]
    assert result["properties"] == [{"n": i} for i in range(50)]
    if mode == "unsettled":
        assert result["accepted"] == 50
    assert queue_count(node, q) == 0


def test_rheas_examples_without_credentials_to_a_plain_address(node):
    """rhea's simple_send/simple_recv as their users run them: SASL ANONYMOUS (guest from
    loopback), the address 'examples' (a queue, declared at attach as RabbitMQ 3.x does)."""
    address = f"examples-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        ["node", str(JS / "examples.js"), str(node.port), address, "20"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0 and result["errors"] == [], (result, out.stderr)
    assert result["confirmed"] == 20
    assert result["received"] == list(range(20))
    conn, ch = channel091(node)
    assert ch.queue_declare(address, passive=True, durable=True).method.message_count == 0
    conn.close()
