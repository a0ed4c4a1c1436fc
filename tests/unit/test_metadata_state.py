"""node.metadata.state.MetadataState: the deterministic metadata state machine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merpati.node.metadata import commands as c
from merpati.node.metadata.state import DEFAULT_EXCHANGES, MetadataError, MetadataState

V = "/"


def fresh(*cmds) -> MetadataState:
    s = MetadataState()
    assert s.apply(c.AddVhost(V)) == "created"
    for cmd in cmds:
        r = s.apply(cmd)
        assert not isinstance(r, MetadataError), (cmd, r.code, r.text)
    return s


def err(result) -> MetadataError:
    assert isinstance(result, MetadataError), result
    return result


def routed(s: MetadataState, exchange: str, routing_key: str = "", headers=None) -> set:
    return set(s.exchange(V, exchange).route(routing_key, lambda: headers or {}))


# --- vhosts ----------------------------------------------------------------------------------


def test_vhost_creation_adds_the_default_exchanges():
    s = fresh()
    exchanges = s.vhosts[V].exchanges
    assert set(exchanges) == {
        "",
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    }
    assert exchanges[""].type == "direct"
    for name, type_ in DEFAULT_EXCHANGES:
        assert exchanges[name].type == type_
        assert exchanges[name].durable
    assert s.apply(c.AddVhost(V)) == "exists"
    assert s.vhosts[V].queues == {}


def test_vhosts_are_independent():
    s = fresh(c.AddVhost("other"), c.DeclareQueue(V, "q"))
    assert s.queue("other", "q") is None
    assert s.exchange("other", "amq.topic") is not s.exchange(V, "amq.topic")
    assert s.apply(c.DeleteVhost("other")) == "deleted"
    assert err(s.apply(c.DeleteVhost("other"))).code == 404
    assert err(s.apply(c.DeclareQueue("nope", "q"))).code == 404
    assert s.queue("nope", "q") is None and s.exchange("nope", "x") is None


def test_users_and_permissions():
    s = fresh()
    assert err(s.apply(c.SetPermissions("u", V))).code == 404
    s.apply(c.PutUser("u", "hash", ("administrator",)))
    assert err(s.apply(c.SetPermissions("u", "nope"))).code == 404
    assert s.apply(c.SetPermissions("u", V, "^$", ".*", ".*")) == "ok"
    assert s.permissions[("u", V)].configure == "^$"
    s.apply(c.AddVhost("v2"))
    s.apply(c.SetPermissions("u", "v2"))
    s.apply(c.DeleteVhost("v2"))
    assert ("u", "v2") not in s.permissions
    s.apply(c.DeleteUser("u"))
    assert s.permissions == {}
    assert err(s.apply(c.DeleteUser("u"))).code == 404


# --- exchanges and queues --------------------------------------------------------------------


def test_declare_and_delete_exchange():
    s = fresh()
    assert s.apply(c.DeclareExchange(V, "x", "topic")) == "created"
    assert s.exchange(V, "x").type == "topic"
    assert s.apply(c.DeclareExchange(V, "x", "topic")) == "exists"
    assert s.apply(c.DeleteExchange(V, "x")) == "deleted"
    assert s.exchange(V, "x") is None
    assert err(s.apply(c.DeleteExchange(V, "x"))).code == 404


def test_declare_and_delete_queue():
    s = fresh()
    assert s.apply(c.DeclareQueue(V, "q", durable=True, leader="n1")) == "created"
    q = s.queue(V, "q")
    assert (q.durable, q.leader) == (True, "n1")
    assert s.apply(c.DeclareQueue(V, "q", durable=True, leader="n2")) == "exists"
    assert s.queue(V, "q").leader == "n1"
    assert s.apply(c.DeleteQueue(V, "q")) == "deleted"
    assert s.queue(V, "q") is None
    assert err(s.apply(c.DeleteQueue(V, "q"))).code == 404


@pytest.mark.parametrize(
    "first, second, arg",
    [
        (c.DeclareExchange(V, "x", "direct"), c.DeclareExchange(V, "x", "topic"), "type"),
        (
            c.DeclareExchange(V, "x", "direct"),
            c.DeclareExchange(V, "x", "direct", durable=False),
            "durable",
        ),
        (
            c.DeclareExchange(V, "x", "direct"),
            c.DeclareExchange(V, "x", "direct", auto_delete=True),
            "auto_delete",
        ),
        (
            c.DeclareExchange(V, "x", "direct"),
            c.DeclareExchange(V, "x", "direct", internal=True),
            "internal",
        ),
        (
            c.DeclareExchange(V, "x", "direct", arguments={"alternate-exchange": "ae"}),
            c.DeclareExchange(V, "x", "direct"),
            "alternate-exchange",
        ),
        (c.DeclareQueue(V, "q"), c.DeclareQueue(V, "q", durable=True), "durable"),
        (c.DeclareQueue(V, "q"), c.DeclareQueue(V, "q", auto_delete=True), "auto_delete"),
        (
            c.DeclareQueue(V, "q", arguments={"x-max-length": 10}),
            c.DeclareQueue(V, "q", arguments={"x-max-length": 11}),
            "x-max-length",
        ),
        (
            c.DeclareQueue(V, "q"),
            c.DeclareQueue(V, "q", arguments={"x-message-ttl": 1000}),
            "x-message-ttl",
        ),
        (
            c.DeclareQueue(V, "q", arguments={"x-queue-type": "quorum"}),
            c.DeclareQueue(V, "q", arguments={"x-queue-type": "classic"}),
            "x-queue-type",
        ),
    ],
)
def test_inequivalent_redeclare_is_406_with_a_clear_text(first, second, arg):
    s = fresh(first)
    e = err(s.apply(second))
    assert e.code == 406
    kind = "exchange 'x'" if isinstance(first, c.DeclareExchange) else "queue 'q'"
    assert f"inequivalent arg '{arg}' for {kind} in vhost '/'" in e.text
    assert "received" in e.text and "current is" in e.text
    # The original declaration is untouched.
    if isinstance(first, c.DeclareExchange):
        assert s.exchange(V, "x").type == first.type
    else:
        assert s.queue(V, "q").durable == first.durable


def test_equivalent_redeclare_tolerates_wire_int_kinds_and_other_arguments():
    from merpati.node.wire.table import Int

    s = fresh(c.DeclareQueue(V, "q", arguments={"x-max-length": 10, "x-custom": "a"}))
    r = s.apply(c.DeclareQueue(V, "q", arguments={"x-max-length": Int("b", 10), "x-custom": "b"}))
    assert r == "exists"


def test_exclusive_queue_of_another_owner_is_405():
    s = fresh(c.DeclareQueue(V, "q", exclusive_owner="conn-1"))
    assert s.apply(c.DeclareQueue(V, "q", exclusive_owner="conn-1")) == "exists"
    e = err(s.apply(c.DeclareQueue(V, "q", exclusive_owner="conn-2")))
    assert e.code == 405
    assert "exclusive" in e.text and "'q'" in e.text
    assert err(s.apply(c.DeclareQueue(V, "q"))).code == 405


def test_exclusive_redeclare_of_a_non_exclusive_queue_is_405():
    # RabbitMQ (rabbit_amqqueue:assert_equivalence -> check_exclusive_access(Q, Owner, strict)):
    # a queue declared without exclusive cannot be redeclared exclusive: 405 RESOURCE_LOCKED.
    s = fresh(c.DeclareQueue(V, "q"))
    r = s.apply(c.DeclareQueue(V, "q", exclusive_owner="conn-1"))
    assert isinstance(r, MetadataError), r
    assert r.code == 405
    assert s.queue(V, "q").exclusive_owner is None


# --- bindings --------------------------------------------------------------------------------


def test_bind_and_unbind():
    s = fresh(c.DeclareQueue(V, "q"), c.DeclareExchange(V, "x", "direct"))
    assert s.apply(c.Bind(V, "x", "q", "q", "k")) == "created"
    assert s.apply(c.Bind(V, "x", "q", "q", "k")) == "exists"
    assert routed(s, "x", "k") == {("q", "q")}
    assert s.apply(c.Unbind(V, "x", "q", "q", "k")) == "deleted"
    assert routed(s, "x", "k") == set()
    assert s.apply(c.Unbind(V, "x", "q", "q", "k")) == "absent"
    assert s.vhosts[V].bindings_to == {}


def test_bind_to_missing_things_is_404():
    s = fresh(c.DeclareQueue(V, "q"), c.DeclareExchange(V, "x", "direct"))
    assert err(s.apply(c.Bind(V, "nope", "q", "q", "k"))).code == 404
    assert err(s.apply(c.Bind(V, "x", "q", "nope", "k"))).code == 404
    assert err(s.apply(c.Bind(V, "x", "e", "nope", "k"))).code == 404
    assert err(s.apply(c.Unbind(V, "x", "q", "nope", "k"))).code == 404


def test_binding_arguments_are_part_of_the_identity():
    s = fresh(c.DeclareQueue(V, "q"), c.DeclareExchange(V, "h", "headers"))
    s.apply(c.Bind(V, "h", "q", "q", "", {"x-match": "any", "a": 1, "b": 2}))
    assert s.apply(c.Bind(V, "h", "q", "q", "", {"b": 2, "a": 1, "x-match": "any"})) == "exists"
    assert routed(s, "h", headers={"a": 1}) == {("q", "q")}
    assert s.apply(c.Unbind(V, "h", "q", "q", "")) == "absent"
    assert s.apply(c.Unbind(V, "h", "q", "q", "", {"a": 1, "x-match": "any", "b": 2})) == "deleted"
    assert routed(s, "h", headers={"a": 1}) == set()


def test_deleting_a_queue_removes_its_bindings():
    s = fresh(
        c.DeclareQueue(V, "q"),
        c.DeclareQueue(V, "other"),
        c.Bind(V, "amq.direct", "q", "q", "k"),
        c.Bind(V, "amq.topic", "q", "q", "a.#"),
        c.Bind(V, "amq.fanout", "q", "q", ""),
        c.Bind(V, "amq.direct", "q", "other", "k"),
    )
    s.apply(c.DeleteQueue(V, "q"))
    assert routed(s, "amq.direct", "k") == {("q", "other")}
    assert routed(s, "amq.topic", "a.b") == set()
    assert routed(s, "amq.fanout") == set()
    assert s.exchange(V, "amq.topic").bindings == {}
    assert ("q", "q") not in s.vhosts[V].bindings_to
    # A new queue of the same name starts unbound.
    s.apply(c.DeclareQueue(V, "q"))
    assert routed(s, "amq.fanout") == set()


def test_deleting_an_exchange_removes_bindings_from_and_to_it():
    s = fresh(
        c.DeclareQueue(V, "q"),
        c.DeclareExchange(V, "x", "fanout"),
        c.Bind(V, "x", "q", "q", ""),
        c.Bind(V, "amq.direct", "e", "x", "k"),
    )
    assert err(s.apply(c.DeleteExchange(V, "x", if_unused=True))).code == 406
    s.apply(c.DeleteExchange(V, "x"))
    assert routed(s, "amq.direct", "k") == set()
    assert s.vhosts[V].bindings_to == {}


def test_if_unused_counts_bindings_to_the_exchange_as_destination():
    s = fresh(c.DeclareExchange(V, "x", "fanout"), c.Bind(V, "amq.direct", "e", "x", "k"))
    assert err(s.apply(c.DeleteExchange(V, "x", if_unused=True))).code == 406
    s.apply(c.Unbind(V, "amq.direct", "e", "x", "k"))
    assert s.apply(c.DeleteExchange(V, "x", if_unused=True)) == "deleted"


def test_auto_delete_exchange_goes_with_its_last_binding():
    s = fresh(
        c.DeclareQueue(V, "q1"),
        c.DeclareQueue(V, "q2"),
        c.DeclareExchange(V, "ad", "direct", auto_delete=True),
        c.Bind(V, "ad", "q", "q1", "k"),
        c.Bind(V, "ad", "q", "q2", "k"),
    )
    s.apply(c.Unbind(V, "ad", "q", "q1", "k"))
    assert s.exchange(V, "ad") is not None
    s.apply(c.Unbind(V, "ad", "q", "q2", "k"))
    assert s.exchange(V, "ad") is None


def test_auto_delete_exchange_goes_when_its_last_bound_queue_is_deleted():
    s = fresh(
        c.DeclareQueue(V, "q"),
        c.DeclareExchange(V, "ad", "topic", auto_delete=True),
        c.DeclareExchange(V, "ad2", "fanout", auto_delete=True),
        c.Bind(V, "ad", "q", "q", "#"),
        c.Bind(V, "ad2", "e", "ad", ""),
    )
    s.apply(c.DeleteQueue(V, "q"))
    # 'ad' loses its last binding and goes; that removes ad2 -> ad, the last binding of 'ad2'.
    assert s.exchange(V, "ad") is None
    assert s.exchange(V, "ad2") is None
    assert s.vhosts[V].bindings_to == {}


def test_auto_delete_exchange_without_bindings_stays():
    s = fresh(c.DeclareExchange(V, "ad", "direct", auto_delete=True))
    assert s.exchange(V, "ad") is not None


def test_declare_exchange_with_unknown_type_returns_an_error_instead_of_raising():
    # apply() promises to return a MetadataError for any command that cannot apply.
    s = fresh()
    r = s.apply(c.DeclareExchange(V, "x", "no-such-type"))
    assert isinstance(r, MetadataError)
    assert s.exchange(V, "x") is None


def test_bind_with_invalid_x_match_returns_an_error_and_leaves_no_binding():
    s = fresh(c.DeclareQueue(V, "q"), c.DeclareExchange(V, "h", "headers"))
    r = s.apply(c.Bind(V, "h", "q", "q", "", {"x-match": "bogus"}))
    assert isinstance(r, MetadataError) and r.code == 406
    assert s.exchange(V, "h").bindings == {}


# --- moving queues and draining nodes ----------------------------------------------------------


def members(*cmds) -> MetadataState:
    return fresh(
        c.NodeJoined("n1", "h1:1", "h1:2"),
        c.NodeJoined("n2", "h2:1", "h2:2"),
        c.NodeJoined("n3", "h3:1", "h3:2"),
        *cmds,
    )


def test_move_queue_records_the_old_leader_until_it_has_handed_over():
    s = members(c.DeclareQueue(V, "q", durable=True, leader="n1"))
    assert s.apply(c.MoveQueue(V, "q", "n1", "n2")) == "moved"
    q = s.queue(V, "q")
    assert (q.leader, q.handing_over) == ("n2", ("n1",))
    # Moved on before n1 finished: both former leaders still hold messages.
    assert s.apply(c.MoveQueue(V, "q", "n2", "n3")) == "moved"
    assert q.handing_over == ("n1", "n2")
    assert s.apply(c.QueueHandedOver(V, "q", "n1")) == "handed-over"
    assert q.handing_over == ("n2",)
    assert s.apply(c.QueueHandedOver(V, "q", "n1")) == "absent"  # a retried proposal
    assert err(s.apply(c.QueueHandedOver(V, "nope", "n1"))).code == 404


def test_a_handed_over_said_before_a_later_move_is_stale():
    """n1 finished its first handover while the queue was back on n1 and proposed
    QueueHandedOver; a move away from n1 (a second handover) was committed before it. Applied
    after that move, it must not clear n1: n1 holds the queue's messages again."""
    s = members(c.DeclareQueue(V, "q", durable=True, leader="n1"))
    s.apply(c.MoveQueue(V, "q", "n1", "n2"))
    s.apply(c.MoveQueue(V, "q", "n2", "n1"))
    seen = s.queue(V, "q").moves  # what n1 saw when its first handover ended
    s.apply(c.MoveQueue(V, "q", "n1", "n3"))
    assert err(s.apply(c.QueueHandedOver(V, "q", "n1", seen))).code == 406
    assert "n1" in s.queue(V, "q").handing_over
    now = s.queue(V, "q").moves
    assert s.apply(c.QueueHandedOver(V, "q", "n1", now)) == "handed-over"
    assert s.queue(V, "q").handing_over == ("n2",)


def test_move_queue_preconditions():
    s = members(
        c.DeclareQueue(V, "q", leader="n1"),
        c.DeclareQueue(V, "x", exclusive_owner="n1/c", leader="n1"),
    )
    assert err(s.apply(c.MoveQueue(V, "q", "n2", "n3"))).code == 406  # not its leader
    assert err(s.apply(c.MoveQueue(V, "q", "n1", "n1"))).code == 406  # nowhere to go
    assert err(s.apply(c.MoveQueue(V, "x", "n1", "n2"))).code == 406  # exclusive
    assert err(s.apply(c.MoveQueue(V, "nope", "n1", "n2"))).code == 404
    assert s.queue(V, "q").handing_over == ()


def test_node_left_stops_waiting_for_its_handovers():
    s = members(c.DeclareQueue(V, "q", leader="n1"), c.MoveQueue(V, "q", "n1", "n2"))
    s.apply(c.SetNodeDraining("n1"))
    assert s.apply(c.NodeLeft("n1")) == "left"
    assert s.queue(V, "q").handing_over == ()
    assert "n1" not in s.draining


def test_draining_flag_is_set_cleared_and_dropped_when_the_node_starts_again():
    s = members()
    assert s.apply(c.SetNodeDraining("n2")) == "draining"
    assert s.apply(c.SetNodeDraining("n2", True)) == "unchanged"
    assert s.draining == {"n2"}
    assert s.apply(c.SetNodeDraining("n2", False)) == "undrained"
    assert s.draining == set()
    assert err(s.apply(c.SetNodeDraining("n9"))).code == 404
    s.apply(c.SetNodeDraining("n3"))
    s.apply(c.NodeStarted("n2", only_member=False))
    assert s.draining == {"n3"}
    s.apply(c.NodeStarted("n3", only_member=False))
    assert s.draining == set()


def test_state_pickled_before_draining_existed_loads_with_defaults():
    import pickle

    s = members(c.DeclareQueue(V, "q", leader="n1"))
    del s.__dict__["draining"]
    del s.queue(V, "q").__dict__["handing_over"]
    restored = pickle.loads(pickle.dumps(s))
    assert restored.draining == set()
    assert restored.queue(V, "q").handing_over == ()
    assert restored.apply(c.SetNodeDraining("n1")) == "draining"


def test_placement_skips_draining_nodes():
    from merpati.cluster.membership import place_queue

    s = members(c.DeclareQueue(V, "a", leader="n2"), c.DeclareQueue(V, "b", leader="n3"))
    live = {"n1", "n2", "n3"}
    assert place_queue(s, live, "n2", False) == "n1"
    s.apply(c.SetNodeDraining("n1"))
    assert place_queue(s, live, "n1", False) == "n2"  # the least loaded that is not draining
    assert place_queue(s, live, "n1", True) == "n1"  # exclusive queues stay with their connection
    for n in ("n2", "n3"):
        s.apply(c.SetNodeDraining(n))
    assert place_queue(s, live, "n1", False) in live  # everyone draining: somewhere all the same


# --- determinism -----------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c"])
command = st.one_of(
    st.builds(c.AddVhost, st.sampled_from([V, "v2"])),
    st.builds(c.DeleteVhost, st.just("v2")),
    st.builds(
        c.DeclareExchange,
        st.just(V),
        NAMES,
        st.sampled_from(["direct", "fanout", "topic", "headers"]),
        st.booleans(),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(c.DeleteExchange, st.just(V), NAMES, st.booleans()),
    st.builds(
        c.DeclareQueue,
        st.just(V),
        NAMES,
        st.booleans(),
        st.sampled_from([None, "c1", "c2"]),
        st.booleans(),
        st.sampled_from([{}, {"x-max-length": 1}]),
        st.sampled_from(["n1", "n2"]),
    ),
    st.builds(c.DeleteQueue, st.just(V), NAMES),
    st.builds(
        c.MoveQueue, st.just(V), NAMES, st.sampled_from(["n1", "n2"]), st.sampled_from(["n1", "n2"])
    ),
    st.builds(
        c.QueueHandedOver,
        st.just(V),
        NAMES,
        st.sampled_from(["n1", "n2"]),
        st.sampled_from([-1, 0, 1, 2]),
    ),
    st.builds(c.NodeJoined, st.sampled_from(["n1", "n2"]), st.just("h:1"), st.just("h:2")),
    st.builds(c.SetNodeDraining, st.sampled_from(["n1", "n2"]), st.booleans()),
    st.builds(c.NodeLeft, st.sampled_from(["n1", "n2"])),
    st.builds(
        c.Bind,
        st.just(V),
        st.sampled_from(["a", "b", "c", "amq.topic", "amq.headers"]),
        st.sampled_from(["q", "e"]),
        NAMES,
        st.sampled_from(["", "k", "k.*", "#"]),
        st.sampled_from([{}, {"x-match": "any", "h": 1}]),
    ),
    st.builds(
        c.Unbind,
        st.just(V),
        st.sampled_from(["a", "b", "c", "amq.topic"]),
        st.sampled_from(["q", "e"]),
        NAMES,
        st.sampled_from(["", "k", "k.*", "#"]),
    ),
)


def snapshot(s: MetadataState):
    out = {}
    for vname, vh in s.vhosts.items():
        out[vname] = (
            {
                n: (x.type, x.durable, x.auto_delete, x.internal, sorted(map(repr, x.bindings)))
                for n, x in vh.exchanges.items()
            },
            {
                n: (
                    q.durable,
                    q.exclusive_owner,
                    q.auto_delete,
                    q.arguments,
                    q.leader,
                    q.handing_over,
                    q.moves,
                )
                for n, q in vh.queues.items()
            },
            {d: sorted(map(repr, ids)) for d, ids in vh.bindings_to.items()},
        )
    return out


def outcome(r):
    return ("error", r.code, r.text) if isinstance(r, MetadataError) else r


@settings(max_examples=150, deadline=None)
@given(st.lists(command, max_size=30))
def test_same_commands_give_the_same_results_and_state(cmds):
    a, b = MetadataState(), MetadataState()
    a.apply(c.AddVhost(V))
    b.apply(c.AddVhost(V))
    ra = [outcome(a.apply(cmd)) for cmd in cmds]
    rb = [outcome(b.apply(cmd)) for cmd in cmds]
    assert ra == rb
    assert snapshot(a) == snapshot(b)
    assert a.draining == b.draining and a.draining <= set(a.members)
    assert a.applied == b.applied == len(cmds) + 1
    # Invariant: bindings_to indexes exactly the bindings held by the exchanges.
    for vh in a.vhosts.values():
        held = {ident for x in vh.exchanges.values() for ident in x.bindings}
        indexed = {ident for ids in vh.bindings_to.values() for ident in ids}
        assert held == indexed
        for ident in held:
            kind, name = ident[1]
            assert name in (vh.queues if kind == "q" else vh.exchanges)


# --- replicated queues -----------------------------------------------------------------------


def quorum_queue(**kw) -> c.DeclareQueue:
    return c.DeclareQueue(
        V,
        "qq",
        True,
        arguments={"x-queue-type": "quorum"},
        leader="n1",
        replicas=("n1", "n2", "n3"),
        incarnation="i1",
        **kw,
    )


def test_a_replicated_queue_starts_in_epoch_1_and_changes_leader_by_election():
    s = fresh(quorum_queue())
    q = s.queue(V, "qq")
    assert (q.replicated, q.epoch, q.electing, q.leader) == (True, 1, 0, "n1")
    # The leader changes only for the next epoch, to one of the replicas.
    assert err(s.apply(c.QueueLeader(V, "qq", "i1", 3, "n2"))).code == 406
    assert err(s.apply(c.QueueLeader(V, "qq", "i1", 2, "n9"))).code == 406
    assert s.apply(c.QueueElection(V, "qq", "i1", 2)) == "electing"
    assert err(s.apply(c.QueueElection(V, "qq", "i1", 2))).code == 406  # one at a time
    assert s.apply(c.QueueLeader(V, "qq", "i1", 2, "n2")) == "leader"
    assert (q.epoch, q.electing, q.leader) == (2, 0, "n2")
    # A command for another incarnation of the same name is refused: the queue it meant is gone.
    assert err(s.apply(c.QueueElection(V, "qq", "other", 3))).code == 404
    # Replicated queues never move by MoveQueue (their replicas hold the messages already).
    assert err(s.apply(c.MoveQueue(V, "qq", "n2", "n3"))).code == 406


def test_replicas_change_one_node_at_a_time_and_never_drop_the_leader():
    s = fresh(quorum_queue())
    q = s.queue(V, "qq")
    assert s.apply(c.SetQueueReplicas(V, "qq", "i1", ("n1", "n2", "n3", "n4"))) == "replicas"
    assert q.replicas == ("n1", "n2", "n3", "n4")
    assert err(s.apply(c.SetQueueReplicas(V, "qq", "i1", ("n1", "n2")))).code == 406  # two
    assert err(s.apply(c.SetQueueReplicas(V, "qq", "i1", ("n2", "n3", "n4")))).code == 406
    assert s.apply(c.SetQueueReplicas(V, "qq", "i1", ("n1", "n3", "n4"))) == "replicas"
    s.apply(c.QueueElection(V, "qq", "i1", 2))
    assert err(s.apply(c.SetQueueReplicas(V, "qq", "i1", ("n1", "n3")))).code == 406  # electing


def test_a_vhost_keeps_its_metadata_and_a_bare_redeclare_leaves_it():
    s = MetadataState()
    assert s.apply(c.AddVhost("v", "orders", ("prod",), "quorum")) == "created"
    vh = s.vhosts["v"]
    assert (vh.description, vh.tags, vh.default_queue_type) == ("orders", ("prod",), "quorum")
    assert s.apply(c.AddVhost("v")) == "exists"  # a node's start declares it bare
    assert s.vhosts["v"].default_queue_type == "quorum"
    assert s.apply(c.AddVhost("v", default_queue_type="classic")) == "updated"
    assert s.vhosts["v"].description == "orders"
    refused = s.apply(c.AddVhost("w", default_queue_type="stream"))
    assert isinstance(refused, MetadataError) and refused.code == 406
    assert "not one of classic, quorum" in refused.text
    assert "w" not in s.vhosts


def test_a_log_feature_is_supported_once_every_member_started_with_it() -> None:
    s = MetadataState()
    assert not s.supports(c.BARRIER)  # no members known: nothing is promised
    s.apply(c.NodeJoined("n1", "h1:25672", "h1:25673"))
    s.apply(c.NodeJoined("n2", "h2:25672", "h2:25673"))
    s.apply(c.NodeStarted("n1", only_member=False, features=c.FEATURES))
    assert not s.supports(c.BARRIER)  # n2 runs a version that did not say it
    s.apply(c.NodeStarted("n2", only_member=False))
    assert not s.supports(c.BARRIER)
    s.apply(c.NodeStarted("n2", only_member=False, features=c.FEATURES))
    assert s.supports(c.BARRIER)
    s.apply(c.NodeJoined("n3", "h3:25672", "h3:25673"))
    assert not s.supports(c.BARRIER)
    s.apply(c.NodeLeft("n3"))
    assert s.supports(c.BARRIER)
    assert s.apply(c.Barrier()) is None
