"""Joining by itself: a node that never ran Raft here asks the cluster to add it; and the other
end of membership, a node asked to give up the Raft leadership before it is removed.

A StatefulSet scaled from 3 to 5 pods starts two nodes the cluster does not know; so does an
operator who starts a fourth node with `--peers` naming the three and itself. Such a node (its data
directory holds no Raft state) asks the peers it was given or found in DNS, one after the other,
to add it (`ask_to_join`, the Membership service of proto/merpati/v1/membership.proto,
authenticated by the cluster secret as every call between nodes), before it starts Raft. The node
asked adds it to Raft and names it in the metadata (ClusterNode.join, as `merpati ctl add_node`
does) and answers with every member: those, not what DNS or --peers show, become the new node's
Raft partners, so a node never starts Raft with members the cluster does not have.

When none of the peers is part of a running cluster (they answer that they are forming it, or do
not answer), the cluster is being formed: the node forms it with them, as before
(`--peers-expected`). A node that is a member already (formed with the others, then lost its
disk) gets "member" and goes on.

Removing a node is a Raft membership change the leader commits, and pysyncobj's leader refuses to
remove itself: the member removing a node that leads asks it to step down (`ask_to_step_down`,
Membership.StepDown) and tries again under the new leader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from merpati.proto.merpati.v1 import membership_pb2 as pb
from merpati.proto.merpati.v1 import membership_pb2_grpc as pb_grpc

from .forwarding._common import AUTH_KEY, NODE_KEY, SECURITY, auth_token
from .membership import Member, PeersError

log = logging.getLogger("merpati.cluster")

ASK_TIMEOUT = 5.0  # a node asked answers within 4 s ("ask again" if adding takes longer)
RETRY_EVERY = 1.0


class NotFormed(Exception):
    """The node asked is not part of a running cluster (yet)."""


class Busy(Exception):
    """Another membership change is under way: ask again."""


class Conflict(Exception):
    """The node id is a member at another address."""


def member_of(m: pb.Member) -> Member:
    host, _, port = m.cluster_address.rpartition(":")
    raft_port = int(m.raft_address.rpartition(":")[2])
    return Member(m.node_id, host, int(port), raft_port)


class JoinServicer(pb_grpc.MembershipServicer):
    """Served on the cluster port beside forwarding: `join(node id, address)` does the work."""

    def __init__(
        self,
        join: Callable[[str, str], Awaitable[tuple[str, list[Member]]]],
        caller: Any,
        step_down: Callable[[], Awaitable[bool]],
    ) -> None:
        self.join = join
        self.caller = caller  # async (context) -> calling node id (aborts when unauthenticated)
        self.step_down = step_down

    def register(self, server: Any) -> None:
        pb_grpc.add_MembershipServicer_to_server(self, server)

    async def Join(self, request: pb.JoinRequest, context: Any) -> pb.JoinResponse:  # noqa: N802
        await self.caller(context)
        try:
            result, members = await self.join(request.node_id, request.cluster_address)
        except NotFormed as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not formed: {e}")
        except Busy as e:
            await context.abort(grpc.StatusCode.ABORTED, str(e))
        except Conflict as e:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
        return pb.JoinResponse(
            result=result,
            members=[
                pb.Member(
                    node_id=m.node_id,
                    cluster_address=m.cluster_address,
                    raft_address=m.raft_address,
                )
                for m in members
            ],
        )

    async def StepDown(  # noqa: N802
        self, request: pb.StepDownRequest, context: Any
    ) -> pb.StepDownResponse:
        caller = await self.caller(context)
        handed_over = await self.step_down()
        log.info(
            "asked by %s to give up the Raft leadership: %s",
            caller,
            "handed over" if handed_over else "not leading (or no follower caught up)",
        )
        return pb.StepDownResponse(handed_over=handed_over)


def _metadata(me: Member, secret: str | None) -> tuple[tuple[str, str], ...]:
    metadata: tuple[tuple[str, str], ...] = ((NODE_KEY, me.node_id),)
    token = auth_token(secret)
    if token:
        metadata += ((AUTH_KEY, token),)
    return metadata


async def ask_to_step_down(me: Member, other: Member, secret: str | None) -> bool:
    """Ask `other` to give up the Raft leadership; whether it did (False also when it does not
    answer: the caller looks at who leads and asks again)."""
    try:
        async with SECURITY.channel(other.cluster_address) as ch:
            stub = pb_grpc.MembershipStub(ch)
            resp = await stub.StepDown(
                pb.StepDownRequest(), metadata=_metadata(me, secret), timeout=ASK_TIMEOUT
            )
    except grpc.aio.AioRpcError as e:
        log.info("node %s did not step down: %s", other.node_id, e.details())
        return False
    return resp.handed_over


async def _ask(me: Member, other: Member, secret: str | None) -> pb.JoinResponse:
    async with SECURITY.channel(other.cluster_address) as ch:
        stub = pb_grpc.MembershipStub(ch)
        req = pb.JoinRequest(node_id=me.node_id, cluster_address=me.cluster_address)
        return await stub.Join(req, metadata=_metadata(me, secret), timeout=ASK_TIMEOUT)


async def ask_to_join(
    me: Member, others: list[Member], secret: str | None, ask: Any = _ask
) -> list[Member] | None:
    """The cluster's members once one of `others` added this node (or said it is one), or None
    when none of them is part of a running cluster: it is forming, form it with them. Raises
    PeersError when a node refuses for good (wrong secret, the node id taken)."""
    while True:
        busy = []
        for other in others:
            try:
                resp = await ask(me, other, secret)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.ABORTED:
                    busy.append(other.node_id)
                elif code == grpc.StatusCode.UNAUTHENTICATED:
                    raise PeersError(
                        f"node {other.node_id} refused this node: {e.details()} "
                        "(is the cluster secret the same?)"
                    )
                elif code == grpc.StatusCode.ALREADY_EXISTS:
                    raise PeersError(f"node {other.node_id} refused this node: {e.details()}")
                # UNAVAILABLE (not reachable, or still forming), a deadline: the next one.
                continue
            members = [member_of(m) for m in resp.members]
            if not any(m.node_id == me.node_id for m in members):
                raise PeersError(f"node {other.node_id} answered without this node")
            log.info(
                "%s the cluster through %s: %s",
                "joined" if resp.result == "joined" else "already a member of",
                other.node_id,
                ", ".join(m.node_id for m in members),
            )
            return members
        if not busy:
            return None
        log.info("asking again to join: %s busy with another member", ", ".join(busy))
        await asyncio.sleep(RETRY_EVERY)
