"""node.core.declare: the declaration rules every front end shares (codes and texts as RabbitMQ)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from merpati.node.core.declare import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    PRECONDITION_FAILED,
    DeclareError,
    check_exchange_declare,
    check_queue_arguments,
    check_queue_declare,
    check_quorum_declare,
    check_reserved_name,
    check_server_named,
    declared_queue_type,
)
from merpati.node.wire.table import Int


def refused(fn, *args, **kwargs) -> DeclareError:
    with pytest.raises(DeclareError) as info:
        fn(*args, **kwargs)
    return info.value


# -- reserved names ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["queue", "exchange"])
def test_amq_prefix_is_reserved(kind):
    e = refused(check_reserved_name, kind, "amq.mine")
    assert e.code == ACCESS_REFUSED and not e.hard
    assert e.text == f"{kind} name 'amq.mine' contains reserved prefix 'amq.*'"


@pytest.mark.parametrize("name", ["orders", "amq", "xamq.y", "AMQ.upper", ""])
def test_other_names_are_not_reserved(name):
    check_reserved_name("queue", name)


# -- exchanges --------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["direct", "fanout", "topic", "headers"])
def test_exchange_types_are_accepted(type_):
    check_exchange_declare("/", "x", type_, {})


def test_unknown_exchange_type_is_503_a_connection_error():
    e = refused(check_exchange_declare, "/", "x", "no-such-type", {})
    assert (e.code, e.text) == (COMMAND_INVALID, "invalid exchange type 'no-such-type'")
    assert e.hard


def test_default_exchange_cannot_be_declared():
    e = refused(check_exchange_declare, "/", "", "direct")
    assert (e.code, e.text) == (ACCESS_REFUSED, "operation not permitted on the default exchange")


@pytest.mark.parametrize("delayed", ["direct", "fanout", "topic", "headers", b"topic"])
def test_delayed_exchange_with_a_delayable_type(delayed):
    check_exchange_declare("/", "d", "x-delayed-message", {"x-delayed-type": delayed})


@pytest.mark.parametrize(
    "args", [{}, None, {"x-delayed-type": "x-delayed-message"}, {"x-delayed-type": 1}]
)
def test_delayed_exchange_needs_a_delayable_type(args):
    e = refused(check_exchange_declare, "/", "d", "x-delayed-message", args)
    assert e.code == PRECONDITION_FAILED
    assert e.text == "Invalid argument, 'x-delayed-type' must be an existing exchange type"


def test_new_amq_exchange_is_refused_but_an_existing_one_may_be_redeclared():
    e = refused(check_exchange_declare, "/", "amq.direct", "direct")
    assert e.code == ACCESS_REFUSED and "reserved prefix 'amq.*'" in e.text
    check_exchange_declare("/", "amq.direct", "direct", exists=True)


def test_type_is_checked_before_the_reserved_name():
    # As the channel did: an unknown type closes the connection whatever the name.
    assert refused(check_exchange_declare, "/", "amq.x", "bogus").code == COMMAND_INVALID


@pytest.mark.parametrize("ae", ["backup", b"backup"])
def test_alternate_exchange_string(ae):
    check_exchange_declare("/", "x", "direct", {"alternate-exchange": ae})


@pytest.mark.parametrize("ae", [1, True, {"a": 1}])
def test_alternate_exchange_must_be_a_string(ae):
    e = refused(check_exchange_declare, "v", "x", "direct", {"alternate-exchange": ae})
    assert e.code == PRECONDITION_FAILED
    assert e.text == (
        "invalid arg 'alternate-exchange' for exchange 'x' in vhost 'v': expected a string"
    )


# -- queues -----------------------------------------------------------------------------------


INT_KEYS = [
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-delivery-limit",
    "x-consumer-timeout",
]


@pytest.mark.parametrize("key", INT_KEYS)
@pytest.mark.parametrize("value", [1, 10, Int("l", 5), Int("b", 1)])
def test_integer_arguments_accept_integers(key, value):
    check_queue_arguments("/", "q", {key: value})


@pytest.mark.parametrize("key", [k for k in INT_KEYS if k != "x-expires"])
def test_integer_arguments_accept_zero_except_expires(key):
    check_queue_arguments("/", "q", {key: 0})


@pytest.mark.parametrize("key", INT_KEYS)
@pytest.mark.parametrize("value", ["10", 1.5, True, None, [1]])
def test_integer_arguments_refuse_other_types(key, value):
    e = refused(check_queue_arguments, "v", "q", {key: value})
    assert e.code == PRECONDITION_FAILED
    assert e.text == (
        f"invalid arg '{key}' for queue 'q' in vhost 'v': expected an integer, got {value!r}"
    )


@pytest.mark.parametrize(
    "key,value",
    [(k, -1) for k in INT_KEYS] + [("x-expires", 0), ("x-max-priority", 256)],
)
def test_integer_arguments_out_of_range(key, value):
    e = refused(check_queue_arguments, "v", "q", {key: value})
    assert e.code == PRECONDITION_FAILED
    assert (
        e.text == f"invalid arg '{key}' for queue 'q' in vhost 'v': value {value} is out of range"
    )


def test_max_priority_255_is_the_limit():
    check_queue_arguments("/", "q", {"x-max-priority": 255})


@pytest.mark.parametrize(
    "key,good,bad",
    [
        ("x-overflow", ["drop-head", "reject-publish", "reject-publish-dlx"], ["drop-tail", 1]),
        ("x-queue-type", ["classic", "quorum", "stream"], ["fast", 1]),
        ("x-queue-mode", ["default", "lazy"], ["eager"]),
    ],
)
def test_enumerated_arguments(key, good, bad):
    for value in good:
        check_queue_arguments("/", "q", {key: value})
    for value in bad:
        e = refused(check_queue_arguments, "v", "q", {key: value})
        assert e.code == PRECONDITION_FAILED
        assert e.text == f"invalid arg '{key}' for queue 'q' in vhost 'v': {value!r}"


def test_dead_letter_arguments():
    check_queue_arguments("/", "q", {"x-dead-letter-exchange": ""})
    check_queue_arguments(
        "/", "q", {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": b"rk"}
    )
    e = refused(check_queue_arguments, "v", "q", {"x-dead-letter-exchange": 5})
    assert e.code == PRECONDITION_FAILED
    assert e.text == (
        "invalid arg 'x-dead-letter-exchange' for queue 'q' in vhost 'v': expected a string, got 5"
    )
    e = refused(
        check_queue_arguments,
        "v",
        "q",
        {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": 5},
    )
    assert "'x-dead-letter-routing-key'" in e.text and "expected a string" in e.text
    # A routing key without an exchange to send it to, as RabbitMQ refuses it.
    e = refused(check_queue_arguments, "v", "q", {"x-dead-letter-routing-key": "rk"})
    assert e.code == PRECONDITION_FAILED
    assert e.text == (
        "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost 'v': "
        "no x-dead-letter-exchange is given"
    )


def test_single_active_consumer_must_be_a_boolean():
    check_queue_arguments("/", "q", {"x-single-active-consumer": True})
    check_queue_arguments("/", "q", {"x-single-active-consumer": False})
    e = refused(check_queue_arguments, "v", "q", {"x-single-active-consumer": "true"})
    assert e.code == PRECONDITION_FAILED
    assert e.text == (
        "invalid arg 'x-single-active-consumer' for queue 'q' in vhost 'v': "
        "expected a boolean, got 'true'"
    )


def test_unknown_arguments_are_accepted_as_rabbitmq_does():
    check_queue_arguments("/", "q", {"x-custom": object(), "x-queue-master-locator": "min-masters"})
    check_queue_arguments("/", "q", None)


def test_queue_declare_checks_name_then_arguments():
    check_queue_declare("/", "q", {"x-max-length": 1})
    assert refused(check_queue_declare, "/", "amq.q", {"x-max-length": -1}).code == ACCESS_REFUSED
    assert refused(check_queue_declare, "/", "q", {"x-max-length": -1}).code == PRECONDITION_FAILED


def test_core_does_not_import_the_amqp091_front_end():
    code = (
        "import sys, merpati.node.core.declare; "
        "sys.exit(any(m.startswith('merpati.node.amqp091') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- quorum queues ----------------------------------------------------------------------------

QUORUM = {"x-queue-type": "quorum"}
NEW_QQ = {"durable": True, "exclusive": False, "auto_delete": False}


def test_a_durable_quorum_queue_is_accepted_with_its_arguments():
    check_quorum_declare(
        "/",
        "q",
        {
            **QUORUM,
            "x-delivery-limit": 3,
            "x-message-ttl": 10,
            "x-max-length": 5,
            "x-overflow": "reject-publish",
            "x-dead-letter-exchange": "dlx",
            "x-dead-letter-strategy": "at-least-once",
            "x-quorum-initial-group-size": 3,
            "x-queue-leader-locator": "balanced",
            "x-single-active-consumer": True,
            "x-custom": "kept",  # unknown to every type: accepted, as RabbitMQ does
        },
        **NEW_QQ,
    )


@pytest.mark.parametrize(
    "props,prop",
    [
        ({"auto_delete": True}, "auto-delete"),
        ({"exclusive": True}, "exclusive-owner"),
        ({"durable": False}, "non-durable"),
        # RabbitMQ's order: auto-delete, then exclusive, then durability.
        ({"auto_delete": True, "exclusive": True, "durable": False}, "auto-delete"),
        ({"exclusive": True, "durable": False}, "exclusive-owner"),
    ],
)
def test_a_quorum_queue_refuses_temporary_properties_with_rabbitmqs_text(props, prop):
    e = refused(check_quorum_declare, "v", "q", QUORUM, **{**NEW_QQ, **props})
    assert (e.code, e.hard) == (PRECONDITION_FAILED, False)
    assert e.text == f"invalid property '{prop}' for queue 'q' in vhost 'v'"


@pytest.mark.parametrize(
    "key",
    ["x-max-priority", "x-queue-mode", "x-queue-version", "x-queue-master-locator", "x-max-age"],
)
def test_a_quorum_queue_refuses_arguments_of_other_queue_types(key):
    e = refused(check_quorum_declare, "v", "q", {**QUORUM, key: 1}, **NEW_QQ)
    assert e.code == PRECONDITION_FAILED
    assert e.text == (
        f"invalid arg '{key}' for queue 'q' in vhost 'v' of queue type rabbit_quorum_queue"
    )


def test_arguments_are_checked_before_properties():
    e = refused(
        check_quorum_declare,
        "v",
        "q",
        {**QUORUM, "x-max-priority": 5},
        **{**NEW_QQ, "durable": False},
    )
    assert "'x-max-priority'" in e.text


@pytest.mark.parametrize("qtype", [None, "classic", b"classic", "stream"])
def test_other_queue_types_are_not_checked_here(qtype):
    args = {"x-max-priority": 5} if qtype is None else {"x-queue-type": qtype, "x-max-priority": 5}
    check_quorum_declare("/", "q", args, durable=False, exclusive=True, auto_delete=True)


def test_the_quorum_type_may_come_as_bytes():
    e = refused(
        check_quorum_declare, "v", "q", {"x-queue-type": b"quorum"}, **{**NEW_QQ, "durable": False}
    )
    assert e.text == "invalid property 'non-durable' for queue 'q' in vhost 'v'"


@pytest.mark.parametrize(
    "props",
    [
        {"durable": False, "exclusive": False, "auto_delete": False},
        {"durable": True, "exclusive": True, "auto_delete": False},
        {"durable": True, "exclusive": False, "auto_delete": True},
    ],
)
def test_a_quorum_default_leaves_temporary_queues_classic(props):
    """--default-queue-type quorum: a declaration without x-queue-type that cannot be a quorum
    queue becomes a classic one (as RabbitMQ's augment_declare_args), so nothing is refused."""
    assert declared_queue_type({}, **props, default_type="quorum") == "classic"
    check_quorum_declare("/", "q", {"x-max-priority": 5}, **props, default_type="quorum")


def test_a_quorum_default_applies_the_quorum_rules_to_durable_queues():
    assert declared_queue_type({}, **NEW_QQ, default_type="quorum") == "quorum"
    assert declared_queue_type({}, **NEW_QQ) == "classic"
    e = refused(
        check_quorum_declare, "v", "q", {"x-max-priority": 5}, **NEW_QQ, default_type="quorum"
    )
    assert e.text.endswith("of queue type rabbit_quorum_queue")
    # An explicit type wins over the default.
    check_quorum_declare(
        "/", "q", {"x-queue-type": "classic", "x-max-priority": 5}, **NEW_QQ, default_type="quorum"
    )


def test_a_quorum_queue_cannot_be_server_named():
    check_server_named("classic")
    e = refused(check_server_named, "quorum")
    assert (e.code, e.text) == (
        PRECONDITION_FAILED,
        "Cannot declare a server-named queue for type rabbit_quorum_queue",
    )
