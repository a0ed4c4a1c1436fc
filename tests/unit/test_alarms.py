"""Resource alarms: the disk free limit's spellings, the disk monitor, the bookkeeping by node and
resource (node.core.alarms), the broker telling its connections, and what a 0-9-1 client sees."""

from __future__ import annotations

import asyncio

import pytest

from merpati.node.config import ConfigError, load
from merpati.node.core.alarms import DISK, MEMORY, Alarms, blocked_reason
from merpati.node.disk_monitor import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    DiskFreeLimit,
    DiskLimitError,
    DiskMonitor,
    check_interval,
    parse_disk_free_limit,
)
from tests.support.amqp091 import Client, in_loop, new_broker, spec

# -- the limit's spellings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50000000", 50_000_000),
        (50_000_000, 50_000_000),
        ("0", 0),
        # RabbitMQ's units: B alone is a power of 1000, a letter alone or with i/iB of 1024.
        ("50MB", 50_000_000),
        ("50mb", 50_000_000),
        ("50Mb", 50_000_000),
        ("2GB", 2_000_000_000),
        ("500kB", 500_000),
        ("1TB", 10**12),
        ("1000TB", 10**15),
        ("1PB", 10**15),
        ("1GiB", 1 << 30),
        ("1gib", 1 << 30),
        ("1Gi", 1 << 30),
        ("1G", 1 << 30),
        ("10k", 10 * 1024),
        ("3MiB", 3 << 20),
        ("1TiB", 1 << 40),
        (" 50MB ", 50_000_000),
    ],
)
def test_absolute_limits(text, expected) -> None:
    assert parse_disk_free_limit(text) == DiskFreeLimit(absolute=expected)


@pytest.mark.parametrize(
    ("text", "fraction"),
    [("mem_relative:1.0", 1.0), ("mem_relative:2", 2.0), ("mem_relative 1.5", 1.5)],
)
def test_relative_limits_are_multiples_of_ram(text, fraction) -> None:
    limit = parse_disk_free_limit(text)
    assert limit == DiskFreeLimit(mem_relative=fraction)
    assert limit.resolve(total_memory=8 << 30) == round(fraction * (8 << 30))
    assert str(limit) == f"mem_relative:{fraction:g}"


@pytest.mark.parametrize(
    "text", ["", "MB", "-5", "5XB", "1.5GB", "50 M B", "mem_relative:", "mem_relative:x", True]
)
def test_bad_limits_are_refused(text) -> None:
    with pytest.raises(DiskLimitError):
        parse_disk_free_limit(text)


def test_the_default_is_rabbitmqs_50mb() -> None:
    cfg = load({}, environ={})
    assert parse_disk_free_limit(cfg.disk_free_limit).resolve(0) == 50_000_000


def test_config_takes_the_limit_from_flag_environment_and_toml_integer(tmp_path) -> None:
    assert load({"disk_free_limit": "2GB"}, environ={}).disk_free_limit == "2GB"
    env = {"MERPATI_DISK_FREE_LIMIT": "mem_relative:1.0"}
    assert load({}, environ=env).disk_free_limit == "mem_relative:1.0"
    conf = tmp_path / "m.toml"
    conf.write_text("disk-free-limit = 1000000\n")
    assert load({"config": str(conf)}, environ={}).disk_free_limit == "1000000"
    with pytest.raises(ConfigError, match="disk-free-limit"):
        load({"disk_free_limit": "lots"}, environ={})


# -- the monitor --------------------------------------------------------------------------------


def test_check_interval_shortens_near_the_limit() -> None:
    # RabbitMQ's: the time to fill twice the margin at 250 MB/s, between 0.1 s and 10 s.
    assert check_interval(10**12, 50_000_000, alarmed=False) == MAX_INTERVAL
    assert check_interval(50_000_000 + 125_000_000, 50_000_000, alarmed=False) == 1.0
    assert check_interval(50_000_001, 50_000_000, alarmed=False) == MIN_INTERVAL
    assert check_interval(0, 50_000_000, alarmed=True) == MAX_INTERVAL
    assert check_interval(None, 50_000_000, alarmed=False) == MAX_INTERVAL


@in_loop
async def test_disk_monitor_raises_and_clears_and_takes_a_new_limit_at_once() -> None:
    free = {"bytes": 10_000}
    heard: list[bool] = []

    def read_free(path: str) -> int:
        if free["bytes"] < 0:
            raise OSError("gone")
        return free["bytes"]

    mon = DiskMonitor("/x", DiskFreeLimit(absolute=5_000), heard.append, lambda: 0, read_free)
    await mon.check()
    assert (mon.alarmed, mon.free, heard) == (False, 10_000, [])
    free["bytes"] = 4_000
    await mon.check()
    assert mon.alarmed and heard == [True]
    await mon.check()
    assert heard == [True]  # told once
    # Unreadable: the alarm stays as it was.
    free["bytes"] = -1
    await mon.check()
    assert mon.alarmed and mon.free is None and heard == [True]
    free["bytes"] = 4_000
    await mon.set_limit(DiskFreeLimit(absolute=1_000))
    assert not mon.alarmed and heard == [True, False]
    await mon.set_limit(parse_disk_free_limit("mem_relative:1.0"))  # RAM 0 here: limit 0
    assert mon.limit_bytes == 0 and not mon.alarmed
    mon.start()
    await asyncio.sleep(0)
    await mon.stop()


# -- bookkeeping --------------------------------------------------------------------------------


def test_alarms_are_kept_by_node_and_resource() -> None:
    a = Alarms("n1")
    assert a.in_effect() == frozenset() and a.by_node() == []
    assert a.set_local(MEMORY, True)
    assert not a.set_local(MEMORY, True)  # no change
    assert a.set_remote("n2", [DISK])
    assert not a.set_remote("n2", (DISK,))
    assert a.set_remote("n3", [DISK, MEMORY])
    assert a.in_effect() == {MEMORY, DISK}
    assert a.by_node() == [("n1", MEMORY), ("n2", DISK), ("n3", MEMORY), ("n3", DISK)]
    # A node down or gone reports none; its alarms go.
    assert a.set_remote("n3", [])
    assert a.by_node() == [("n1", MEMORY), ("n2", DISK)]
    assert a.set_local(MEMORY, False)
    assert a.in_effect() == {DISK}  # n2's disk alarm still blocks
    assert a.set_remote("n2", [])
    assert a.in_effect() == frozenset() and a.remote == {}


def test_alarms_ignore_unknown_resources_and_this_nodes_own_id() -> None:
    a = Alarms("n1")
    assert not a.set_remote("n2", ["file descriptors"])
    assert not a.set_remote("n1", [DISK])  # this node's alarms come from its own monitors
    with pytest.raises(ValueError):
        a.set_local("cpu", True)


def test_blocked_reason_is_rabbitmqs() -> None:
    assert blocked_reason({MEMORY}) == "low on memory"
    assert blocked_reason({DISK}) == "low on disk"
    assert blocked_reason({MEMORY, DISK}) == "low on disk & memory"


@in_loop
async def test_broker_tells_listeners_only_when_the_resources_in_effect_change() -> None:
    broker = await new_broker()
    heard: list[frozenset[str]] = []
    broker.alarm_listeners.append(heard.append)
    broker.set_alarm(MEMORY, True)
    broker.set_remote_alarms("n2", [MEMORY])  # the same resource: nothing new
    broker.set_alarm(DISK, True)
    broker.set_alarm(MEMORY, False)  # n2's memory alarm stands
    assert heard == [{MEMORY}, {MEMORY, DISK}]
    assert broker.blocked and broker.blocked_by == {MEMORY, DISK}
    broker.set_remote_alarms("n2", [])
    broker.set_alarm(DISK, False)
    assert heard == [{MEMORY}, {MEMORY, DISK}, {DISK}, frozenset()]
    assert not broker.blocked


# -- what a 0-9-1 client sees ---------------------------------------------------------------------


def _blocking_client(broker) -> Client:
    # What Node._on_alarm does for the node's connections.
    broker.alarm_listeners.append(
        lambda resources: [conn.on_alarm(resources) for conn in list(broker.connections)]
    )
    c = Client(broker)
    names = [f.name for f in c.handshake(capabilities={"connection.blocked": True})]
    assert names == ["connection.start", "connection.tune", "connection.open-ok"]
    assert [f.name for f in c.send(1, spec.ChannelOpen())] == ["channel.open-ok"]
    return c


@in_loop
async def test_a_publish_during_an_alarm_blocks_and_waits_for_every_alarm_to_clear() -> None:
    broker = await new_broker()
    c = _blocking_client(broker)
    c.declare(1, "q")
    broker.set_alarm(DISK, True)
    # As RabbitMQ: nothing is sent to a connection that does not publish ("blocking").
    assert c.take() == [] and c.shell.reading
    assert c.send(1, spec.BasicQos(prefetch_count=1))[0].name == "basic.qos-ok"
    # A publish blocks it: connection.blocked, reading stops, the message waits, and so does
    # what the client sent after it in the same read.
    out = c.feed(c.publish_bytes(1, "", "q", b"one") + c.publish_bytes(1, "", "q", b"two"))
    assert [f.name for f in out] == ["connection.blocked"]
    assert out[0].method.reason == "low on disk"
    assert not c.shell.reading and c.conn.held_publish is not None
    assert broker.queue("/", "q").message_count == 0
    c.feed(c.publish_bytes(1, "", "q", b"three"))  # bytes already on their way
    broker.set_remote_alarms("n2", [MEMORY])  # another node's alarm joins: no second frame
    assert c.take() == []
    broker.set_alarm(DISK, False)  # n2's memory alarm still stands
    assert c.take() == [] and not c.shell.reading
    assert broker.queue("/", "q").message_count == 0
    broker.set_remote_alarms("n2", [])  # n2 cleared it (or went down)
    assert [f.name for f in c.take()] == ["connection.unblocked"]
    assert c.shell.reading and not c.conn.blocked and c.conn.held_publish is None
    assert broker.queue("/", "q").message_count == 3
    got = [c.send(1, spec.BasicGet(queue="q", no_ack=True))[0].body for _ in range(3)]
    assert got == [b"one", b"two", b"three"]


@in_loop
async def test_a_connection_opened_during_an_alarm_hears_of_it_at_its_first_publish() -> None:
    broker = await new_broker()
    broker.set_alarm(MEMORY, True)
    broker.set_alarm(DISK, True)
    c = _blocking_client(broker)
    assert c.conn.blocked and c.take() == []
    out = c.publish(1, "", "q", b"x")
    assert [f.name for f in out] == ["connection.blocked"]
    assert out[0].method.reason == "low on disk & memory"


@in_loop
async def test_blocked_connections_are_not_dropped_for_unseen_heartbeats() -> None:
    broker = await new_broker()
    c = _blocking_client(broker)
    c.conn.heartbeat = 4
    broker.set_alarm(DISK, True)
    c.publish(1, "", "q", b"x")
    for _ in range(40):  # ten intervals without a frame read
        assert c.conn.heartbeat_tick()
    assert c.conn.state == "running"
