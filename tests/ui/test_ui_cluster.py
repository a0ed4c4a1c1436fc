"""The web UI's cluster view on a real three-node cluster: the nodes, the Raft leader and the
queue leaders per node; moving a queue (with its message) from its page; drain, undrain and
rebalance from the cluster page."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

from playwright.sync_api import Page, expect  # noqa: E402

from tests.cluster.conftest import start_cluster
from tests.support.http import call  # noqa: E402
from tests.ui.conftest import goto, login


@pytest.fixture(scope="module")
def ui_cluster(request):
    c = start_cluster()
    yield c
    c.stop()
    c.discard(keep=request.session.testsfailed > 0)


def _wait(what, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_cluster_page_shows_nodes_leaders_and_drains(page: Page, ui_cluster):
    n1 = ui_cluster["n1"]
    base = n1.management_url
    for i in range(3):
        assert call(base, "PUT", f"/api/queues/%2F/spread-{i}", {})[0] == 201
    login(page, n1)
    goto(page, n1, "cluster", "cluster")
    rows = page.locator("#cluster-nodes tbody tr")
    expect(rows).to_have_count(3)
    for name in ("n1", "n2", "n3"):
        expect(rows.filter(has_text=name).first).to_contain_text("running")
    raft_leader = _wait(
        "a Raft leader",
        lambda: call(base, "GET", "/api/overview")[1]["merpati_cluster"]["raft_leader"],
    )
    expect(page.locator("#raft-leader")).to_have_text(raft_leader)
    expect(rows.filter(has_text=raft_leader).first).to_contain_text("leader")
    # The queue leaders per node add up to the queues.
    leaders = call(base, "GET", "/api/overview")[1]["merpati_cluster"]["queue_leaders"]
    assert sum(leaders.values()) == 3

    n3_row = rows.filter(has=page.locator("td:text-is('n3')"))
    n3_row.locator("button:text-is('Drain')").click()
    expect(page.locator("#cluster-result")).to_contain_text("drain n3")
    expect(n3_row).to_contain_text("draining")
    _wait(
        "n3 to lead nothing",
        lambda: (
            call(base, "GET", "/api/overview")[1]["merpati_cluster"]["queue_leaders"].get("n3") == 0
        ),
    )
    n3_row.locator("button:text-is('Undrain')").click()
    expect(page.locator("#cluster-result")).to_contain_text("undrain n3")
    expect(n3_row.locator("td").nth(1)).to_have_text("running")

    page.click("#rebalance")
    expect(page.locator("#cluster-result")).to_contain_text("queue leader(s) moved")


def test_move_a_queue_with_its_message_from_its_page(page: Page, ui_cluster):
    n1 = ui_cluster["n1"]
    base = n1.management_url
    assert call(base, "PUT", "/api/queues/%2F/mover", {"durable": True})[0] == 201
    call(
        base,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        {"routing_key": "mover", "payload": "travels", "properties": {"delivery_mode": 2}},
    )
    leader = call(base, "GET", "/api/queues/%2F/mover")[1]["node"]
    target = next(n for n in ("n1", "n2", "n3") if n != leader)
    login(page, n1)
    goto(page, n1, "queues/%2F/mover", "queue")
    expect(page.locator("#queue-messages")).to_have_text("1")
    page.select_option("form.move-queue [name=node]", target)
    page.click("form.move-queue button[type=submit]")
    expect(page.locator(".flash")).to_have_text("Queue moving")
    _wait(
        f"mover led by {target}",
        lambda: call(base, "GET", "/api/queues/%2F/mover")[1]["node"] == target,
    )
    got = _wait(
        "the message on the new leader",
        lambda: call(base, "GET", "/api/queues/%2F/mover")[1]["messages"] == 1,
    )
    assert got
    # Moving it to where it is says why not, in words.
    page.select_option("form.move-queue [name=node]", target)
    page.click("form.move-queue button[type=submit]")
    expect(page.locator("form.move-queue .form-error")).to_have_text(
        f"400 queue 'mover' is already led by {target}"
    )


def test_overview_charts_the_cluster_and_each_node(page: Page, ui_cluster):
    """A publisher on n2 moves n1's cluster chart and n2's own, not n1's (each node's counters
    reach the others on the forwarding Pings)."""
    import json
    import threading

    import pika

    n1, n2 = ui_cluster["n1"], ui_cluster["n2"]
    stop = threading.Event()

    def publish() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(n2.url))
        ch = conn.channel()
        ch.queue_declare("from-n2", durable=False)
        while not stop.is_set():
            for _ in range(20):
                ch.basic_publish("", "from-n2", b"x")
            conn.process_data_events(0.02)
        conn.close()

    def publish_rate() -> float:
        last = json.loads(page.locator("#chart-rates").get_attribute("data-last") or "[]")
        return (last[0] or 0) if last else 0

    load = threading.Thread(target=publish, daemon=True)
    load.start()
    try:
        login(page, n1)
        page.select_option("#refresh-select", "2")
        _wait(
            "the cluster's publish rate",
            lambda: (page.wait_for_timeout(300), publish_rate())[1] > 0,
            40,
        )
        page.select_option("#rates-scope", "n2")
        _wait("n2's publish rate", lambda: (page.wait_for_timeout(300), publish_rate())[1] > 0, 20)
        page.select_option("#rates-scope", "n1")
        # n1's own clients publish nothing (the earlier tests' last messages age out).
        _wait(
            "n1's publish rate at 0",
            lambda: (page.wait_for_timeout(300), publish_rate())[1] == 0,
            20,
        )
        n2_row = page.locator("#nodes tbody tr").filter(has=page.locator("td:text-is('n2')"))
        expect(n2_row.locator("td").nth(4)).not_to_have_text("0/s")
    finally:
        stop.set()
        load.join(10)
