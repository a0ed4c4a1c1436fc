"""A minimal Celery app for tests/integration/test_celery.py (broker URL from MERPATI_TEST_BROKER_URL)."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "merpati_test",
    broker=os.environ.get("MERPATI_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)


class TaskFailed(Exception):
    """Raised by `fail` so the test can check the exception type crosses the broker."""


@app.task(name="merpati_test.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="merpati_test.fail")
def fail(message: str) -> None:
    raise ValueError(message)
