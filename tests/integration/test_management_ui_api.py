"""What the management UI reads from the API, through a real node: RabbitMQ's paginated queue
list and the message rates with their history (`msg_rates_age` / `msg_rates_incr`)."""

from __future__ import annotations

import time

import pika
import pytest

from tests.support.http import call, q


@pytest.fixture(scope="module")
def fast_node(request):
    """A node sampling its rates every 200 ms, so that rates move within a test."""
    from tests.support.node import NodeProcess

    n = NodeProcess("--collect-statistics-interval", "200").start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()
    n.discard(keep=request.session.testsfailed > 0)


def _declare(base: str, names: list[str]) -> None:
    for name in names:
        assert call(base, "PUT", f"/api/queues/%2F/{q(name)}", {"durable": False})[0] == 201


def test_queues_paginated_filtered_and_sorted(fast_node):
    base = fast_node.management_url
    names = [f"page-q-{i:02d}" for i in range(30)]
    _declare(base, names + ["other-queue"])
    status, body = call(base, "GET", "/api/queues?page=2&page_size=10&name=PAGE-Q")
    assert status == 200
    assert [i["name"] for i in body["items"]] == names[10:20]
    assert body["filtered_count"] == 30 and body["page_count"] == 3
    assert body["page"] == 2 and body["page_size"] == 10 and body["item_count"] == 10
    assert body["total_count"] >= 31
    assert body["items"][0]["message_stats"]["publish_details"] == {"rate": 0.0}

    status, body = call(
        base, "GET", "/api/queues?page=1&page_size=3&name=page-q&sort=name&sort_reverse=true"
    )
    assert [i["name"] for i in body["items"]] == ["page-q-29", "page-q-28", "page-q-27"]

    status, body = call(
        base, "GET", "/api/queues?page=1&name=%5Epage-q-0%5B12%5D%24&use_regex=true"
    )
    assert [i["name"] for i in body["items"]] == ["page-q-01", "page-q-02"]

    # A queue with messages first when sorted by messages, largest first.
    conn = pika.BlockingConnection(pika.URLParameters(fast_node.url))
    ch = conn.channel()
    for _ in range(3):
        ch.basic_publish("", "page-q-17", b"x")
    conn.close()
    deadline = time.monotonic() + 5
    while True:
        status, body = call(
            base,
            "GET",
            "/api/queues?page=1&page_size=2&name=page-q&sort=messages&sort_reverse=true",
        )
        if body["items"][0]["name"] == "page-q-17" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert body["items"][0]["name"] == "page-q-17" and body["items"][0]["messages"] == 3

    # Any other field sorts too (every queue's JSON is built for it).
    status, body = call(base, "GET", "/api/queues?page=1&page_size=1&name=page-q&sort=state")
    assert status == 200 and body["item_count"] == 1


@pytest.mark.parametrize(
    "query, reason",
    [
        ("page=0", "page must be 1 or more"),
        ("page=1&page_size=501", "page_size must be between 1 and 500"),
        ("page=x", "must be integers"),
        ("page=1&name=%5B&use_regex=true", "invalid regular expression"),
        ("page=999", "page out of range"),
        ("msg_rates_age=60&msg_rates_incr=0", "msg_rates_incr > 0"),
    ],
)
def test_bad_list_queries_say_why(fast_node, query, reason):
    status, body = call(fast_node.management_url, "GET", f"/api/queues?{query}")
    assert status == 400 and reason in body["reason"], body


def test_rates_follow_a_publisher_with_their_history(fast_node):
    base = fast_node.management_url
    _declare(base, ["rated"])
    conn = pika.BlockingConnection(pika.URLParameters(fast_node.url))
    ch = conn.channel()
    deadline = time.monotonic() + 10
    overview = queue = None
    while time.monotonic() < deadline:
        for _ in range(50):
            ch.basic_publish("", "rated", b"m")
        conn.process_data_events(0.05)
        _, overview = call(base, "GET", "/api/overview?msg_rates_age=10&msg_rates_incr=1")
        _, queue = call(base, "GET", "/api/queues/%2F/rated?msg_rates_age=10&msg_rates_incr=1")
        if (
            len(overview["message_stats"]["publish_details"]["samples"]) >= 3
            and overview["message_stats"]["publish_details"]["rate"] > 0
            and queue["message_stats"]["publish_details"]["rate"] > 0
        ):
            break
    conn.close()
    assert overview is not None and queue is not None
    assert overview["rates_mode"] == "basic"
    details = overview["message_stats"]["publish_details"]
    assert details["rate"] > 0, details
    assert set(details) == {"rate", "samples", "avg_rate", "avg"}
    stamps = [s["timestamp"] for s in details["samples"]]
    assert stamps == sorted(stamps, reverse=True) and len(stamps) >= 2
    assert all(b - a == -1000 for a, b in zip(stamps, stamps[1:], strict=False))
    assert overview["queue_totals"]["messages_details"]["samples"][0]["sample"] > 0
    assert queue["message_stats"]["publish"] > 0
    assert queue["message_stats"]["publish_details"]["rate"] > 0
    assert queue["messages_details"]["samples"][0]["sample"] > 0
    # Without msg_rates_age: the rate alone, as RabbitMQ answers.
    _, plain = call(base, "GET", "/api/overview")
    assert set(plain["message_stats"]["publish_details"]) == {"rate"}


def test_moving_a_queue_says_why_it_cannot(fast_node):
    base = fast_node.management_url
    _declare(base, ["stay"])
    status, body = call(base, "POST", "/api/merpati/queues/%2F/stay/move", {"node": "elsewhere"})
    assert status == 400 and body["reason"] == "no node 'elsewhere' in the cluster"
    _, nodes = call(base, "GET", "/api/nodes")
    status, body = call(
        base, "POST", "/api/merpati/queues/%2F/stay/move", {"node": nodes[0]["name"]}
    )
    assert status == 400 and "is already led by" in body["reason"]
    status, body = call(
        base, "POST", "/api/merpati/queues/%2F/nope/move", {"node": nodes[0]["name"]}
    )
    assert status == 404
