"""Queue leader locators: which node leads a new queue (client-local or balanced), from the
queue's x-queue-leader-locator / x-queue-master-locator, its policy, or the node's setting, as
RabbitMQ 3.10+ decides it; and the 406s for values no locator knows."""

from __future__ import annotations

import pytest

from merpati.cluster.membership import place_queue
from merpati.cluster.replication.queues import ReplicatedQueues
from merpati.node.broker import Broker
from merpati.node.cluster_seam import LoneNode
from merpati.node.core.declare import (
    PRECONDITION_FAILED,
    DeclareError,
    check_policy_definition,
    check_queue_arguments,
)
from merpati.node.core.queue_args import leader_locator
from merpati.node.metadata import commands as c
from merpati.node.metadata.log import LocalLog
from merpati.node.metadata.state import MetadataState
from tests.support.amqp091 import in_loop

V = "/"


def refusal(args: dict) -> DeclareError:
    with pytest.raises(DeclareError) as e:
        check_queue_arguments("v", "q", args)
    return e.value


# -- which locator applies ----------------------------------------------------------------------


@pytest.mark.parametrize("default", ["balanced", "client-local"])
def test_without_argument_or_policy_the_node_setting_applies(default):
    assert leader_locator({}, None, default) == default
    assert leader_locator({"x-max-length": 1}, {"max-length": 2}, default) == default


@pytest.mark.parametrize(
    "value,meaning",
    [
        ("client-local", "client-local"),
        ("balanced", "balanced"),
        # Deprecated in RabbitMQ 3.10 and read as balanced there.
        ("random", "balanced"),
        ("least-leaders", "balanced"),
        (b"client-local", "client-local"),  # 0-9-1 longstr that is not valid UTF-8 comes as bytes
    ],
)
def test_x_queue_leader_locator(value, meaning):
    other = "balanced" if meaning == "client-local" else "client-local"
    assert leader_locator({"x-queue-leader-locator": value}, None, other) == meaning


@pytest.mark.parametrize(
    "value,meaning",
    [("client-local", "client-local"), ("min-masters", "balanced"), ("random", "balanced")],
)
def test_the_old_x_queue_master_locator_as_rabbitmq_3_10_reads_it(value, meaning):
    other = "balanced" if meaning == "client-local" else "client-local"
    assert leader_locator({"x-queue-master-locator": value}, None, other) == meaning


def test_the_policy_wins_over_the_argument_as_in_rabbitmq():
    args = {"x-queue-leader-locator": "client-local"}
    assert leader_locator(args, {"queue-leader-locator": "balanced"}, "client-local") == "balanced"
    assert (
        leader_locator({}, {"queue-leader-locator": "client-local"}, "balanced") == "client-local"
    )


def test_the_leader_locator_wins_over_the_master_locator_wherever_each_is_set():
    args = {"x-queue-leader-locator": "balanced"}
    assert leader_locator(args, {"queue-master-locator": "client-local"}, "client-local") == (
        "balanced"
    )
    args = {"x-queue-leader-locator": "client-local", "x-queue-master-locator": "min-masters"}
    assert leader_locator(args, None, "balanced") == "client-local"
    assert leader_locator({}, {"queue-master-locator": "client-local"}, "balanced") == (
        "client-local"
    )


def test_a_policy_value_no_locator_knows_is_skipped_not_obeyed():
    # Policies set before their check existed may hold one: the argument or default applies.
    args = {"x-queue-leader-locator": "client-local"}
    assert leader_locator(args, {"queue-leader-locator": "nearest"}, "balanced") == "client-local"
    assert leader_locator({}, {"queue-leader-locator": 3}, "balanced") == "balanced"


# -- declarations and policies refuse unknown values -------------------------------------------


def test_known_locator_arguments_are_accepted():
    for value in ("client-local", "balanced", "random", "least-leaders"):
        check_queue_arguments("/", "q", {"x-queue-leader-locator": value})
    for value in ("client-local", "min-masters", "random"):
        check_queue_arguments("/", "q", {"x-queue-master-locator": value})


def test_an_unknown_leader_locator_is_a_406_naming_the_values():
    e = refusal({"x-queue-leader-locator": "nearest"})
    assert (e.code, e.hard) == (PRECONDITION_FAILED, False)
    assert e.text == (
        "invalid arg 'x-queue-leader-locator' for queue 'q' in vhost 'v': "
        "expected client-local or balanced, got 'nearest'"
    )


def test_an_unknown_master_locator_is_a_406_naming_its_own_values():
    # balanced is a leader locator, never a master locator (RabbitMQ refuses it there too).
    e = refusal({"x-queue-master-locator": "balanced"})
    assert e.code == PRECONDITION_FAILED
    assert e.text == (
        "invalid arg 'x-queue-master-locator' for queue 'q' in vhost 'v': "
        "expected client-local, min-masters or random, got 'balanced'"
    )


def test_a_locator_that_is_not_a_string_is_refused():
    assert refusal({"x-queue-leader-locator": 1}).text.endswith("got 1")


def test_policy_definitions_with_unknown_locators_are_refused():
    assert check_policy_definition({"queue-leader-locator": "client-local"}) is None
    assert check_policy_definition({"max-length": 5}) is None
    assert check_policy_definition({"queue-leader-locator": "nearest"}) == (
        "'nearest' is not a valid queue-leader-locator value (expected client-local or balanced)"
    )
    assert "queue-master-locator" in (check_policy_definition({"queue-master-locator": "x"}) or "")


# -- placement ----------------------------------------------------------------------------------


def state(*cmds: c.Command) -> MetadataState:
    s = MetadataState()
    for cmd in (
        c.AddVhost(V),
        c.NodeJoined("n1", "h1:1", "h1:2"),
        c.NodeJoined("n2", "h2:1", "h2:2"),
        c.NodeJoined("n3", "h3:1", "h3:2"),
        *cmds,
    ):
        s.apply(cmd)
    return s


LIVE = {"n1", "n2", "n3"}


def test_client_local_places_on_the_declaring_node_even_when_it_leads_the_most():
    s = state(c.DeclareQueue(V, "a", leader="n1"), c.DeclareQueue(V, "b", leader="n1"))
    assert place_queue(s, LIVE, "n1", False, "client-local") == "n1"
    assert place_queue(s, LIVE, "n1", False, "balanced") == "n2"
    assert place_queue(s, LIVE, "n1", False) == "n2"  # balanced is what it was before locators


def test_client_local_on_a_draining_node_balances_instead():
    s = state(c.DeclareQueue(V, "a", leader="n2"))
    s.apply(c.SetNodeDraining("n1"))
    assert place_queue(s, LIVE, "n1", False, "client-local") == "n3"
    # An exclusive queue still stays with its connection, draining or not.
    assert place_queue(s, LIVE, "n1", True, "balanced") == "n1"


def test_a_client_local_quorum_queue_is_led_by_the_declaring_node_with_replicas_elsewhere():
    s = state(c.DeclareQueue(V, "a", leader="n1"))
    leader = place_queue(s, LIVE, "n3", False, "client-local")
    replicas = ReplicatedQueues.place(s, ["n1", "n2", "n3"], LIVE, leader, 3)
    assert leader == "n3" and replicas[0] == "n3" and set(replicas) == LIVE


# -- the broker asks the cluster with the locator that applies ----------------------------------


class RecordingCluster(LoneNode):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[bool, str]] = []

    def place_queue(self, exclusive: bool, locator: str = "balanced") -> str:
        self.asked.append((exclusive, locator))
        return self.node_id


@in_loop
async def test_broker_declare_hands_the_locator_to_the_cluster() -> None:
    seam = RecordingCluster()
    b = Broker("n1", LocalLog(), cluster=seam, queue_leader_locator="client-local")
    await b.propose(c.AddVhost(V))
    b.declare_queue(V, "plain")
    b.declare_queue(V, "told", arguments={"x-queue-leader-locator": "balanced"})
    await b.propose(c.SetPolicy(V, "p", "^pol", {"queue-leader-locator": "balanced"}))
    b.declare_queue(V, "pol1", arguments={"x-queue-leader-locator": "client-local"})
    b.declare_queue(V, "excl", exclusive_owner="conn-1")
    assert seam.asked == [
        (False, "client-local"),
        (False, "balanced"),
        (False, "balanced"),  # the policy wins over the argument
        (True, "client-local"),
    ]
    cmd = b.declare_queue(V, "plain2")
    assert cmd.leader == "n1"
