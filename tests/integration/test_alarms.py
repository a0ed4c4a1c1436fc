"""Resource alarms on a real node with pika: the disk alarm from --disk-free-limit, changed at run
time with `merpati ctl set_disk_free_limit`, and the two kinds of alarm held apart.

The disk limits used are far above any machine's free space (10^18 bytes) to raise the alarm,
and 1MB to clear it, so the tests do not depend on how full the disk is."""

from __future__ import annotations

from tests.support.alarms import AlarmWatcher, alarms_on, wait_for
from tests.support.ctl import ctl, ctl_out
from tests.support.http import call, q, samples, scrape

HUGE = "1000000TB"  # 10^18 bytes


def _health(node, path: str = "/api/health/checks/alarms"):
    return call(node.management_url, "GET", path)


def test_disk_alarm_blocks_pika_until_the_limit_is_lowered(make_node):
    n = make_node("--disk-free-limit", HUGE)
    me = f"test@{n.port}"
    # The first check runs before the node listens: the alarm stands from the start.
    assert "free disk space is below the limit" in n.log()
    assert _health(n) == (
        503,
        {
            "status": "failed",
            "reason": "There are alarms in effect in the cluster",
            "alarms": [{"node": me, "resource": "disk space"}],
        },
    )
    assert _health(n, "/api/health/checks/local-alarms") == (
        503,
        {
            "status": "failed",
            "reason": "There are alarms in effect on the node",
            "alarms": [{"node": me, "resource": "disk space"}],
        },
    )
    status, nodes = call(n.management_url, "GET", "/api/nodes")
    assert status == 200
    assert nodes[0]["disk_free_alarm"] is True and nodes[0]["mem_alarm"] is False
    assert nodes[0]["disk_free_limit"] == 10**18
    assert 0 < nodes[0]["disk_free"] < 10**18
    s = samples(scrape(n.metrics_url))
    assert s["rabbitmq_alarms_free_disk_space_watermark"] == 1
    assert s["rabbitmq_alarms_memory_used_watermark"] == 0
    assert s["rabbitmq_disk_space_available_limit_bytes"] == 10**18
    out = ctl_out(n, "status")
    assert "Disk alarm: true" in out
    assert f"Free disk space alarm on node {me}" in out

    w = AlarmWatcher(n.host, n.port, "disk-alarm-q")
    try:
        # The publish waits (the node holds it and reads no more) until the limit drops; pika
        # hears connection.blocked, then connection.unblocked.
        w.publish_while_blocked(lambda: ctl(n, "set_disk_free_limit", "1MB"))
        assert w.wait(lambda: w.unblocked == 1)
        assert w.blocked == ["low on disk"]
        assert _health(n) == (200, {"status": "ok"})
        assert "Alarms: (none)" in ctl_out(n, "status")
        assert samples(scrape(n.metrics_url))["rabbitmq_alarms_free_disk_space_watermark"] == 0
        _method, _props, body = w.ch.basic_get("disk-alarm-q", auto_ack=True)
        assert body == b"while blocked"

        # Raised again at run time, relative to RAM this time (100000 x RAM: more than any disk).
        out = ctl_out(n, "set_disk_free_limit", "mem_relative", "100000")
        assert "alarm true" in out
        status, got = call(n.management_url, "GET", "/api/merpati/node/disk-free-limit")
        assert status == 200 and got["setting"] == "mem_relative:100000"
        w.publish_while_blocked(lambda: ctl(n, "set_disk_free_limit", "50MB"))
        assert w.wait(lambda: w.unblocked == 2)
        assert w.blocked == ["low on disk", "low on disk"]
        # A bad limit is refused.
        bad = ctl(n, "set_disk_free_limit", "lots", check=False)
        assert bad.returncode == 1 and "invalid disk free limit" in bad.stderr
    finally:
        w.close()


def test_memory_alarm_keeps_publishers_blocked_after_the_disk_alarm_clears(make_node):
    n = make_node("--disk-free-limit", HUGE, "--memory-high-watermark", "0.000001")
    me = f"test@{n.port}"
    # The memory watcher looks every second: wait until both stand.
    assert wait_for(lambda: len(alarms_on(n)) == 2)
    assert alarms_on(n) == [
        {"node": me, "resource": "memory"},
        {"node": me, "resource": "disk space"},
    ]
    w = AlarmWatcher(n.host, n.port, "two-alarms-q")
    try:
        w.conn.channel().basic_publish("", "two-alarms-q", b"held")  # no confirms: returns
        assert w.wait_blocked() == "low on disk & memory"
        ctl(n, "set_disk_free_limit", "1MB")
        assert alarms_on(n) == [{"node": me, "resource": "memory"}]
        w.conn.process_data_events(time_limit=1.0)
        assert w.unblocked == 0  # the memory alarm still stands
        status, queue = call(n.management_url, "GET", f"/api/queues/{q('/')}/two-alarms-q")
        assert status == 200 and queue["messages"] == 0  # the message is still held
        out = ctl_out(n, "status")
        assert f"Memory alarm on node {me}" in out and "Free disk space alarm" not in out
        status, conns = call(n.management_url, "GET", "/api/connections")
        assert [c["state"] for c in conns] == ["blocked"]
    finally:
        w.close()


def test_set_vm_memory_high_watermark_raises_and_clears_the_memory_alarm(make_node):
    n = make_node()
    me = f"test@{n.port}"
    w = AlarmWatcher(n.host, n.port, "mem-watermark-q")
    try:
        # 1MiB absolute: far below any node's resident memory, so the alarm stands at once.
        out = ctl_out(n, "set_vm_memory_high_watermark", "absolute", "1MiB")
        assert "set to 1048576 bytes" in out and "alarm true" in out
        assert alarms_on(n) == [{"node": me, "resource": "memory"}]
        assert samples(scrape(n.metrics_url))["rabbitmq_resident_memory_limit_bytes"] == 1048576
        status, nodes = call(n.management_url, "GET", "/api/nodes")
        assert status == 200 and nodes[0]["mem_alarm"] is True
        assert nodes[0]["mem_limit"] == 1048576
        # Back to a fraction of RAM: publishers blocked meanwhile go on.
        w.publish_while_blocked(lambda: ctl(n, "set_vm_memory_high_watermark", "0.4"))
        assert w.wait(lambda: w.unblocked == 1)
        assert w.blocked == ["low on memory"]
        status, got = call(n.management_url, "GET", "/api/merpati/node/memory-high-watermark")
        assert status == 200 and got["setting"] == "0.4" and got["mem_alarm"] is False
        _method, _props, body = w.ch.basic_get("mem-watermark-q", auto_ack=True)
        assert body == b"while blocked"
        # Bad limits are refused with the reason.
        bad = ctl(n, "set_vm_memory_high_watermark", "lots", check=False)
        assert bad.returncode == 1 and "invalid memory high watermark" in bad.stderr
        bad = ctl(n, "set_vm_memory_high_watermark", "absolute", "0.5", check=False)
        assert bad.returncode == 1 and "invalid absolute memory high watermark" in bad.stderr
    finally:
        w.close()
