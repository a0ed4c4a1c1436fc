"""A real Celery worker process against a real node: tasks go through the broker, results come
back over the rpc:// backend (a reply queue per client, so it exercises exclusive/auto-delete
queues, direct replies and publisher confirms as Celery uses them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def worker(node, tmp_path_factory):
    url = f"amqp://guest:guest@127.0.0.1:{node.port}//"
    os.environ["MERPATI_TEST_BROKER_URL"] = url
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    log = open(log_path, "wb")  # noqa: SIM115 - held open for the worker's lifetime
    env = {**os.environ, "MERPATI_TEST_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.integration.celery_app",
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "info",
        ],
        cwd=str(ROOT),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    try:
        while b"ready." not in log_path.read_bytes():
            if proc.poll() is not None:
                pytest.fail(
                    f"celery worker exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"celery worker not ready in 60s:\n{log_path.read_text(errors='replace')}"
                )
            time.sleep(0.1)
        yield proc, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        assert node.alive()


@pytest.fixture
def app(worker):
    from tests.integration import celery_app

    # The module may have been imported before the env var was set: point it at the node.
    celery_app.app.conf.broker_url = os.environ["MERPATI_TEST_BROKER_URL"]
    # Publisher confirms for the tasks this test sends (client side only: with confirm_publish in
    # the solo-pool worker itself, Celery defers its late ack until the next 10 s hub poll timeout,
    # a client-side stall seen in strace, not a broker one).
    celery_app.app.conf.broker_transport_options = {"confirm_publish": True}
    yield celery_app


def test_add_roundtrip(app, worker, node):
    result = app.add.delay(2, 3)
    assert result.get(timeout=30) == 5
    assert result.successful()
    assert node.alive()


def test_many_tasks(app, worker):
    results = [app.add.delay(i, i) for i in range(20)]
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(20)]


def test_task_exception_is_propagated(app, worker):
    result = app.fail.delay("boom from the worker")
    with pytest.raises(ValueError, match="boom from the worker"):
        result.get(timeout=30)
    assert result.failed()
    assert result.state == "FAILURE"
    # The worker is still serving after a failed task.
    assert app.add.delay(40, 2).get(timeout=30) == 42


def test_worker_log_is_clean(app, worker, node):
    app.add.delay(1, 1).get(timeout=30)
    _, log_path = worker
    text = log_path.read_text(errors="replace")
    assert "Connected to amqp://guest:**@127.0.0.1:" in text, text
    assert "Traceback" not in node.log()
    # Only the deliberate ValueError may appear as a task failure.
    for line in text.splitlines():
        if "ERROR" in line and "merpati_test.fail" not in line and "ValueError" not in line:
            pytest.fail(f"unexpected error in worker log: {line}\n{text}")
