"""The declaration rules (node/core/declare.py) reached from every front end: a 0-9-1 channel, the
management API's PUT, and definitions import, which refuses a bad file whole."""

from __future__ import annotations

import uuid

import pika
import pika.exceptions as pex
import pytest

from tests.support.http import call, q


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def channel_refusal(node, declare) -> tuple[int, str]:
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        with pytest.raises((pex.ChannelClosedByBroker, pex.ConnectionClosedByBroker)) as info:
            declare(conn.channel())
        return info.value.reply_code, info.value.reply_text
    finally:
        if conn.is_open:
            conn.close()


# -- management API PUT: same text as the channel, 400 -------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-max-length": "ten"},
        {"x-message-ttl": -1},
        {"x-overflow": "drop-tail"},
        {"x-queue-type": "fast"},
        {"x-single-active-consumer": "yes"},
        {"x-dead-letter-routing-key": "rk"},
    ],
)
def test_put_queue_with_a_bad_argument_is_400_with_the_channel_text(node, arguments):
    name = uid("bad-arg")
    status, body = call(
        node.management_url, "PUT", f"/api/queues/%2F/{name}", {"arguments": arguments}
    )
    assert status == 400, body
    code, text = channel_refusal(node, lambda ch: ch.queue_declare(name, arguments=arguments))
    assert code == 406
    # The channel's close text is RabbitMQ's "NAME - explanation"; the API gives the explanation.
    assert text == "PRECONDITION_FAILED - " + body["reason"] and name in text
    assert call(node.management_url, "GET", f"/api/queues/%2F/{name}")[0] == 404


def test_put_exchange_refusals(node):
    base = node.management_url
    name = uid("bad-x")
    status, body = call(base, "PUT", f"/api/exchanges/%2F/{name}", {"type": "bogus"})
    assert (status, body["reason"]) == (400, "invalid exchange type 'bogus'")
    status, body = call(base, "PUT", f"/api/exchanges/%2F/{name}", {"type": "x-delayed-message"})
    assert status == 400
    assert body["reason"] == "Invalid argument, 'x-delayed-type' must be an existing exchange type"
    status, body = call(
        base,
        "PUT",
        f"/api/exchanges/%2F/{name}",
        {"type": "direct", "arguments": {"alternate-exchange": 7}},
    )
    assert status == 400 and "alternate-exchange" in body["reason"]
    assert call(base, "GET", f"/api/exchanges/%2F/{name}")[0] == 404
    # Reserved names stay 403 (access_refused), with the channel's text.
    status, body = call(base, "PUT", "/api/exchanges/%2F/amq.mine", {"type": "direct"})
    assert (status, body["reason"]) == (
        403,
        "exchange name 'amq.mine' contains reserved prefix 'amq.*'",
    )
    status, body = call(base, "PUT", "/api/queues/%2F/amq.mine", {})
    assert (
        status == 403 and body["reason"] == "queue name 'amq.mine' contains reserved prefix 'amq.*'"
    )
    # A good delayed exchange is declared.
    ok = call(
        base,
        "PUT",
        f"/api/exchanges/%2F/{name}",
        {"type": "x-delayed-message", "arguments": {"x-delayed-type": "topic"}},
    )
    assert ok[0] == 201


def test_channel_unknown_exchange_type_still_closes_the_connection_503(node):
    code, text = channel_refusal(node, lambda ch: ch.exchange_declare(uid("x"), "bogus"))
    assert (code, text) == (503, "COMMAND_INVALID - invalid exchange type 'bogus'")


# -- definitions import: all or nothing ----------------------------------------------------


def definitions(vhost: str, queue: str, exchange: str, **bad) -> dict:
    """A file with a new vhost, a good exchange, queue and binding, plus `bad` items."""
    return {
        "vhosts": [{"name": vhost}],
        "permissions": [
            {"user": "guest", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
        ],
        "exchanges": [
            {"name": exchange, "vhost": vhost, "type": "direct", "durable": True},
            *bad.get("exchanges", []),
        ],
        "queues": [
            {"name": queue, "vhost": vhost, "durable": True, "arguments": {"x-max-length": 5}},
            *bad.get("queues", []),
        ],
        "bindings": [
            {
                "source": exchange,
                "vhost": vhost,
                "destination": queue,
                "destination_type": "queue",
                "routing_key": "k",
                "arguments": {},
            },
            *bad.get("bindings", []),
        ],
    }


BAD_FILES = {
    "bad queue argument": (
        {"queues": [{"name": "bad-q", "arguments": {"x-max-length": "lots"}}]},
        "queue 'bad-q'",
        "invalid arg 'x-max-length'",
    ),
    "unknown exchange type": (
        {"exchanges": [{"name": "bad-x", "type": "bogus"}]},
        "exchange 'bad-x'",
        "invalid exchange type 'bogus'",
    ),
    "amq.-prefixed exchange": (
        {"exchanges": [{"name": "amq.custom", "type": "direct"}]},
        "exchange 'amq.custom'",
        "reserved prefix 'amq.*'",
    ),
    "delayed exchange without a type": (
        {"exchanges": [{"name": "bad-d", "type": "x-delayed-message"}]},
        "exchange 'bad-d'",
        "x-delayed-type",
    ),
    "binding from a missing exchange": (
        {"bindings": [{"source": "nowhere", "destination": "QUEUE", "destination_type": "queue"}]},
        "binding from exchange 'nowhere'",
        "no exchange 'nowhere'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_definitions_are_refused_whole(node, case):
    base = node.management_url
    bad, item, why = BAD_FILES[case]
    vhost, queue, exchange = uid("defs-vh"), uid("defs-q"), uid("defs-x")
    bad = {k: [dict(i, vhost=vhost) for i in items] for k, items in bad.items()}
    for b in bad.get("bindings", []):
        b["destination"] = queue
    body = definitions(vhost, queue, exchange, **bad)
    status, reply = call(base, "POST", "/api/definitions", body)
    assert status == 400, reply
    assert reply["error"] == "bad_request"
    assert "nothing imported" in reply["reason"]
    assert item in reply["reason"] and why in reply["reason"], reply["reason"]
    # Nothing of the file was applied: not even the vhost that comes first.
    assert call(base, "GET", f"/api/vhosts/{q(vhost)}")[0] == 404
    names = [v["name"] for v in call(base, "GET", "/api/vhosts")[1]]
    assert vhost not in names


def test_bad_definitions_into_an_existing_vhost_apply_nothing(node):
    base = node.management_url
    vhost, queue, exchange = uid("defs-vh"), uid("defs-q"), uid("defs-x")
    assert call(base, "PUT", f"/api/vhosts/{q(vhost)}", {})[0] == 201
    body = definitions(vhost, queue, exchange)
    del body["vhosts"], body["permissions"]
    for key in ("exchanges", "queues", "bindings"):
        for i in body[key]:
            del i["vhost"]
    body["queues"].append({"name": "bad-q", "arguments": {"x-expires": 0}})
    status, reply = call(base, "POST", f"/api/definitions/{q(vhost)}", body)
    assert status == 400 and "queue 'bad-q'" in reply["reason"], reply
    assert "'x-expires'" in reply["reason"]
    assert call(base, "GET", f"/api/queues/{q(vhost)}/{queue}")[0] == 404
    assert call(base, "GET", f"/api/exchanges/{q(vhost)}/{exchange}")[0] == 404
    # Without the bad queue the same file imports, twice.
    body["queues"].pop()
    assert call(base, "POST", f"/api/definitions/{q(vhost)}", body)[0] == 204
    assert call(base, "POST", f"/api/definitions/{q(vhost)}", body)[0] == 204
    assert call(base, "GET", f"/api/queues/{q(vhost)}/{queue}")[0] == 200


def test_good_definitions_apply_and_predeclared_amq_exchanges_are_skipped(node):
    base = node.management_url
    vhost, queue, exchange = uid("defs-vh"), uid("defs-q"), uid("defs-x")
    body = definitions(
        vhost,
        queue,
        exchange,
        exchanges=[{"name": "amq.direct", "vhost": vhost, "type": "direct", "durable": True}],
    )
    assert call(base, "POST", "/api/definitions", body)[0] == 204
    assert call(base, "GET", f"/api/queues/{q(vhost)}/{queue}")[1]["arguments"] == {
        "x-max-length": 5
    }
    bindings = call(base, "GET", f"/api/exchanges/{q(vhost)}/{exchange}/bindings/source")[1]
    assert [(b["destination"], b["routing_key"]) for b in bindings] == [(queue, "k")]
    assert call(base, "DELETE", f"/api/vhosts/{q(vhost)}")[0] == 204
