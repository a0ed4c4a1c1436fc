"""Prometheus /metrics of a real node: names and labels as RabbitMQ's plugin, numbers as the
clients saw them."""

from __future__ import annotations

import time

import pika

from tests.support.http import samples, scrape


def _conn(node) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(node.url))


def test_counts_match_what_the_clients_did(make_node):
    n = make_node()
    conn = _conn(n)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("m-q", durable=True)
    for i in range(30):
        ch.basic_publish("", "m-q", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "no-such-queue", b"dropped")
    before = samples(scrape(n.metrics_url))
    assert before["rabbitmq_queue_messages_ready"] == 30
    assert before["rabbitmq_channel_messages_published_total"] == 31
    assert before["rabbitmq_channel_messages_confirmed_total"] == 31
    assert before["rabbitmq_channel_messages_unroutable_dropped_total"] == 1
    assert before["rabbitmq_connections"] == 1
    assert before["rabbitmq_channels"] == 1
    assert before["rabbitmq_queues"] == 1

    # Consume 15 with manual ack (prefetch 15), ack 10, leave 5 unacked.
    ch.basic_qos(prefetch_count=15)
    got = []
    for method, _props, _body in ch.consume("m-q", inactivity_timeout=2):
        got.append(method.delivery_tag)
        if len(got) == 15:
            break
    ch.cancel()  # before acking, so no further deliveries fill the room the acks make
    for tag in got[:10]:
        ch.basic_ack(tag)
    time.sleep(0.3)
    s = samples(scrape(n.metrics_url))
    assert s["rabbitmq_channel_messages_delivered_ack_total"] == 15
    assert s["rabbitmq_channel_messages_acked_total"] == 10
    assert s["rabbitmq_queue_messages_unacked"] == 5
    assert s["rabbitmq_queue_messages_ready"] == 15
    assert s["rabbitmq_channel_messages_unacked"] == 5
    conn.close()
    time.sleep(0.3)
    s = samples(scrape(n.metrics_url))
    # Closing the channel released the 5 unacked: 20 ready, nothing unacked.
    assert s["rabbitmq_queue_messages_ready"] == 20
    assert s["rabbitmq_queue_messages_unacked"] == 0
    assert s["rabbitmq_connections"] == 0
    assert s["rabbitmq_connections_opened_total"] == 1
    assert s["rabbitmq_connections_closed_total"] == 1
    assert s["rabbitmq_queues_created_total"] == 1
    # The store committed the persistent messages; Raft committed the declaration.
    assert s["merpati_store_commits_total"] >= 1
    assert s["merpati_store_commit_seconds_count"] >= 1
    assert s["merpati_metadata_commit_seconds_count"] >= 1
    assert s["merpati_raft_is_leader"] == 1
    assert s["merpati_raft_term"] >= 1
    assert s["rabbitmq_process_resident_memory_bytes"] > 1_000_000
    assert s["rabbitmq_disk_space_available_bytes"] > 0
    assert s["rabbitmq_alarms_memory_used_watermark"] == 0
    identity = [k for k in s if k.startswith("rabbitmq_identity_info{")]
    assert identity and f'rabbitmq_node="test@{n.port}"' in identity[0]

    # Redelivery of the 5 released messages is counted.
    conn = _conn(n)
    ch = conn.channel()
    for _ in range(5):
        method, _props, _body = ch.basic_get("m-q", auto_ack=True)
        assert method is not None
    conn.close()
    s = samples(scrape(n.metrics_url))
    assert s["rabbitmq_channel_messages_redelivered_total"] == 5
    assert s["rabbitmq_channel_get_total"] == 5


def test_per_object_and_detailed(node):
    conn = _conn(node)
    ch = conn.channel()
    ch.queue_declare("po-a")
    ch.queue_declare("po-b")
    for _ in range(3):
        ch.basic_publish("", "po-a", b"x")
    ch.basic_publish("", "po-b", b"x")
    conn.close()
    s = samples(scrape(node.metrics_url, "/metrics/per-object"))
    assert s['rabbitmq_queue_messages_ready{queue="po-a",vhost="/"}'] == 3
    assert s['rabbitmq_queue_messages_ready{queue="po-b",vhost="/"}'] == 1
    d = samples(
        scrape(
            node.metrics_url,
            "/metrics/detailed?vhost=%2F&family=queue_coarse_metrics&family=queue_consumer_count",
        )
    )
    assert d['rabbitmq_detailed_queue_messages_ready{queue="po-a",vhost="/"}'] == 3
    assert d['rabbitmq_detailed_queue_consumers{queue="po-b",vhost="/"}'] == 0
    assert not any(k.startswith("rabbitmq_channel_") for k in d)
