"""The management web UI end to end: a real node, Debian's chromium, a person's clicks.

Each test logs in through the login form and does through the pages what the issue lists:
declare a queue and an exchange, bind, publish from the UI and see the message counted, get it
back, watch the rate chart move while a pika client publishes, close a connection, import
definitions, page through many queues, and check that a `monitoring` user can change nothing.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pika
import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

from playwright.sync_api import Page, expect  # noqa: E402

from tests.support.http import call  # noqa: E402
from tests.ui.conftest import fill_form, goto, login


def test_a_wrong_password_is_refused_in_words_then_login_works(page: Page, ui_node):
    page.goto(ui_node.management_url + "/")
    page.fill("#login input[name=username]", "guest")
    page.fill("#login input[name=password]", "wrong")
    page.click("#login button[type=submit]")
    expect(page.locator("#login .login-error")).to_have_text("Login refused: Login failed")
    login(page, ui_node)
    expect(page.locator("#who")).to_have_text("guest (administrator)")
    expect(page.locator("#total-exchanges .value")).to_have_text(re.compile(r"^\d+$"))
    # Logging out forgets the credentials: a reload shows the login form again.
    page.click("#logout")
    page.reload()
    expect(page.locator("#login")).to_be_visible()


def test_declare_bind_publish_count_and_get_back(page: Page, ui_node):
    login(page, ui_node)
    base = ui_node.management_url

    goto(page, ui_node, "queues", "queues")
    fill_form(page, "form.declare-queue", {"name": "ui-orders", "arguments": "x-max-length=1000"})
    page.click("form.declare-queue button[type=submit]")
    expect(page.locator("#queues table.list")).to_contain_text("ui-orders")
    assert call(base, "GET", "/api/queues/%2F/ui-orders")[1]["arguments"] == {"x-max-length": 1000}

    goto(page, ui_node, "exchanges", "exchanges")
    fill_form(page, "form.declare-exchange", {"name": "ui-events", "type": "fanout"})
    page.click("form.declare-exchange button[type=submit]")
    expect(page.locator("#exchanges table.list")).to_contain_text("ui-events")
    assert call(base, "GET", "/api/exchanges/%2F/ui-events")[1]["type"] == "fanout"

    page.click("#exchanges a:text-is('ui-events')")
    page.wait_for_selector("#main[data-page=exchange][data-ready='1']")
    bind = page.locator("form").filter(has=page.locator("button:text-is('Bind')"))
    bind.locator("[name=dest]").fill("ui-orders")
    bind.locator("button[type=submit]").click()
    expect(page.locator("#exchange-bindings")).to_contain_text("ui-orders")

    publish = page.locator("form.publish")
    publish.locator("[name=headers]").fill("source=ui-test")
    publish.locator("[name=properties]").fill("content_type=text/plain")
    publish.locator("[name=payload]").fill("hello from the UI")
    publish.locator("button[type=submit]").click()
    expect(page.locator(".publish-result")).to_have_text("Message published.")

    goto(page, ui_node, "queues/%2F/ui-orders", "queue")
    expect(page.locator("#queue-messages")).to_have_text("1", timeout=10_000)

    # Get it back with requeue (RabbitMQ's "Nack message requeue true"): it stays.
    get_form = page.locator("form.get-messages")
    get_form.locator("button[type=submit]").click()
    got = page.locator("#got-messages")
    expect(got.locator("pre.payload")).to_have_text("hello from the UI")
    expect(got).to_contain_text("ui-events")
    expect(got).to_contain_text('"headers":{"source":"ui-test"}')
    expect(got).to_contain_text('"content_type":"text/plain"')
    expect(page.locator("#queue-messages")).to_have_text("1")

    # Automatic ack takes it.
    get_form.locator("[name=ackmode]").select_option("ack_requeue_false")
    get_form.locator("button[type=submit]").click()
    expect(got.locator("pre.payload")).to_have_text("hello from the UI")
    page.reload()
    page.wait_for_selector("#main[data-page=queue][data-ready='1']")
    expect(page.locator("#queue-messages")).to_have_text("0")
    get_form = page.locator("form.get-messages")
    get_form.locator("button[type=submit]").click()
    expect(page.locator("#got-messages")).to_have_text("Queue is empty.")

    # Purge, then delete from the queue's page.
    call(base, "POST", "/api/exchanges/%2F/ui-events/publish", {"routing_key": "", "payload": "x"})
    page.click("#purge-queue")
    expect(page.locator("#queue-messages")).to_have_text("0")
    page.click("#delete-queue")
    page.wait_for_selector("#main[data-page=queues][data-ready='1']")
    assert call(base, "GET", "/api/queues/%2F/ui-orders")[0] == 404


def test_api_errors_are_shown_in_words(page: Page, ui_node):
    login(page, ui_node)
    goto(page, ui_node, "queues", "queues")
    fill_form(page, "form.declare-queue", {"name": "amq.mine"})
    page.click("form.declare-queue button[type=submit]")
    expect(page.locator("form.declare-queue .form-error")).to_contain_text(
        "403 queue name 'amq.mine' contains reserved prefix 'amq.*'"
    )
    fill_form(page, "form.declare-queue", {"name": "ok-name", "arguments": "not an argument"})
    page.click("form.declare-queue button[type=submit]")
    expect(page.locator("form.declare-queue .form-error")).to_have_text(
        '"not an argument" is not key=value'
    )
    # A queue that does not exist says so, not a blank page.
    goto(page, ui_node, "queues/%2F/no-such-queue", "queue")
    expect(page.locator("#queue-gone")).to_have_text("This queue does not exist (any more).")
    # The node gone: the banner says it did not answer.
    call(ui_node.management_url, "PUT", "/api/queues/%2F/ui-err", {})
    page.goto(f"{ui_node.management_url}/#/exchanges/%2F/no-such-exchange")
    expect(page.locator("#error")).to_contain_text(
        "404 no exchange 'no-such-exchange' in vhost '/'"
    )


def _publish_for(url: str, seconds: float, stop: threading.Event, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(queue, durable=False)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        for _ in range(20):
            ch.basic_publish("", queue, b"load")
        conn.process_data_events(0.02)
    conn.close()


def _last(page: Page, chart: str) -> list[float | None]:
    return json.loads(page.locator(chart).get_attribute("data-last") or "[]")


def test_the_rate_charts_move_while_pika_publishes(page: Page, ui_node):
    login(page, ui_node)
    page.select_option("#refresh-select", "2")
    stop = threading.Event()
    load = threading.Thread(
        target=_publish_for, args=(ui_node.url, 30, stop, "ui-load"), daemon=True
    )
    load.start()
    try:
        deadline = time.monotonic() + 20
        moved = False
        while time.monotonic() < deadline and not moved:
            page.wait_for_timeout(500)
            last = _last(page, "#chart-rates")
            moved = bool(last) and (last[0] or 0) > 0
        assert moved, f"the publish rate series did not rise: {_last(page, '#chart-rates')}"
        expect(page.locator("#rate-publish .value")).not_to_have_text("0/s")
        assert (_last(page, "#chart-depth")[2] or 0) > 0  # queued messages too
        # The queue's own chart.
        goto(page, ui_node, "queues/%2F/ui-load", "queue")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (_last(page, "#queue-chart-rates") or [0])[0]:
            page.wait_for_timeout(500)
        assert (_last(page, "#queue-chart-rates") or [0])[0] > 0
    finally:
        stop.set()
        load.join(10)


def test_close_a_connection_from_its_page(page: Page, ui_node):
    params = pika.URLParameters(ui_node.url)
    params.client_properties = {"connection_name": "ui-close-me"}
    conn = pika.BlockingConnection(params)
    try:
        login(page, ui_node)
        goto(page, ui_node, "connections", "connections")
        row = page.locator("#connections tbody tr").filter(has_text="pika")
        expect(row).to_have_count(1)
        page.fill("#connections input.filter", "AMQP 0-9-1")
        row.locator("a").click()
        page.wait_for_selector("#main[data-page=connection][data-ready='1']")
        page.click("#close-connection")
        expect(page.locator("#connection-gone")).to_have_text("This connection is closed.")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            for _ in range(50):
                conn.process_data_events(0.1)
        assert e.value.reply_code == 320
    finally:
        if conn.is_open:
            conn.close()


def test_import_definitions(page: Page, ui_node):
    login(page, ui_node)
    goto(page, ui_node, "admin", "admin")
    defs = {
        "queues": [
            {
                "name": "imported-q",
                "vhost": "/",
                "durable": True,
                "auto_delete": False,
                "arguments": {},
            }
        ],
        "exchanges": [
            {
                "name": "imported-x",
                "vhost": "/",
                "type": "topic",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        "bindings": [
            {
                "source": "imported-x",
                "vhost": "/",
                "destination": "imported-q",
                "destination_type": "queue",
                "routing_key": "a.#",
                "arguments": {},
            }
        ],
    }
    page.fill("#import-text", "{not json")
    page.click("form.import-definitions button[type=submit]")
    expect(page.locator("form.import-definitions .form-error")).to_contain_text("not valid JSON")
    page.fill("#import-text", json.dumps(defs))
    page.click("form.import-definitions button[type=submit]")
    expect(page.locator(".flash")).to_have_text("Definitions imported")
    base = ui_node.management_url
    assert call(base, "GET", "/api/queues/%2F/imported-q")[0] == 200
    status, bindings = call(base, "GET", "/api/exchanges/%2F/imported-x/bindings/source")
    assert [b["routing_key"] for b in bindings] == ["a.#"]
    # Export offers a file with what was imported.
    with page.expect_download() as dl:
        page.click("#export-definitions")
    exported = json.loads(Path(dl.value.path()).read_text())
    assert "imported-q" in [x["name"] for x in exported["queues"]]


def test_queues_page_paginates_filters_and_sorts_on_the_node(page: Page, ui_node):
    base = ui_node.management_url
    defs = {
        "queues": [
            {
                "name": f"bulk-{i:04d}",
                "vhost": "/",
                "durable": False,
                "auto_delete": False,
                "arguments": {},
            }
            for i in range(250)
        ]
    }
    assert call(base, "POST", "/api/definitions", defs)[0] == 204
    call(
        base,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        {"routing_key": "bulk-0123", "payload": "x"},
    )
    login(page, ui_node)
    goto(page, ui_node, "queues", "queues")
    page.fill("#queues-filter", "bulk-")
    expect(page.locator("#queues-count")).to_contain_text("Page 1 of 3 · 250 of")
    expect(page.locator("#queues tbody tr")).to_have_count(100)
    page.click("#queues-next")
    expect(page.locator("#queues-count")).to_contain_text("Page 2 of 3")
    expect(page.locator("#queues tbody tr").first).to_contain_text("bulk-0100")
    # Sorted by total messages, largest first (two clicks: ascending, then descending).
    page.click("#queues th[data-key=messages]")
    page.click("#queues th[data-key=messages]")
    expect(page.locator("#queues-count")).to_contain_text("Page 1 of 3")
    expect(page.locator("#queues tbody tr").first).to_contain_text("bulk-0123")
    page.check("#queues-regex")
    page.fill("#queues-filter", "^bulk-00[0-4]5$")
    expect(page.locator("#queues tbody tr")).to_have_count(5)
    page.fill("#queues-filter", "[")
    expect(page.locator("#error")).to_contain_text("invalid regular expression")
    page.uncheck("#queues-regex")
    page.fill("#queues-filter", "")


def test_a_monitoring_user_sees_everything_and_can_change_nothing(page: Page, ui_node):
    base = ui_node.management_url
    assert call(base, "PUT", "/api/users/watcher", {"password": "w", "tags": "monitoring"})[0] in (
        201,
        204,
    )
    call(base, "PUT", "/api/queues/%2F/watched", {})
    call(
        base,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        {"routing_key": "watched", "payload": "m"},
    )
    params = pika.URLParameters(ui_node.url)
    conn = pika.BlockingConnection(params)
    try:
        login(page, ui_node, "watcher", "w")
        expect(page.locator("#who")).to_have_text("watcher (monitoring)")
        expect(page.locator("#total-queues .value")).not_to_have_text("0")
        goto(page, ui_node, "cluster", "cluster")
        expect(page.locator("#cluster-nodes tbody tr")).to_have_count(1)
        assert page.locator("#cluster-nodes button, #rebalance").count() == 0
        goto(page, ui_node, "connections", "connections")
        expect(page.locator("#connections tbody tr").first).to_contain_text("guest")
        assert page.locator("#connections button").count() == 0
        goto(page, ui_node, "exchanges", "exchanges")
        assert page.locator("form").count() == 0
        goto(page, ui_node, "exchanges/%2F/amq.direct", "exchange")
        assert page.locator("form, #delete-exchange").count() == 0
        goto(page, ui_node, "queues", "queues")
        page.fill("#queues-filter", "watched")
        expect(page.locator("#queues tbody tr")).to_have_count(1)
        expect(page.locator("#queues")).to_contain_text("watched")
        assert page.locator("form.declare-queue").count() == 0
        goto(page, ui_node, "queues/%2F/watched", "queue")
        expect(page.locator("#queue-messages")).to_have_text("1")
        assert page.locator("form, #purge-queue, #delete-queue").count() == 0
        goto(page, ui_node, "admin", "admin")
        expect(page.locator("#users")).to_contain_text("Users are shown to administrators only.")
        expect(page.locator("#admin-vhosts tbody tr")).to_have_count(1)
        expect(page.locator("#admin-policies")).to_contain_text("No policies.")
        assert page.locator("form, #admin-vhosts button, #admin-limits button").count() == 0
        # The API refuses anyway, whatever a page might offer. (X-Requested-With, as the UI
        # sends it: without it the 401's basic-auth challenge would stop fetch at a dialog.)
        status = page.evaluate(
            """async () => (await fetch('/api/queues/%2F/sneaky', {method: 'PUT',
                 headers: {'Authorization': 'Basic ' + btoa('watcher:w'),
                           'X-Requested-With': 'XMLHttpRequest',
                           'Content-Type': 'application/json'}, body: '{}'})).status"""
        )
        assert status == 401
        assert call(base, "GET", "/api/queues/%2F/sneaky")[0] == 404
    finally:
        conn.close()
