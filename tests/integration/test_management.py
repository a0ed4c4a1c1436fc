"""The management HTTP API, called as rabbitmqadmin and scripts do (plain HTTP, basic auth)."""

from __future__ import annotations

import json
import time

import pika
import pytest

from tests.support.http import call, q


def test_auth(node):
    base = node.management_url
    assert call(base, "GET", "/api/overview", user="guest", password="wrong")[0] == 401
    status, body = call(base, "GET", "/api/whoami")
    assert status == 200 and body == {"name": "guest", "tags": ["administrator"]}
    # A user without a management tag cannot use the API; a management user cannot write.
    assert call(base, "PUT", "/api/users/plain", {"password": "p", "tags": ""})[0] == 201
    assert (
        call(
            base,
            "PUT",
            "/api/permissions/%2F/plain",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )[0]
        == 201
    )
    assert call(base, "GET", "/api/queues", user="plain", password="p")[0] == 401
    assert call(base, "PUT", "/api/users/mgmt", {"password": "m", "tags": "management"})[0] == 201
    assert (
        call(
            base,
            "PUT",
            "/api/permissions/%2F/mgmt",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )[0]
        == 201
    )
    assert call(base, "GET", "/api/queues", user="mgmt", password="m")[0] == 200
    status, body = call(base, "PUT", "/api/queues/%2F/mgmt-q", {}, user="mgmt", password="m")
    assert status == 401 and body["error"] == "not_authorised"


def test_queue_lifecycle_declare_get_purge_delete(node):
    base = node.management_url
    status, _ = call(
        base, "PUT", "/api/queues/%2F/api-q", {"durable": True, "arguments": {"x-max-length": 100}}
    )
    assert status == 201
    assert (
        call(
            base,
            "PUT",
            "/api/queues/%2F/api-q",
            {"durable": True, "arguments": {"x-max-length": 100}},
        )[0]
        == 204
    )
    # Inequivalent redeclare: 400 with the broker's reason.
    status, body = call(base, "PUT", "/api/queues/%2F/api-q", {"durable": False})
    assert status == 400 and "durable" in body["reason"]

    status, body = call(
        base,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        {
            "routing_key": "api-q",
            "payload": "hello",
            "payload_encoding": "string",
            "properties": {"content_type": "text/plain"},
        },
    )
    assert status == 200 and body == {"routed": True}
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = conn.channel()
    for i in range(4):
        ch.basic_publish("", "api-q", f"m{i}".encode())
    conn.close()
    status, body = call(base, "GET", "/api/queues/%2F/api-q")
    assert status == 200
    assert body["messages_ready"] == 5 and body["durable"] is True
    assert body["arguments"] == {"x-max-length": 100}
    assert body["node"] == f"test@{node.port}"

    status, msgs = call(
        base,
        "POST",
        "/api/queues/%2F/api-q/get",
        {"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"},
    )
    assert status == 200
    assert [m["payload"] for m in msgs] == ["hello", "m0"]
    assert msgs[0]["properties"]["content_type"] == "text/plain"
    assert msgs[0]["routing_key"] == "api-q" and msgs[0]["payload_encoding"] == "string"
    # Requeued: still 5; then take one for good.
    assert call(base, "GET", "/api/queues/%2F/api-q")[1]["messages"] == 5
    status, msgs = call(
        base,
        "POST",
        "/api/queues/%2F/api-q/get",
        {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"},
    )
    assert msgs[0]["payload"] == "hello" and msgs[0]["redelivered"] is True
    assert call(base, "GET", "/api/queues/%2F/api-q")[1]["messages"] == 4

    assert call(base, "DELETE", "/api/queues/%2F/api-q?if-empty=true")[0] == 400
    assert call(base, "DELETE", "/api/queues/%2F/api-q/contents")[0] == 204
    assert call(base, "GET", "/api/queues/%2F/api-q")[1]["messages"] == 0
    assert call(base, "DELETE", "/api/queues/%2F/api-q")[0] == 204
    assert call(base, "GET", "/api/queues/%2F/api-q")[0] == 404
    assert call(base, "GET", "/api/queues/no-such-vhost")[0] == 404


def test_exchanges_bindings_and_listing(node):
    base = node.management_url
    assert (
        call(base, "PUT", "/api/exchanges/%2F/api-x", {"type": "topic", "durable": True})[0] == 201
    )
    assert call(base, "PUT", "/api/exchanges/%2F/amq.nope", {"type": "topic"})[0] == 403
    assert call(base, "PUT", "/api/queues/%2F/api-bq", {"durable": False})[0] == 201
    status, _ = call(
        base, "POST", "/api/bindings/%2F/e/api-x/q/api-bq", {"routing_key": "a.*", "arguments": {}}
    )
    assert status == 201
    status, body = call(base, "GET", "/api/bindings/%2F/e/api-x/q/api-bq")
    assert [(b["routing_key"], b["properties_key"]) for b in body] == [("a.*", "a.%2A")]
    status, body = call(base, "GET", "/api/queues/%2F/api-bq/bindings")
    assert {b["source"] for b in body} == {"", "api-x"}
    status, body = call(base, "GET", "/api/exchanges/%2F/api-x")
    assert body["type"] == "topic" and body["vhost"] == "/"
    names = [e["name"] for e in call(base, "GET", "/api/exchanges/%2F")[1]]
    assert "api-x" in names and "amq.topic" in names

    # Listing connections, channels, consumers of a live client.
    params = pika.URLParameters(node.url)
    params.client_properties = {"connection_name": "mgmt-listing-test"}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_consume("api-bq", lambda *a: None, consumer_tag="api-ctag")
    ch.basic_publish("api-x", "a.b", b"via-binding")
    conn.process_data_events(time_limit=0.3)
    conns = call(base, "GET", "/api/connections")[1]
    mine = [
        c for c in conns if c["client_properties"].get("connection_name") == "mgmt-listing-test"
    ]
    assert mine and mine[0]["channels"] == 1 and mine[0]["protocol"] == "AMQP 0-9-1"
    chans = call(base, "GET", "/api/channels")[1]
    assert any(c["consumer_count"] == 1 for c in chans)
    consumers = call(base, "GET", "/api/consumers/%2F")[1]
    assert any(
        c["consumer_tag"] == "api-ctag" and c["queue"]["name"] == "api-bq" for c in consumers
    )
    # Closing the connection through the API.
    name = mine[0]["name"]
    assert call(base, "DELETE", "/api/connections/" + q(name))[0] == 204
    deadline = time.monotonic() + 5
    while conn.is_open and time.monotonic() < deadline:
        try:
            conn.process_data_events(time_limit=0.2)
        except pika.exceptions.AMQPError:
            break
    assert not conn.is_open

    status, body = call(base, "GET", "/api/bindings/%2F/e/api-x/q/api-bq")
    assert (
        call(base, "DELETE", f"/api/bindings/%2F/e/api-x/q/api-bq/{q(body[0]['properties_key'])}")[
            0
        ]
        == 204
    )
    assert call(base, "GET", "/api/bindings/%2F/e/api-x/q/api-bq")[1] == []
    assert call(base, "DELETE", "/api/exchanges/%2F/api-x")[0] == 204
    assert call(base, "DELETE", "/api/queues/%2F/api-bq")[0] == 204


def test_vhosts_users_permissions_policies(node):
    base = node.management_url
    assert call(base, "PUT", "/api/vhosts/api-vh", {})[0] == 201
    assert "api-vh" in [v["name"] for v in call(base, "GET", "/api/vhosts")[1]]
    assert call(base, "PUT", "/api/users/api-u", {"password": "pw", "tags": "monitoring"})[0] == 201
    body = call(base, "GET", "/api/users/api-u")[1]
    assert (
        body["tags"] == ["monitoring"]
        and body["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    )
    perm = {"configure": "^api-.*", "write": ".*", "read": ".*"}
    assert call(base, "PUT", "/api/permissions/api-vh/api-u", perm)[0] == 201
    assert call(base, "GET", "/api/permissions/api-vh/api-u")[1] == {
        "user": "api-u",
        "vhost": "api-vh",
        **perm,
    }
    # The new user connects over AMQP to the new vhost.
    conn = pika.BlockingConnection(
        pika.URLParameters(f"amqp://api-u:pw@127.0.0.1:{node.port}/api-vh")
    )
    conn.close()

    pol = {
        "pattern": "^lim\\.",
        "definition": {"max-length": 2},
        "priority": 5,
        "apply-to": "queues",
    }
    assert call(base, "PUT", "/api/policies/api-vh/limit", pol)[0] == 201
    assert call(base, "GET", "/api/policies/api-vh/limit")[1] == {
        "vhost": "api-vh",
        "name": "limit",
        **pol,
    }
    assert call(base, "PUT", "/api/queues/api-vh/lim.q", {})[0] == 201
    assert call(base, "GET", "/api/queues/api-vh/lim.q")[1]["policy"] == "limit"
    assert (
        call(base, "PUT", "/api/policies/api-vh/bad", {"pattern": "(", "definition": {}})[0] == 400
    )
    assert call(base, "DELETE", "/api/policies/api-vh/limit")[0] == 204
    assert call(base, "GET", "/api/policies/api-vh")[1] == []

    assert call(base, "DELETE", "/api/permissions/api-vh/api-u")[0] == 204
    assert call(base, "DELETE", "/api/users/api-u")[0] == 204
    assert call(base, "GET", "/api/users/api-u")[0] == 404
    assert call(base, "DELETE", "/api/vhosts/api-vh")[0] == 204
    assert call(base, "GET", "/api/vhosts/api-vh")[0] == 404


def test_overview_nodes_and_health(node):
    base = node.management_url
    ov = call(base, "GET", "/api/overview")[1]
    assert ov["node"] == f"test@{node.port}"
    assert {"queue_totals", "object_totals", "message_stats", "listeners"} <= set(ov)
    assert any(lst["port"] == node.port and lst["protocol"] == "amqp" for lst in ov["listeners"])
    nodes = call(base, "GET", "/api/nodes")[1]
    assert len(nodes) == 1 and nodes[0]["running"] is True and nodes[0]["mem_used"] > 0
    assert call(base, "GET", "/api/health/checks/alarms") == (200, {"status": "ok"})
    assert call(base, "GET", "/api/health/checks/node-is-quorum-critical") == (
        200,
        {"status": "ok"},
    )
    assert call(base, "GET", f"/api/health/checks/port-listener/{node.port}")[0] == 200
    assert call(base, "GET", "/api/health/checks/port-listener/1")[0] == 503


def test_definitions_move_to_a_fresh_node(make_node):
    a = make_node()
    base = a.management_url
    assert call(base, "PUT", "/api/vhosts/defs", {})[0] == 201
    assert (
        call(base, "PUT", "/api/users/alice", {"password": "secret", "tags": ["management"]})[0]
        == 201
    )
    assert (
        call(
            base,
            "PUT",
            "/api/permissions/defs/alice",
            {"configure": "", "write": ".*", "read": ".*"},
        )[0]
        == 201
    )
    assert (
        call(base, "PUT", "/api/exchanges/defs/orders", {"type": "direct", "durable": True})[0]
        == 201
    )
    assert (
        call(
            base,
            "PUT",
            "/api/queues/defs/orders.q",
            {"durable": True, "arguments": {"x-message-ttl": 60000}},
        )[0]
        == 201
    )
    assert (
        call(base, "POST", "/api/bindings/defs/e/orders/q/orders.q", {"routing_key": "new"})[0]
        == 201
    )
    assert (
        call(
            base,
            "PUT",
            "/api/policies/defs/ttl",
            {"pattern": ".*", "definition": {"expires": 600000}},
        )[0]
        == 201
    )
    status, exported = call(base, "GET", "/api/definitions")
    assert status == 200
    assert {"users", "vhosts", "permissions", "queues", "exchanges", "bindings", "policies"} <= set(
        exported
    )
    assert not any(e["name"].startswith("amq.") for e in exported["exchanges"])

    b = make_node()
    assert call(b.management_url, "POST", "/api/definitions", exported)[0] == 204
    again = call(b.management_url, "GET", "/api/definitions")[1]
    for key in ("users", "vhosts", "permissions", "queues", "exchanges", "bindings", "policies"):
        assert again[key] == exported[key], key
    # The imported user logs in with the same password (the hash moved, not the password).
    conn = pika.BlockingConnection(
        pika.URLParameters(f"amqp://alice:secret@127.0.0.1:{b.port}/defs")
    )
    ch = conn.channel()
    ch.basic_publish("orders", "new", b"order-1")
    conn.close()
    assert call(b.management_url, "GET", "/api/queues/defs/orders.q")[1]["messages"] == 1
    # Importing twice is harmless.
    assert call(b.management_url, "POST", "/api/definitions", exported)[0] == 204


def test_amqp10_connections_are_listed_and_counted(node):
    pytest.importorskip("proton")
    from tests.amqp10._support import blocking
    from tests.support.http import samples, scrape

    assert call(node.management_url, "PUT", "/api/queues/%2F/amqp10-listed", {})[0] in (201, 204)
    conn = blocking(node)
    try:
        conn.create_sender("/queues/amqp10-listed")
        conns = call(node.management_url, "GET", "/api/connections")[1]
        assert any(c["protocol"] == "AMQP 1-0" and c["channels"] >= 1 for c in conns)
        assert call(node.management_url, "GET", "/api/channels")[0] == 200
        assert call(node.management_url, "GET", "/api/overview")[0] == 200
        s = samples(scrape(node.metrics_url))
        assert s["rabbitmq_connections"] >= 1 and s["rabbitmq_channels"] >= 1
    finally:
        conn.close()


def test_a_node_provisions_itself_from_a_definitions_file_at_boot(make_node, tmp_path):
    a = make_node()
    base = a.management_url
    assert (
        call(base, "PUT", "/api/users/ops", {"password": "s3cret", "tags": ["administrator"]})[0]
        == 201
    )
    assert call(base, "PUT", "/api/vhosts/app", {})[0] == 201
    assert (
        call(
            base,
            "PUT",
            "/api/permissions/app/ops",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )[0]
        == 201
    )
    assert call(base, "PUT", "/api/queues/app/jobs", {"durable": True})[0] == 201
    exported = call(base, "GET", "/api/definitions")[1]
    exported["users"] = [u for u in exported["users"] if u["name"] == "ops"]
    exported["permissions"] = [p for p in exported["permissions"] if p["user"] == "ops"]
    defs = tmp_path / "definitions.json"
    defs.write_text(json.dumps(exported))

    b = make_node("--load-definitions", str(defs))
    assert "definitions from" in b.log()
    # No default user: the file provisions the users.
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(b.url))
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://ops:s3cret@127.0.0.1:{b.port}/app"))
    conn.channel().queue_declare("jobs", passive=True)
    conn.close()
    # Applied again at the next start: nothing changes, nothing fails.
    b.stop()
    b.start()
    assert (
        call(b.management_url, "GET", "/api/queues/app/jobs", user="ops", password="s3cret")[0]
        == 200
    )


def test_a_definitions_file_the_node_cannot_apply_stops_the_start_saying_why(make_node, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"queues": [{"name": "q", "vhost": "nowhere", "durable": True, "arguments": {}}]}
        )
    )
    with pytest.raises(RuntimeError, match=r"definitions file .*bad.json: .*nothing imported.*'q'"):
        make_node("--load-definitions", str(bad))
    (tmp_path / "torn.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="is not JSON"):
        make_node("--load-definitions", str(tmp_path / "torn.json"))
