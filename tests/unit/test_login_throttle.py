"""Failed logins per source address: LIMIT in WINDOW, then refused unchecked until the window
moves on; loopback never counted; the refusal is the usual ACCESS_REFUSED."""

from __future__ import annotations

from merpati.node.core.login_throttle import LoginThrottle
from tests.unit.test_amqp091_connection import Client, connection_close, in_loop, new_broker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_source_is_held_after_the_limit_until_its_oldest_failure_ages_out() -> None:
    clock = Clock()
    t = LoginThrottle(limit=3, window=10.0, clock=clock)
    assert [t.failed("198.51.100.1") for _ in range(3)] == [False, False, True]
    assert t.blocked_for("198.51.100.1") == 10.0
    assert t.blocked_for("198.51.100.2") == 0.0  # others are not affected
    clock.now += 10.0
    assert t.blocked_for("198.51.100.1") == 0.0


def test_a_few_mistakes_spread_out_never_block() -> None:
    clock = Clock()
    t = LoginThrottle(limit=3, window=10.0, clock=clock)
    for _ in range(10):
        t.failed("198.51.100.1")
        clock.now += 6.0
        assert t.blocked_for("198.51.100.1") == 0.0


@in_loop
async def test_a_guessing_client_is_refused_even_with_the_right_password() -> None:
    broker = await new_broker()
    peer = ("192.0.2.9", 40000)
    limit = broker.login_throttle.limit
    for _ in range(limit):
        c = Client(broker, loopback=False, peer=peer)
        close = connection_close(c.handshake(user="guest", password="wrong"))
        assert close.reply_code == 403
    c = Client(broker, loopback=False, peer=peer)
    close = connection_close(c.handshake(user="guest", password="guest"))
    assert close.reply_code == 403 and "too many failed logins from 192.0.2.9" in close.reply_text
    # A loopback client is never throttled.
    for _ in range(limit + 2):
        connection_close(Client(broker).handshake(password="wrong"))
    local = Client(broker)
    local.handshake(password="guest")
    assert local.conn.state == "running" and local.conn.user == "guest"
