"""A pika publisher that watches connection.blocked/unblocked, for the resource alarm tests.

`publish_while_blocked` is the check the alarm tests share: a publish with confirms while an
alarm stands must not complete until something else (another thread: `merpati ctl
set_disk_free_limit`, a node killed) clears the alarm. It asserts an order, never a duration:
the clearing thread records that it started before the publish was confirmed. As in RabbitMQ,
connection.blocked comes when the connection publishes while an alarm stands, so the tests first
wait for the alarm to show in the node's health check (`alarms_on`), then publish.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pika

from tests.support.http import call


class AlarmWatcher:
    """A BlockingConnection (with the connection.blocked capability pika always offers) and a
    channel with confirms on, recording the blocked reasons and unblocks it hears."""

    def __init__(self, host: str, port: int, queue: str, exclusive: bool = False) -> None:
        self.conn = pika.BlockingConnection(
            pika.ConnectionParameters(
                host=host,
                port=port,
                credentials=pika.PlainCredentials("guest", "guest"),
                connection_attempts=3,
                retry_delay=0.5,
                socket_timeout=5,
            )
        )
        self.blocked: list[str] = []
        self.unblocked = 0
        self.conn.add_on_connection_blocked_callback(
            lambda _c, frame: self.blocked.append(frame.method.reason)
        )
        self.conn.add_on_connection_unblocked_callback(lambda _c, _f: self._unblocked())
        self.queue = queue
        self.ch = self.conn.channel()
        # Before any publish: a blocked connection reads no more. Exclusive: on this node.
        self.ch.queue_declare(queue, exclusive=exclusive)
        self.ch.confirm_delivery()

    def _unblocked(self) -> None:
        self.unblocked += 1

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.1)
        return predicate()

    def wait_blocked(self, timeout: float = 20.0) -> str:
        """The reason of the connection.blocked the last publish brought."""
        assert self.wait(lambda: len(self.blocked) > self.unblocked, timeout), (
            f"no connection.blocked within {timeout}s (blocked {self.blocked}, "
            f"unblocked {self.unblocked})"
        )
        return self.blocked[-1]

    def publish_while_blocked(self, clear: Callable[[], None], pause: float = 1.0) -> None:
        """Publish one message with a confirm while blocked; `clear` runs in another thread
        after `pause` seconds. Returns once confirmed, having checked that the confirm came
        only after `clear` had started."""
        started = threading.Event()
        failure: list[BaseException] = []

        def clearing() -> None:
            time.sleep(pause)
            started.set()
            try:
                clear()
            except BaseException as e:  # noqa: BLE001 - reported in the test's thread
                failure.append(e)

        def hung(*_: object) -> None:
            raise AssertionError("the publish was never confirmed after the alarm cleared")

        worker = threading.Thread(target=clearing, daemon=True)
        old = signal.signal(signal.SIGALRM, hung)
        signal.alarm(120)  # basic_publish waits for its confirm without a timeout of its own
        worker.start()
        try:
            self.ch.basic_publish("", self.queue, b"while blocked")  # returns once confirmed
            confirmed_after_clearing = started.is_set()
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
            worker.join(60)
        assert not failure, failure
        assert confirmed_after_clearing, "the publish was confirmed while the alarm stood"

    def close(self) -> None:
        # A connection still blocked is not read by the node (nor by RabbitMQ), so its
        # connection.close would never be answered: it is left to the node's stop instead.
        if self.conn.is_open and len(self.blocked) == self.unblocked:
            self.conn.close()


def alarms_on(node: object) -> list[dict[str, str]]:
    """The alarms `node`'s /api/health/checks/alarms lists (empty when it answers ok)."""
    status, body = call(node.management_url, "GET", "/api/health/checks/alarms")  # type: ignore[attr-defined]
    assert status in (200, 503), (status, body)
    return body.get("alarms", []) if status == 503 else []


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.1)
    return predicate()
