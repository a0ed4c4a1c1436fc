"""The node as a process: command line, configuration, users, shutdown, memory alarm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pika
import pika.exceptions
import pytest

from tests.support.net import non_loopback_address
from tests.support.node import NodeProcess, free_port


def _params(
    port: int,
    user: str = "guest",
    password: str = "guest",
    vhost: str = "/",
    host: str = "127.0.0.1",
) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password),
        connection_attempts=1,
        socket_timeout=5,
    )


def test_ready_line_names_addresses(node):
    assert f"ready: AMQP on 127.0.0.1:{node.port}" in node.log()


def test_sigterm_closes_clients_with_320_and_exits_cleanly(make_node):
    n = make_node()
    conn = pika.BlockingConnection(_params(n.port))
    ch = conn.channel()
    ch.queue_declare("sigterm-q")
    n.proc.send_signal(signal.SIGTERM)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.process_data_events(time_limit=5)
        # A second round in case the close arrived together with nothing else.
        conn.process_data_events(time_limit=5)
    assert info.value.reply_code == 320
    assert "CONNECTION_FORCED" in info.value.reply_text
    assert n.proc.wait(10) == 0
    assert "stopped" in n.log()


def test_config_file_users_and_vhosts(make_node):
    n = make_node(
        config="""
vhosts = ["/", "orders"]
[[users]]
name = "app"
password = "s3cret"
vhosts = ["orders"]
"""
    )
    conn = pika.BlockingConnection(_params(n.port, "app", "s3cret", "orders"))
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"in orders")
    _, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"in orders"
    conn.close()
    # The user has no permissions on "/": connection.open is refused with 530.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        pika.BlockingConnection(_params(n.port, "app", "s3cret", "/"))
    assert "(530)" in str(info.value) and "access to vhost '/' refused for user 'app'" in str(
        info.value
    )
    # guest is not created when the file names users.
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(_params(n.port))


def test_environment_variables_configure_the_node(tmp_path):
    port = free_port()
    metrics_port = free_port()
    env = {
        **os.environ,
        "MERPATI_AMQP_PORT": str(port),
        # The HTTP listeners too: free ports, never the 15672/15692 defaults other nodes may hold.
        "MERPATI_METRICS_PORT": str(metrics_port),
        "MERPATI_MANAGEMENT_PORT": "0",
        "MERPATI_BIND": "127.0.0.1",
        "MERPATI_DATA_DIR": str(tmp_path / "d"),
        "MERPATI_DEFAULT_USER": "envuser",
        "MERPATI_DEFAULT_PASS": "envpass",
        "MERPATI_LOG_LEVEL": "debug",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "merpati.node", "server"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            lines.append(line)
            if " ready: " in line:
                break
        assert f"127.0.0.1:{port}" in "".join(lines)
        assert f"Prometheus metrics on 127.0.0.1:{metrics_port}" in "".join(lines)
        assert "management API on" not in "".join(lines)
        conn = pika.BlockingConnection(_params(port, "envuser", "envpass"))
        assert conn.is_open
        conn.close()
        assert (tmp_path / "d").is_dir()
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_configuration_is_reported(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("amqp-port = 'many'\n")
    out = subprocess.run(
        [sys.executable, "-m", "merpati.node", "server", "--config", str(bad)],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert b"invalid value" in out.stderr and b"amqp-port" in out.stderr
    bad.write_text("no-such-setting = 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "merpati.node", "server", "--config", str(bad)],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 2 and b"unknown setting" in out.stderr


@pytest.mark.skipif(
    non_loopback_address() is None, reason="this machine has no non-loopback IPv4 address"
)
def test_guest_only_from_loopback(make_node):
    n = make_node("--bind", "0.0.0.0")
    addr = non_loopback_address()
    with pytest.raises(
        (
            pika.exceptions.ProbableAccessDeniedError,
            pika.exceptions.ConnectionClosedByBroker,
            pika.exceptions.ProbableAuthenticationError,
        )
    ):
        pika.BlockingConnection(_params(n.port, host=addr))
    # From loopback the same user is fine.
    pika.BlockingConnection(_params(n.port)).close()


def test_memory_alarm_blocks_publishers(make_node):
    n = make_node("--memory-high-watermark", "0.000001")
    blocked = []
    conn = pika.BlockingConnection(_params(n.port))
    conn.add_on_connection_blocked_callback(lambda c, frame: blocked.append(frame.method.reason))
    # As RabbitMQ, the node tells a connection once it publishes while the alarm stands; the
    # memory watcher looks every second.
    time.sleep(1.5)
    conn.channel().basic_publish("", "nowhere", b"x")
    deadline = time.monotonic() + 5
    while not blocked and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.2)
    assert blocked == ["low on memory"]
    # Not conn.close(): a blocked connection is not read (as in RabbitMQ), so the close would
    # never be answered; the node's stop closes it.


def test_node_id_and_data_dir_flags(tmp_path):
    n = NodeProcess("--node-id", "alpha@test").start()
    try:
        assert "Merpati node alpha@test ready" in n.log()
    finally:
        n.stop()
