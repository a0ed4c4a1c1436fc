"""Vhost, user and node limits on a real node, met with the real pika client: each refused with
RabbitMQ's code and text, nothing else on the node disturbed, lifted when cleared; set and read
through the management API, `merpati ctl` and definitions.

The tests share one node of their own (limits are node-wide state that other modules' tests must
not meet); each makes its own vhost or user, so none sees another's limits.
"""

from __future__ import annotations

import json
import uuid

import pika
import pika.exceptions as pex
import pytest

from tests.support.ctl import ctl, ctl_out
from tests.support.http import call, q
from tests.support.node import NodeProcess


@pytest.fixture(scope="module")
def lnode():
    n = NodeProcess().start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_vhost(n: NodeProcess) -> str:
    """A vhost guest may use (the creating user gets full permissions, as in RabbitMQ)."""
    vhost = uid("lim")
    assert call(n.management_url, "PUT", f"/api/vhosts/{q(vhost)}", {})[0] == 201
    return vhost


def new_user(n: NodeProcess, vhost: str = "/") -> str:
    user = uid("u")
    base = n.management_url
    assert call(base, "PUT", f"/api/users/{user}", {"password": "pw", "tags": ""})[0] == 201
    perms = {"configure": ".*", "write": ".*", "read": ".*"}
    assert call(base, "PUT", f"/api/permissions/{q(vhost)}/{user}", perms)[0] == 201
    return user


def connect(
    n: NodeProcess, vhost: str = "/", user: str = "guest", password: str = "guest"
) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.URLParameters(f"amqp://{user}:{password}@127.0.0.1:{n.port}/{q(vhost)}")
    )


def works(conn: pika.BlockingConnection) -> None:
    """A round trip through a queue on the connection: it is alive and serving."""
    ch = conn.channel()
    name = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", name, b"ping")
    assert ch.basic_get(name, auto_ack=True)[2] == b"ping"
    ch.close()


def refused_at_open(n: NodeProcess, **kw: str) -> str:
    with pytest.raises(pex.ProbableAccessDeniedError) as info:
        connect(n, **kw)
    return str(info.value)


# -- vhost max-connections ----------------------------------------------------------------------


def test_vhost_max_connections_over_the_http_api(lnode):
    base = lnode.management_url
    vhost = new_vhost(lnode)
    path = f"/api/vhost-limits/{q(vhost)}/max-connections"
    assert call(base, "PUT", path, {"value": 1})[0] == 204
    assert call(base, "GET", f"/api/vhost-limits/{q(vhost)}") == (
        200,
        [{"vhost": vhost, "value": {"max-connections": 1}}],
    )
    assert {"vhost": vhost, "value": {"max-connections": 1}} in call(
        base, "GET", "/api/vhost-limits"
    )[1]

    first = connect(lnode, vhost)
    text = refused_at_open(lnode, vhost=vhost)
    assert (
        "(530)" in text
        and (
            f"NOT_ALLOWED - access to vhost '{vhost}' refused for user 'guest': "
            "connection limit (1) is reached"
        )
        in text
    ), text
    # The connection that got in, and connections to other vhosts, carry on.
    works(first)
    other = connect(lnode, "/")
    works(other)
    other.close()

    # Clearing the limit lifts it.
    assert call(base, "DELETE", path)[0] == 204
    assert call(base, "GET", f"/api/vhost-limits/{q(vhost)}") == (200, [])
    second = connect(lnode, vhost)
    works(second)
    second.close()
    first.close()

    # 0 allows none; negative is no limit.
    assert call(base, "PUT", path, {"value": 0})[0] == 204
    assert "connection limit (0) is reached" in refused_at_open(lnode, vhost=vhost)
    assert call(base, "PUT", path, {"value": -1})[0] == 204
    connect(lnode, vhost).close()


# -- vhost max-queues ---------------------------------------------------------------------------


def test_vhost_max_queues_with_ctl(lnode):
    vhost = new_vhost(lnode)
    ctl(lnode, "set_vhost_limits", "-p", vhost, '{"max-queues": 2, "max-connections": 10}')
    out = ctl_out(lnode, "list_vhost_limits", "-p", vhost)
    assert f'Listing limits for vhost "{vhost}"' in out
    row = out.splitlines()[-1].split("\t")
    assert row[0] == vhost and json.loads(row[1]) == {"max-queues": 2, "max-connections": 10}

    conn = connect(lnode, vhost)
    ch = conn.channel()
    ch.queue_declare("q1")
    ch.queue_declare("q2")
    ch2 = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as info:
        ch2.queue_declare("q3")
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '{vhost}' (2) "
        "is reached"
    )
    # Only that channel closed: the connection and its other channel carry on, and
    # redeclaring a queue that exists is no new queue.
    assert conn.is_open and ch.is_open
    ch.queue_declare("q1")
    ch.basic_publish("", "q1", b"still")
    assert ch.basic_get("q1", auto_ack=True)[2] == b"still"
    # The management API refuses it too, with the same text.
    status, body = call(lnode.management_url, "PUT", f"/api/queues/{q(vhost)}/q3", {})
    assert status == 400 and "queue limit in vhost" in body["reason"], body

    # set_vhost_limits replaces: max-queues is gone, max-connections stays.
    ctl(lnode, "set_vhost_limits", "-p", vhost, '{"max-connections": 10}')
    ch.queue_declare("q3")
    ctl(lnode, "set_vhost_limits", "-p", vhost, '{"max-queues": 3}')
    with pytest.raises(pex.ChannelClosedByBroker):
        conn.channel().queue_declare("q4")
    ctl(lnode, "clear_vhost_limits", "-p", vhost)
    assert ctl_out(lnode, "-q", "list_vhost_limits", "-p", vhost).splitlines() == ["vhost\tlimits"]
    conn.channel().queue_declare("q4")
    conn.close()


# -- user max-connections -----------------------------------------------------------------------


def test_user_max_connections_with_ctl(lnode):
    user = new_user(lnode)
    ctl(lnode, "set_user_limits", user, '{"max-connections": 1}')
    first = connect(lnode, user=user, password="pw")
    text = refused_at_open(lnode, user=user, password="pw")
    assert (
        f"NOT_ALLOWED - connection refused for user '{user}': user connection limit (1) is reached"
    ) in text, text
    works(first)
    guest = connect(lnode)  # other users are not limited
    works(guest)
    guest.close()
    ctl(lnode, "clear_user_limits", user, "max-connections")
    second = connect(lnode, user=user, password="pw")
    works(second)
    second.close()
    first.close()


# -- user max-channels --------------------------------------------------------------------------


def test_user_max_channels_over_the_http_api(lnode):
    base = lnode.management_url
    user = new_user(lnode)
    path = f"/api/user-limits/{user}/max-channels"
    assert call(base, "PUT", path, {"value": 2})[0] == 204
    assert call(base, "GET", f"/api/user-limits/{user}") == (
        200,
        [{"user": user, "value": {"max-channels": 2}}],
    )
    assert call(base, "GET", f"/api/users/{user}")[1]["limits"] == {"max-channels": 2}

    # Counted over all the user's connections: one here, one there, the third is refused and
    # RabbitMQ closes that connection (530), not only the channel.
    a = connect(lnode, user=user, password="pw")
    b = connect(lnode, user=user, password="pw")
    a_ch = a.channel()
    b.channel()
    with pytest.raises(pex.ConnectionClosedByBroker) as info:
        b.channel()
    assert info.value.reply_code == 530
    assert info.value.reply_text == (
        f"NOT_ALLOWED - number of channels opened for user '{user}' has reached the maximum "
        "allowed user limit of 2"
    )
    assert not b.is_open
    # The other connection and its channel carry on.
    a_ch.queue_declare("", exclusive=True)
    assert a.is_open

    # `all` clears every limit of the user (RabbitMQ's clear_user_limits USER all).
    assert call(base, "DELETE", f"/api/user-limits/{user}/all")[0] == 204
    assert call(base, "GET", f"/api/user-limits/{user}") == (200, [])
    works(a)
    a.channel()
    a.close()


# -- the node's --max-connections -----------------------------------------------------------------


def test_node_max_connections(make_node):
    n = make_node("--max-connections", "2")
    first, second = connect(n), connect(n)
    text = refused_at_open(n)
    assert "NOT_ALLOWED - connection refused: node connection limit (2) is reached" in text, text
    works(first)
    # The management API is no client connection: it still answers.
    assert call(n.management_url, "GET", "/api/overview")[0] == 200
    second.close()
    third = connect(n)
    works(third)
    third.close()
    first.close()


# -- the API's refusals, listings and definitions ---------------------------------------------------


def test_api_refusals(lnode):
    base = lnode.management_url
    vhost = new_vhost(lnode)
    user = new_user(lnode)
    status, body = call(base, "PUT", f"/api/vhost-limits/{q(vhost)}/max-channels", {"value": 1})
    assert status == 400 and "Unrecognised terms" in body["reason"], body
    status, body = call(base, "PUT", f"/api/vhost-limits/{q(vhost)}/max-queues", {"value": "x"})
    assert status == 400 and "should be a number" in body["reason"], body
    status, body = call(base, "PUT", f"/api/vhost-limits/{q(vhost)}/max-queues", {"v": 1})
    assert status == 400 and "value" in body["reason"], body
    assert call(base, "PUT", "/api/vhost-limits/nope/max-queues", {"value": 1})[0] == 404
    assert call(base, "GET", "/api/vhost-limits/nope")[0] == 404
    assert call(base, "PUT", f"/api/user-limits/{user}/max-queues", {"value": 1})[0] == 400
    assert call(base, "PUT", "/api/user-limits/nobody/max-channels", {"value": 1})[0] == 404
    # Changes are for administrators; a management user reads only its own limits.
    assert call(base, "PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"})[0] in (
        201,
        204,
    )
    assert (
        call(
            base,
            "PUT",
            f"/api/vhost-limits/{q(vhost)}/max-queues",
            {"value": 1},
            user=user,
            password="pw",
        )[0]
        == 401
    )
    assert call(base, "PUT", f"/api/user-limits/{user}/max-channels", {"value": 5})[0] == 204
    assert call(base, "GET", "/api/user-limits", user=user, password="pw") == (
        200,
        [{"user": user, "value": {"max-channels": 5}}],
    )
    assert call(base, "GET", "/api/user-limits/guest", user=user, password="pw")[0] == 401
    # ctl: a definition that is not JSON is a usage error (64), a refused one fails (1).
    assert ctl(lnode, "set_user_limits", user, "{nope", check=False).returncode == 64
    out = ctl(lnode, "set_user_limits", user, '{"max-queues": 1}', check=False)
    assert out.returncode == 1 and "Unrecognised terms" in out.stderr
    rows = json.loads(ctl_out(lnode, "--formatter", "json", "list_user_limits", "--user", user))
    assert rows == [{"user": user, "limits": {"max-channels": 5}}]
    ctl(lnode, "set_user_limits", user, '{"max-connections": 3}')  # merged into the others
    everyone = json.loads(ctl_out(lnode, "--formatter", "json", "list_user_limits", "--all"))
    assert {"user": user, "limits": {"max-channels": 5, "max-connections": 3}} in everyone


def test_limits_travel_in_definitions(lnode):
    base = lnode.management_url
    vhost = new_vhost(lnode)
    user = new_user(lnode)
    assert call(base, "PUT", f"/api/vhost-limits/{q(vhost)}/max-queues", {"value": 4})[0] == 204
    assert call(base, "PUT", f"/api/user-limits/{user}/max-connections", {"value": 2})[0] == 204
    exported = call(base, "GET", "/api/definitions")[1]
    assert {
        "value": {"max-queues": 4},
        "vhost": vhost,
        "component": "vhost-limits",
        "name": "limits",
    } in exported["parameters"]
    [entry] = [u for u in exported["users"] if u["name"] == user]
    assert entry["limits"] == {"max-connections": 2}
    [vh] = [v for v in exported["vhosts"] if v["name"] == vhost]
    assert vh["limits"] == {"max-queues": 4}

    # Cleared, then imported back.
    ctl(lnode, "clear_vhost_limits", "-p", vhost)
    ctl(lnode, "clear_user_limits", user, "all")
    assert call(base, "POST", "/api/definitions", exported)[0] == 204
    assert call(base, "GET", f"/api/vhost-limits/{q(vhost)}")[1] == [
        {"vhost": vhost, "value": {"max-queues": 4}}
    ]
    assert call(base, "GET", f"/api/user-limits/{user}")[1] == [
        {"user": user, "value": {"max-connections": 2}}
    ]

    # A file whose queues exceed its own vhost's max-queues is refused whole.
    other = uid("defs")
    body = {
        "vhosts": [{"name": other}],
        "parameters": [
            {
                "vhost": other,
                "component": "vhost-limits",
                "name": "limits",
                "value": {"max-queues": 1},
            }
        ],
        "queues": [
            {"name": "a", "vhost": other, "durable": True, "auto_delete": False, "arguments": {}},
            {"name": "b", "vhost": other, "durable": True, "auto_delete": False, "arguments": {}},
        ],
    }
    status, reply = call(base, "POST", "/api/definitions", body)
    assert status == 400 and "queue limit in vhost" in reply["reason"], reply
    assert call(base, "GET", f"/api/vhosts/{q(other)}")[0] == 404
