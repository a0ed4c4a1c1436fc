"""The --peers forms and the wait for members in DNS (cluster/membership.py)."""

from __future__ import annotations

import logging
import socket
from unittest import mock

import pytest

from merpati.cluster.membership import PeersError, parse_peers, wait_for_members

SERVICE = "merpati-headless.mq.svc.cluster.local"


class FakeDns:
    """A headless service whose pods get addresses one lookup at a time (pods leaving Pending)."""

    def __init__(self, pods_per_lookup: list[int]) -> None:
        self.pods_per_lookup = pods_per_lookup
        self.lookups = 0

    def getaddrinfo(self, host: str, port: int, *args: object, **kw: object) -> list:
        assert host == SERVICE
        n = self.pods_per_lookup[min(self.lookups, len(self.pods_per_lookup) - 1)]
        self.lookups += 1
        if n == 0:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(2, 1, 6, "", (f"10.0.0.{i + 1}", port)) for i in range(n)]

    def gethostbyaddr(self, ip: str) -> tuple:
        i = int(ip.rsplit(".", 1)[1]) - 1
        return (f"merpati-{i}.{SERVICE}", [], [ip])

    def __enter__(self) -> FakeDns:
        self._patches = [
            mock.patch("socket.getaddrinfo", self.getaddrinfo),
            mock.patch("socket.gethostbyaddr", self.gethostbyaddr),
        ]
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self._patches:
            p.stop()


def test_dns_form_names_members_by_their_pod_names() -> None:
    with FakeDns([3]):
        members = parse_peers(f"dns:{SERVICE}:25672", 1)
    assert [(m.node_id, m.cluster_port, m.raft_port) for m in members] == [
        ("merpati-0", 25672, 25673),
        ("merpati-1", 25672, 25673),
        ("merpati-2", 25672, 25673),
    ]
    assert members[0].host == f"merpati-0.{SERVICE}"


def test_waits_until_the_expected_members_resolve(caplog: pytest.LogCaptureFixture) -> None:
    # A pod started beside others still Pending must not form a cluster of its own.
    slept: list[float] = []
    log = logging.getLogger("test.membership")
    with FakeDns([0, 1, 1, 2, 3]) as dns, caplog.at_level(logging.WARNING):
        members = wait_for_members(
            f"dns:{SERVICE}:25672", 1, 3, log=log, sleep=slept.append, say_every=0
        )
    assert [m.node_id for m in members] == ["merpati-0", "merpati-1", "merpati-2"]
    assert dns.lookups == 5 and len(slept) == 4
    said = [r.getMessage() for r in caplog.records]
    assert "0 of 3 seen (none); peers dns:" in said[0] and "cannot resolve" in said[0]
    assert (
        said[-1] == "waiting for the cluster's members in DNS: 2 of 3 seen (merpati-0, merpati-1)"
    )


def test_no_wait_without_an_expected_count_or_with_the_list_form() -> None:
    with FakeDns([1]) as dns:
        assert len(wait_for_members(f"dns:{SERVICE}:25672", 1, 0, sleep=pytest.fail)) == 1
        assert dns.lookups == 1
    members = wait_for_members("a=h1:1000,b=h2:1000", 1, 5, sleep=pytest.fail)
    assert [m.node_id for m in members] == ["a", "b"]


def test_list_form_errors_are_not_waited_on() -> None:
    with pytest.raises(PeersError, match="expected node-id=host:cluster-port"):
        wait_for_members("a=h1", 1, 3, sleep=pytest.fail)


def _cfg(tmp_path, **kw):  # noqa: ANN001, ANN202
    from merpati.node.config import Config

    return Config(
        node_id="merpati-0",
        peers=f"dns:{SERVICE}:25672",
        peers_expected=3,
        data_dir=str(tmp_path),
        cluster_secret="s3cret",
        **kw,
    )


def test_a_restarted_node_starts_from_the_members_it_knew(tmp_path) -> None:  # noqa: ANN001
    from merpati.cluster.cluster_node import ClusterNode

    with FakeDns([3]):
        plan = ClusterNode.from_config(_cfg(tmp_path))
    plan._save_members()  # done when its metadata log is created
    assert sorted(plan.membership.members) == ["merpati-0", "merpati-1", "merpati-2"]
    # Next start: merpati-2 is Pending (no address) and DNS fails for a moment first. The node
    # need not wait for it: it knows it, and pysyncobj retries a name until it resolves.
    with mock.patch("time.sleep", side_effect=AssertionError("waited")), FakeDns([2]):
        again = ClusterNode.from_config(_cfg(tmp_path))
    assert again.membership.members == plan.membership.members
    with mock.patch("time.sleep", side_effect=AssertionError("waited")), FakeDns([0]):
        assert ClusterNode.from_config(_cfg(tmp_path)).membership.members == plan.membership.members


def test_a_known_node_starts_from_its_members_not_from_dns_and_membership_changes_are_kept(
    tmp_path,  # noqa: ANN001
) -> None:
    from merpati.cluster.cluster_node import ClusterNode
    from merpati.cluster.membership import Member, MembersFile
    from merpati.node.metadata.commands import NodeJoined, NodeLeft

    with FakeDns([3]):
        first = ClusterNode.from_config(_cfg(tmp_path))
        first._save_members()
    assert first.new_here  # never ran Raft: it asks to join before starting it
    (tmp_path / "raft").mkdir()
    (tmp_path / "raft" / "journal").write_bytes(b"x")
    with FakeDns([4]):  # scaled up: merpati-3 appears, but is no member until it joins
        plan = ClusterNode.from_config(_cfg(tmp_path))
    assert not plan.new_here
    assert sorted(plan.membership.members) == [f"merpati-{i}" for i in range(3)]
    plan.membership_changed(
        NodeJoined("merpati-3", "merpati-3.h:25672", "merpati-3.h:25673"), "joined"
    )
    assert [m.node_id for m in MembersFile(tmp_path).load()] == [f"merpati-{i}" for i in range(4)]
    plan.membership_changed(NodeLeft("merpati-3"), "left")
    assert [m.node_id for m in MembersFile(tmp_path).load()] == [f"merpati-{i}" for i in range(3)]
    # A node that joined takes the members its cluster answered with.
    plan.membership.replace([*plan.membership.members.values(), Member("x", "h", 1, 2)])
    assert "x" in {m.node_id for m in plan.membership.others}
    assert plan.membership.me.node_id not in {m.node_id for m in plan.membership.others}


def test_a_corrupt_members_file_is_refused_naming_it(tmp_path) -> None:  # noqa: ANN001
    from merpati.cluster.cluster_node import ClusterNode

    (tmp_path / "cluster-members.json").write_text("{not json")
    with pytest.raises(PeersError, match="cluster-members.json is unreadable"), FakeDns([3]):
        ClusterNode.from_config(_cfg(tmp_path))


def test_the_list_form_keeps_no_members_file(tmp_path) -> None:  # noqa: ANN001
    from merpati.cluster.cluster_node import ClusterNode

    cfg = _cfg(tmp_path)
    cfg.peers = "merpati-0=127.0.0.1:25672,merpati-1=127.0.0.1:25682"
    plan = ClusterNode.from_config(cfg)
    plan._save_members()
    assert not (tmp_path / "cluster-members.json").exists()
