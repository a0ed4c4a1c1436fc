"""Resource alarms are cluster-wide, as in RabbitMQ: an alarm on one node blocks publishers on
every node, its clearing unblocks them, and a node that goes down takes its alarms with it.

Three real node processes; the alarm is a disk alarm raised and cleared with `merpati ctl
set_disk_free_limit` on one node, the publisher (pika, confirms) is connected to another. Each
node learns the others' alarms from their answers to its forwarding Ping (every second)."""

from __future__ import annotations

import signal

from tests.support.alarms import AlarmWatcher, alarms_on, wait_for
from tests.support.ctl import ctl, ctl_out
from tests.support.http import call

HUGE = "1000000TB"  # 10^18 bytes: more than any disk has free


def test_an_alarm_on_one_node_blocks_publishers_on_another(cluster):
    n1, n2 = cluster["n1"], cluster["n2"]
    ctl(n2, "set_disk_free_limit", HUGE)
    assert wait_for(lambda: alarms_on(n1) == [{"node": "n2", "resource": "disk space"}])
    # n1 has none of its own.
    status, _ = call(n1.management_url, "GET", "/api/health/checks/local-alarms")
    assert status == 200
    status, nodes = call(n1.management_url, "GET", "/api/nodes")
    by_name = {n["name"]: n for n in nodes}
    assert by_name["n2"]["disk_free_alarm"] is True and by_name["n1"]["disk_free_alarm"] is False
    assert "Free disk space alarm on node n2" in ctl_out(n1, "status")
    assert "Free disk space alarm on node n2" in ctl_out(n1, "cluster_status")

    w = AlarmWatcher(n1.host, n1.port, "alarm-on-n2", exclusive=True)
    try:
        w.publish_while_blocked(lambda: ctl(n2, "set_disk_free_limit", "50MB"))
        assert w.wait(lambda: w.unblocked == 1)
        assert w.blocked == ["low on disk"]
        assert alarms_on(n1) == []
        _method, _props, body = w.ch.basic_get("alarm-on-n2", auto_ack=True)
        assert body == b"while blocked"
    finally:
        w.close()


def test_the_alarm_of_a_node_that_goes_down_is_dropped(cluster):
    # The last test of the module: it kills n3.
    n1, n3 = cluster["n1"], cluster["n3"]
    ctl(n3, "set_disk_free_limit", HUGE)
    assert wait_for(lambda: alarms_on(n1) == [{"node": "n3", "resource": "disk space"}])
    w = AlarmWatcher(n1.host, n1.port, "alarm-on-n3", exclusive=True)
    try:
        # n1 stops waiting for n3 once its pings go unanswered (RabbitMQ clears the alarms of
        # a node that is down too).
        w.publish_while_blocked(lambda: n3.stop(signal.SIGKILL))
        assert w.wait(lambda: w.unblocked == 1)
        assert alarms_on(n1) == []
        assert "n3" in ctl_out(n1, "cluster_status")  # still a member, just down
    finally:
        w.close()
