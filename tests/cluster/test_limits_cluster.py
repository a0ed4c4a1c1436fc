"""Limits counted over the whole cluster: three real node processes and pika.

A vhost's or user's connections and channels on the other nodes reach each node with the
forwarding pings (about once a second), so a client refused on n3 may hold no connection there
at all; queues count cluster-wide through the metadata. Also the pieces in one process: what a
peer reports, and that a peer gone down counts no more.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions as pex
import pytest

from merpati.node.core.limits import LimitExceeded
from merpati.node.metadata import commands as cmds
from tests.support.ctl import ctl
from tests.support.http import q

from .conftest import start_cluster
from .test_forwarding import run, until


@pytest.fixture
def three():
    c = start_cluster()
    yield c
    c.stop()
    for n in c.nodes.values():
        if n.alive():
            n.stop(signal.SIGKILL)


def connect(n: Any, vhost: str = "/", user: str = "guest", password: str = "guest"):
    return pika.BlockingConnection(
        pika.URLParameters(f"amqp://{user}:{password}@127.0.0.1:{n.port}/{q(vhost)}")
    )


def refused_until(n: Any, expect: str, timeout: float = 10.0, **kw: str) -> str:
    """Connect to `n` until it refuses with `expect` in the reason: the other nodes' counts
    arrive with their next pings."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = connect(n, **kw)
        except pex.ProbableAccessDeniedError as e:
            if expect in str(e):
                return str(e)
            raise
        conn.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"{n.port} kept accepting connections")
        time.sleep(0.2)


def test_vhost_and_user_limits_count_every_node(three):
    n1, n2, n3 = three["n1"], three["n2"], three["n3"]
    ctl(n1, "add_vhost", "shared")
    ctl(n1, "set_vhost_limits", "-p", "shared", '{"max-connections": 2, "max-queues": 2}')

    a = connect(n1, "shared")
    b = connect(n2, "shared")
    text = refused_until(n3, "connection limit (2) is reached", vhost="shared")
    assert "NOT_ALLOWED - access to vhost 'shared' refused for user 'guest'" in text
    # Other vhosts are not limited, and the two connections carry on.
    connect(n3).close()
    a.channel().queue_declare("qa")
    b.channel().queue_declare("qb")
    # max-queues is the metadata's: the third queue is refused on any node.
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        a.channel().queue_declare("qc")
    assert info.value.reply_code == 406 and "queue limit in vhost 'shared' (2)" in str(info.value)
    b.close()
    # n2's connection is gone: once n3 hears of it, n3 lets one in.
    deadline = time.monotonic() + 10
    while True:
        try:
            connect(n3, "shared").close()
            break
        except pex.ProbableAccessDeniedError:
            assert time.monotonic() < deadline, "n3 never heard that n2's connection closed"
            time.sleep(0.2)
    a.close()

    # A user's channels, over its connections on different nodes.
    ctl(n1, "add_user", "app", "pw")
    ctl(n1, "set_permissions", "app", ".*", ".*", ".*")
    ctl(n2, "set_user_limits", "app", '{"max-channels": 2}')
    c1 = connect(n1, user="app", password="pw")
    c2 = connect(n2, user="app", password="pw")
    c1.channel()
    c2.channel()
    c3 = connect(n3, user="app", password="pw")
    deadline = time.monotonic() + 10
    while True:
        try:
            c3.channel().close()
        except pex.ConnectionClosedByBroker as e:
            assert e.reply_code == 530 and "maximum allowed user limit of 2" in e.reply_text
            break
        assert time.monotonic() < deadline, "n3 never counted the channels of n1 and n2"
        time.sleep(0.2)
    assert c1.is_open and c2.is_open
    c1.close()
    c2.close()


# -- in one process: the counts a peer reports ---------------------------------------------------


class Conn:
    def __init__(self, user: str, vhost: str) -> None:
        self.user, self.vhost, self.channels = user, vhost, {1: None}


def test_a_peers_counts_arrive_with_its_pings_and_go_when_it_does(tmp_path: Path) -> None:
    async def body(c: Any) -> None:
        await c.everywhere(cmds.PutUser("guest", "x"))
        await c.everywhere(cmds.SetVhostLimits("/", {"max-connections": 1}))
        c.b.broker.connections.add(Conn("guest", "/"))
        await until(lambda: c.a.cluster.peer_counts().vhost_connections == {"/": 1})
        assert c.a.cluster.peer_counts().user_channels == {"guest": 1}
        with pytest.raises(LimitExceeded):
            c.a.broker.check_connection("guest", "/")
        # b stops answering: its clients count no more (they are cut off from it, or gone).
        c.a.fw.peers["b"]._went_down("test")
        assert c.a.cluster.peer_counts().vhost_connections == {}
        c.a.broker.check_connection("guest", "/")

    run(body, tmp_path)
