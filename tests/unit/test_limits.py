"""Resource limits in memory: the metadata commands that keep them, the queue limit the state
machine enforces, the broker's connection and channel checks (this node's counts plus what
other nodes reported), and what a 0-9-1 client sees when it meets one (node/core/limits.py)."""

from __future__ import annotations

import copy
import pickle

import pytest

from merpati.node.broker import Broker
from merpati.node.cluster_seam import LoneNode
from merpati.node.core.limits import (
    USER_LIMITS,
    VHOST_LIMITS,
    ConnectionCounts,
    LimitExceeded,
    effective,
    validate,
)
from merpati.node.metadata import commands as c
from merpati.node.metadata.log import LocalLog
from merpati.node.metadata.state import MetadataError, MetadataState, QueueLimitExceeded
from tests.support.amqp091 import (
    NOT_ALLOWED,
    PRECONDITION_FAILED,
    Client,
    in_loop,
    new_broker,
    spec,
)

V = "/"


def state(*cmds: c.Command) -> MetadataState:
    s = MetadataState()
    for cmd in (c.AddVhost(V), c.PutUser("app", "aGFzaA=="), *cmds):
        r = s.apply(cmd)
        assert not isinstance(r, MetadataError), (cmd, r.text)
    return s


def err(result: object) -> MetadataError:
    assert isinstance(result, MetadataError), result
    return result


# -- validation -------------------------------------------------------------------------------


def test_validate_takes_known_integer_limits_only() -> None:
    assert validate("vhost-limits", VHOST_LIMITS, {"max-queues": 3, "max-connections": -1}) == {
        "max-queues": 3,
        "max-connections": -1,
    }
    with pytest.raises(ValueError, match=r"Unrecognised terms \['max-channels'\]"):
        validate("vhost-limits", VHOST_LIMITS, {"max-channels": 1})
    with pytest.raises(ValueError, match="Unrecognised terms"):
        validate("user-limits", USER_LIMITS, {"max-queues": 1})
    for bad in ("10", 1.5, True, None):
        with pytest.raises(ValueError, match="should be a number"):
            validate("user-limits", USER_LIMITS, {"max-channels": bad})
    with pytest.raises(ValueError, match="JSON object"):
        validate("user-limits", USER_LIMITS, [["max-channels", 1]])


def test_negative_is_no_limit_and_zero_is_none_allowed() -> None:
    assert effective(None, "max-queues") is None
    assert effective({"max-queues": -1}, "max-queues") is None
    assert effective({"max-queues": 0}, "max-queues") == 0
    assert effective({"max-connections": 5}, "max-queues") is None


# -- the metadata commands --------------------------------------------------------------------


def test_set_vhost_limits_replaces_and_a_merge_keeps_the_others() -> None:
    s = state(c.SetVhostLimits(V, {"max-connections": 10, "max-queues": 5}))
    assert s.vhost_limits[V] == {"max-connections": 10, "max-queues": 5}
    s.apply(c.SetVhostLimits(V, {"max-queues": 7}))  # set_vhost_limits: exactly these
    assert s.vhost_limits[V] == {"max-queues": 7}
    s.apply(c.SetVhostLimits(V, {"max-connections": 2}, replace=False))  # PUT of one limit
    assert s.vhost_limits[V] == {"max-queues": 7, "max-connections": 2}
    s.apply(c.ClearVhostLimits(V, ("max-queues", "not-a-limit")))
    assert s.vhost_limits[V] == {"max-connections": 2}
    s.apply(c.ClearVhostLimits(V))
    assert V not in s.vhost_limits
    assert s.apply(c.SetVhostLimits(V, {})) == "ok" and V not in s.vhost_limits


def test_vhost_limits_refused_for_unknown_names_values_and_vhosts() -> None:
    s = state()
    e = err(s.apply(c.SetVhostLimits(V, {"max-channels": 3})))
    assert e.code == 406 and "Unrecognised terms" in e.text
    assert err(s.apply(c.SetVhostLimits(V, {"max-queues": "3"}))).code == 406
    assert err(s.apply(c.SetVhostLimits("nowhere", {"max-queues": 3}))).code == 404
    assert err(s.apply(c.ClearVhostLimits("nowhere"))).code == 404
    assert s.vhost_limits == {}


def test_a_deleted_vhost_takes_its_limits_along() -> None:
    s = state(c.AddVhost("v2"), c.SetVhostLimits("v2", {"max-queues": 1}))
    s.apply(c.DeleteVhost("v2"))
    s.apply(c.AddVhost("v2"))
    assert "v2" not in s.vhost_limits


def test_user_limits_merge_clear_and_go_with_the_user() -> None:
    s = state(c.SetUserLimits("app", {"max-connections": 2}))
    s.apply(c.SetUserLimits("app", {"max-channels": 4}))  # set_user_limits merges
    assert s.user_limits["app"] == {"max-connections": 2, "max-channels": 4}
    s.apply(c.SetUserLimits("app", {"max-channels": 1}, replace=True))
    assert s.user_limits["app"] == {"max-channels": 1}
    # A password or tag change (PutUser) keeps them, as in RabbitMQ.
    s.apply(c.PutUser("app", "b3RoZXI=", ("management",)))
    assert s.user_limits["app"] == {"max-channels": 1}
    s.apply(c.SetUserLimits("app", {"max-connections": 3}))
    s.apply(c.ClearUserLimits("app", ("max-channels",)))
    assert s.user_limits["app"] == {"max-connections": 3}
    s.apply(c.ClearUserLimits("app", ("all",)))  # clear_user_limits USER all
    assert "app" not in s.user_limits
    s.apply(c.SetUserLimits("app", {"max-connections": 3}))
    s.apply(c.DeleteUser("app"))
    s.apply(c.PutUser("app", "aGFzaA=="))
    assert "app" not in s.user_limits


def test_user_limits_refused_for_unknown_users_and_names() -> None:
    s = state()
    assert err(s.apply(c.SetUserLimits("nobody", {"max-channels": 1}))).code == 404
    assert err(s.apply(c.ClearUserLimits("nobody"))).code == 404
    e = err(s.apply(c.SetUserLimits("app", {"max-queues": 1})))
    assert e.code == 406 and "max-queues" in e.text


# -- max-queues: enforced by the state machine --------------------------------------------------


def test_max_queues_refuses_the_queue_beyond_it_with_rabbitmqs_text() -> None:
    s = state(
        c.SetVhostLimits(V, {"max-queues": 2}), c.DeclareQueue(V, "a"), c.DeclareQueue(V, "b")
    )
    e = err(s.apply(c.DeclareQueue(V, "q")))
    assert isinstance(e, QueueLimitExceeded) and e.code == 406
    assert e.text == "cannot declare queue 'q': queue limit in vhost '/' (2) is reached"
    assert s.queue(V, "q") is None
    # Redeclaring one that exists is no new queue.
    assert s.apply(c.DeclareQueue(V, "a")) == "exists"
    # Another vhost has its own count and no limit.
    s.apply(c.AddVhost("v2"))
    assert s.apply(c.DeclareQueue("v2", "q")) == "created"
    # A deletion makes room; clearing the limit lifts it.
    s.apply(c.DeleteQueue(V, "b"))
    assert s.apply(c.DeclareQueue(V, "q")) == "created"
    assert isinstance(s.apply(c.DeclareQueue(V, "r")), QueueLimitExceeded)
    s.apply(c.ClearVhostLimits(V, ("max-queues",)))
    assert s.apply(c.DeclareQueue(V, "r")) == "created"


def test_max_queues_zero_allows_none_and_negative_any() -> None:
    s = state(c.SetVhostLimits(V, {"max-queues": 0}))
    e = err(s.apply(c.DeclareQueue(V, "q", exclusive_owner="n1/x/1")))
    assert e.text == "cannot declare queue 'q': queue limit in vhost '/' (0) is reached"
    s.apply(c.SetVhostLimits(V, {"max-queues": -1}))
    assert s.apply(c.DeclareQueue(V, "q")) == "created"


def test_a_limit_below_the_queues_there_refuses_only_new_ones() -> None:
    s = state(
        c.DeclareQueue(V, "a"), c.DeclareQueue(V, "b"), c.SetVhostLimits(V, {"max-queues": 1})
    )
    assert set(s.vhosts[V].queues) == {"a", "b"}
    assert isinstance(s.apply(c.DeclareQueue(V, "c")), QueueLimitExceeded)


def test_limits_survive_a_snapshot_and_old_snapshots_read_none() -> None:
    s = state(c.SetVhostLimits(V, {"max-queues": 3}), c.SetUserLimits("app", {"max-channels": 2}))
    back = pickle.loads(pickle.dumps(s))
    assert back.vhost_limits == {V: {"max-queues": 3}}
    assert back.user_limits == {"app": {"max-channels": 2}}
    # A state pickled before limits existed has neither attribute.
    old = copy.copy(s.__dict__)
    del old["vhost_limits"], old["user_limits"]
    restored = MetadataState.__new__(MetadataState)
    restored.__setstate__(old)
    assert restored.vhost_limits == {} and restored.user_limits == {}
    assert restored.apply(c.DeclareQueue(V, "q")) == "created"


# -- the broker's connection and channel checks ------------------------------------------------


class FakeCluster(LoneNode):
    """A lone node whose peers report `counts`."""

    def __init__(self, counts: ConnectionCounts) -> None:
        super().__init__()
        self.counts = counts

    def peer_counts(self) -> ConnectionCounts:
        return self.counts


class FakeConn:
    """What the broker reads of a client connection: its user, vhost and (0-9-1) channels."""

    def __init__(self, user: str, vhost: str, channels: int) -> None:
        self.user = user
        self.vhost = vhost
        self.channels = dict.fromkeys(range(channels))


class FakeConn10:
    """An AMQP 1.0 connection: sessions, no channels."""

    def __init__(self, user: str, vhost: str) -> None:
        self.user = user
        self.vhost = vhost
        self.sessions = {0: object()}


def conn(user: str = "guest", vhost: str = V, channels: int = 0) -> FakeConn:
    return FakeConn(user, vhost, channels)


async def broker_with(*cmds: c.Command, **kw: object) -> Broker:
    b = Broker("n1", LocalLog(), **kw)
    for cmd in (c.AddVhost(V), c.AddVhost("v2"), c.PutUser("guest", "x"), c.PutUser("app", "x")):
        await b.propose(cmd)
    for cmd in cmds:
        await b.propose(cmd)
    return b


def refused(b: Broker, user: str = "guest", vhost: str = V) -> str | None:
    try:
        b.check_connection(user, vhost)
    except LimitExceeded as e:
        return e.text
    return None


@in_loop
async def test_connection_counts_per_vhost_and_user_and_channels() -> None:
    b = await broker_with()
    b.connections |= {conn(channels=2), conn(), conn("app", "v2", 3)}
    # An AMQP 1.0 connection: sessions, no channels; it counts as a connection only.
    b.connections.add(FakeConn10("app", V))
    counts = b.connection_counts()
    assert counts.vhost_connections == {V: 3, "v2": 1}
    assert counts.user_connections == {"guest": 2, "app": 2}
    assert counts.user_channels == {"guest": 2, "app": 3}


@in_loop
async def test_vhost_max_connections_counts_this_vhost_only() -> None:
    b = await broker_with(c.SetVhostLimits(V, {"max-connections": 2}))
    assert refused(b) is None
    b.connections |= {conn(), conn("app", "v2")}
    assert refused(b) is None
    b.connections.add(conn("app"))
    assert (
        refused(b)
        == "access to vhost '/' refused for user 'guest': connection limit (2) is reached"
    )
    assert refused(b, vhost="v2") is None
    await b.propose(c.SetVhostLimits(V, {"max-connections": -1}))
    assert refused(b) is None
    await b.propose(c.SetVhostLimits(V, {"max-connections": 0}))
    assert "connection limit (0) is reached" in (refused(b, "app") or "")


@in_loop
async def test_user_max_connections_counts_every_vhost() -> None:
    b = await broker_with(c.SetUserLimits("app", {"max-connections": 2}))
    b.connections |= {conn("app", V), conn("app", "v2"), conn("guest")}
    assert refused(b, "app", "v2") == (
        "connection refused for user 'app': user connection limit (2) is reached"
    )
    assert refused(b, "guest") is None
    await b.propose(c.ClearUserLimits("app", ("all",)))
    assert refused(b, "app") is None


@in_loop
async def test_node_max_connections_comes_first() -> None:
    b = await broker_with(c.SetVhostLimits(V, {"max-connections": 0}), max_connections=1)
    assert (
        refused(b)
        == "access to vhost '/' refused for user 'guest': connection limit (0) is reached"
    )
    b.connections.add(conn("app", "v2"))
    assert refused(b, vhost="v2") == "connection refused: node connection limit (1) is reached"
    # AMQP 1.0's wording of the vhost limit is RabbitMQ 4's.
    b.connections.clear()
    with pytest.raises(LimitExceeded) as info:
        b.check_connection("guest", V)
    assert info.value.text10.endswith("vhost connection limit (0) is reached")


@in_loop
async def test_user_max_channels_counts_all_its_connections() -> None:
    b = await broker_with(c.SetUserLimits("app", {"max-channels": 3}))
    b.connections |= {conn("app", channels=2), conn("app", "v2", channels=0)}
    b.check_channel("app")
    b.connections.add(conn("app", channels=1))
    with pytest.raises(LimitExceeded) as info:
        b.check_channel("app")
    assert info.value.text == (
        "number of channels opened for user 'app' has reached the maximum allowed user limit of 3"
    )
    b.check_channel("guest")


@in_loop
async def test_other_nodes_counts_are_added() -> None:
    peers = ConnectionCounts({V: 1}, {"app": 1}, {"app": 2})
    b = await broker_with(
        c.SetVhostLimits(V, {"max-connections": 2}),
        c.SetUserLimits("app", {"max-connections": 5, "max-channels": 2}),
        cluster=FakeCluster(peers),
    )
    assert refused(b) is None
    b.connections.add(conn("guest"))
    assert "connection limit (2)" in (refused(b) or "")  # one here, one on another node
    with pytest.raises(LimitExceeded):
        b.check_channel("app")  # both on the other node
    peers.user_channels.clear()
    b.check_channel("app")


def test_counts_add_up() -> None:
    total = ConnectionCounts({"/": 1}, {"a": 1}, {})
    total.add(ConnectionCounts({"/": 2, "v": 1}, {"b": 1}, {"a": 4}))
    assert total == ConnectionCounts({"/": 3, "v": 1}, {"a": 1, "b": 1}, {"a": 4})


# -- what a 0-9-1 client sees (in memory) ------------------------------------------------------


def _close(frames: list) -> object:
    closes = [f.method for f in frames if f.is_(spec.ConnectionClose)]
    assert len(closes) == 1, [f.name for f in frames]
    return closes[0]


@in_loop
async def test_091_open_beyond_the_vhost_limit_is_530_and_others_carry_on() -> None:
    broker = await new_broker()
    await broker.propose(c.SetVhostLimits(V, {"max-connections": 1}))
    first = Client(broker)
    first.open()
    second = Client(broker)
    close = _close(second.handshake())
    assert close.reply_code == NOT_ALLOWED and (close.class_id, close.method_id) == (10, 40)
    assert close.reply_text == (
        "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) is "
        "reached"
    )
    assert second.conn not in broker.connections
    # The first connection is untouched and works.
    assert first.declare(1, "still-here").name == "queue.declare-ok"
    # Clearing the limit lets the next one in.
    await broker.propose(c.ClearVhostLimits(V))
    Client(broker).open()


@in_loop
async def test_091_channel_beyond_the_user_limit_closes_the_connection_with_530() -> None:
    broker = await new_broker()
    await broker.propose(c.SetUserLimits("guest", {"max-channels": 2}))
    other = Client(broker)
    other.open(1)
    client = Client(broker)
    client.open(1)
    close = _close(client.send(2, spec.ChannelOpen()))
    assert close.reply_code == NOT_ALLOWED and (close.class_id, close.method_id) == (20, 10)
    assert close.reply_text == (
        "NOT_ALLOWED - number of channels opened for user 'guest' has reached the maximum "
        "allowed user limit of 2"
    )
    assert other.declare(1, "fine").name == "queue.declare-ok"
    await broker.propose(c.SetUserLimits("guest", {"max-channels": -1}))
    assert [f.name for f in other.send(2, spec.ChannelOpen())] == ["channel.open-ok"]


@in_loop
async def test_091_queue_beyond_max_queues_is_406_on_the_channel() -> None:
    broker = await new_broker()
    await broker.propose(c.SetVhostLimits(V, {"max-queues": 1}))
    client = Client(broker)
    client.open(1, 2)
    assert client.declare(1, "q1").name == "queue.declare-ok"
    out = client.send(2, spec.QueueDeclare(queue="q2")) + await client.settle()
    closes = [f for f in out if f.is_(spec.ChannelClose)]
    assert len(closes) == 1 and closes[0].channel == 2
    assert closes[0].method.reply_code == PRECONDITION_FAILED
    assert closes[0].method.reply_text == (
        "PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost '/' (1) is reached"
    )
    assert client.conn.state == "running"
    assert client.declare(1, "q1").name == "queue.declare-ok"
