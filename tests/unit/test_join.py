"""cluster.join.ask_to_join: which answers mean joined, forming, ask again, or refused."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from merpati.cluster import join
from merpati.cluster.membership import Member, PeersError
from merpati.proto.merpati.v1 import membership_pb2 as pb

ME = Member("n4", "127.0.0.1", 25700, 25701)
N1 = Member("n1", "127.0.0.1", 25670, 25671)
N2 = Member("n2", "127.0.0.1", 25680, 25681)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def members(*ms: Member) -> pb.JoinResponse:
    return pb.JoinResponse(
        result="joined",
        members=[
            pb.Member(
                node_id=m.node_id, cluster_address=m.cluster_address, raft_address=m.raft_address
            )
            for m in ms
        ],
    )


def asking(answers: dict[str, list]) -> tuple[list[str], object]:
    """A fake `ask`: each peer's answers in turn (an exception is raised)."""
    asked: list[str] = []

    async def ask(me: Member, other: Member, secret: str | None) -> pb.JoinResponse:
        asked.append(other.node_id)
        answer = answers[other.node_id].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return asked, ask


def run(coro):
    return asyncio.run(coro)


def test_the_first_running_member_adds_it_and_its_answer_is_the_membership():
    asked, ask = asking(
        {
            "n1": [rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")],
            "n2": [members(N1, N2, ME)],
        }
    )
    got = run(join.ask_to_join(ME, [N1, N2], "s", ask=ask))
    assert [m.node_id for m in got] == ["n1", "n2", "n4"]
    assert got[1] == N2 and asked == ["n1", "n2"]


def test_nobody_running_a_cluster_means_it_is_forming():
    _asked, ask = asking(
        {
            "n1": [rpc_error(grpc.StatusCode.UNAVAILABLE, "not formed: node n1 is not ...")],
            "n2": [rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")],
        }
    )
    assert run(join.ask_to_join(ME, [N1, N2], "s", ask=ask)) is None


def test_a_busy_member_is_asked_again(monkeypatch):
    monkeypatch.setattr(join, "RETRY_EVERY", 0.0)
    asked, ask = asking(
        {
            "n1": [rpc_error(grpc.StatusCode.ABORTED, "another node is joining"), members(N1, ME)],
        }
    )
    got = run(join.ask_to_join(ME, [N1], "s", ask=ask))
    assert asked == ["n1", "n1"] and {m.node_id for m in got} == {"n1", "n4"}


@pytest.mark.parametrize(
    "code,text",
    [
        (grpc.StatusCode.UNAUTHENTICATED, "cluster secret"),
        (grpc.StatusCode.ALREADY_EXISTS, "is a member at"),
    ],
)
def test_a_refusal_for_good_stops_the_node_saying_why(code, text):
    _asked, ask = asking({"n1": [rpc_error(code, "node id 'n4' is a member at 10.0.0.9:1")]})
    with pytest.raises(PeersError, match=text):
        run(join.ask_to_join(ME, [N1], "s", ask=ask))


def test_an_answer_without_this_node_is_refused():
    _asked, ask = asking({"n1": [members(N1)]})
    with pytest.raises(PeersError, match="without this node"):
        run(join.ask_to_join(ME, [N1], "s", ask=ask))
