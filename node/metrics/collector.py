"""Prometheus families built at scrape time from the node's counters and live state.

Three views, as RabbitMQ's Prometheus plugin has them:

* aggregated (`/metrics`): one sample per metric for the whole node, no object labels;
* per-object (`/metrics/per-object`): the same names, queue metrics labelled `vhost`, `queue`;
* detailed (`/metrics/detailed?family=...&vhost=...`): `rabbitmq_detailed_*` names, only the
  families asked for (queue_coarse_metrics, queue_consumer_count, queue_metrics, ...).

Merpati's own metrics (`merpati_*`): the metadata log (Raft term, leader, commit index, commit
latency as the proposer sees it) and the message store (commit latency, rows per commit). The
cluster's forwarding metrics will join them here when forwarding exists (issue 4).

Everything runs on the event-loop thread during a scrape: reading the broker's structures there
needs no locks, and the hot path pays nothing between scrapes.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .. import __version__
from ..core.alarms import DISK, MEMORY
from ..memory_monitor import physical_memory, resident_memory
from ..metadata import commands as cmds
from .counters import Histogram

if TYPE_CHECKING:
    from ..server import Node

# (counter attribute, RabbitMQ name without the _total suffix, help)
CHANNEL_COUNTERS = (
    ("published", "rabbitmq_channel_messages_published", "Messages published into the broker"),
    ("confirmed", "rabbitmq_channel_messages_confirmed", "Messages confirmed to publishers"),
    (
        "unroutable_dropped",
        "rabbitmq_channel_messages_unroutable_dropped",
        "Messages published as non-mandatory that were unroutable and dropped",
    ),
    (
        "unroutable_returned",
        "rabbitmq_channel_messages_unroutable_returned",
        "Messages published as mandatory that were unroutable and returned",
    ),
    (
        "delivered_ack",
        "rabbitmq_channel_messages_delivered_ack",
        "Messages delivered to consumers in manual acknowledgement mode",
    ),
    (
        "delivered_autoack",
        "rabbitmq_channel_messages_delivered",
        "Messages delivered to consumers in automatic acknowledgement mode",
    ),
    ("redelivered", "rabbitmq_channel_messages_redelivered", "Messages redelivered to consumers"),
    ("acked", "rabbitmq_channel_messages_acked", "Messages acknowledged by consumers"),
    ("get_ack", "rabbitmq_channel_get_ack", "Messages fetched with basic.get in manual ack mode"),
    ("get_autoack", "rabbitmq_channel_get", "Messages fetched with basic.get in auto ack mode"),
    ("get_empty", "rabbitmq_channel_get_empty", "Times basic.get found its queue empty"),
)

DETAILED_FAMILIES = (
    "queue_coarse_metrics",
    "queue_consumer_count",
    "queue_metrics",
    "connection_coarse_metrics",
    "channel_queue_metrics",
    "vhost_status",
    "exchange_names",
    "queue_info",
)


class QueueChurn:
    """Queue declarations/creations/deletions, counted from the metadata log (RabbitMQ's churn)."""

    def __init__(self) -> None:
        self.declared = 0
        self.created = 0
        self.deleted = 0

    def on_applied(self, cmd: Any, result: Any) -> None:
        if isinstance(cmd, cmds.DeclareQueue):
            self.declared += 1
            if result == "created":
                self.created += 1
        elif isinstance(cmd, cmds.DeleteQueue) and result == "deleted":
            self.deleted += 1


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.buckets(), sum_value=h.sum)


def _counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    if labels:
        fam = CounterMetricFamily(name, doc, labels=list(labels))
        fam.add_metric(list(labels.values()), value)
        return fam
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def memory_limit(node: Any) -> int:
    """The node's memory high watermark in bytes (as set at run time, else as configured)."""
    monitor = getattr(node, "memory_monitor", None)
    if monitor is not None:
        return int(monitor.limit_bytes)
    return int(node.config.memory_high_watermark * physical_memory())


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def disk_free(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


class NodeCollector:
    """A prometheus-client collector over one running `Node` (see the module docstring)."""

    def __init__(self, node: Node, mode: str = "aggregated") -> None:
        self.node = node
        self.mode = mode  # aggregated | per-object

    def describe(self) -> Iterable[Metric]:
        return []  # families vary with the node's objects: nothing to pre-register

    # -- scrape -------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        node = self.node
        broker = node.broker
        if broker is None:
            return
        yield from self._identity()
        yield from self._objects()
        yield from self._channel_counters()
        yield from self._queues(per_object=self.mode == "per-object")
        yield from self._process()
        yield from self._raft()
        yield from self._store()
        yield from self._forwarding()
        yield from self._replication()

    def _identity(self) -> Iterator[Metric]:
        node = self.node
        info = GaugeMetricFamily(
            "rabbitmq_identity_info",
            "RabbitMQ node & cluster identity info",
            labels=["rabbitmq_node", "rabbitmq_cluster", "rabbitmq_cluster_permanent_id"],
        )
        info.add_metric([node.node_id, node.cluster_name, node.cluster_id], 1)
        yield info
        build = GaugeMetricFamily(
            "rabbitmq_build_info",
            "RabbitMQ & Erlang/OTP version info",
            labels=[
                "rabbitmq_version",
                "prometheus_plugin_version",
                "prometheus_client_version",
                "erlang_version",
                "product",
            ],
        )
        build.add_metric(
            [__version__, __version__, "python", platform.python_version(), "merpati"], 1
        )
        yield build

    def _objects(self) -> Iterator[Metric]:
        broker = self.node.broker
        c = broker.counters
        conns = list(broker.connections)
        channels = [
            ch for conn in conns for ch in getattr(conn, "channels", {}).values() if ch.is_open
        ]
        # AMQP 1.0 sessions count as channels, as in RabbitMQ.
        nchannels = len(channels) + sum(
            len(getattr(conn, "sessions", ())) for conn in conns if not hasattr(conn, "channels")
        )
        consumers = sum(len(ch.consumers) for ch in channels)
        # Queues this node leads, as RabbitMQ counts queues per node (dashboards sum over nodes).
        nqueues = sum(
            1
            for vh in broker.state.vhosts.values()
            for q in vh.queues.values()
            if q.leader == broker.node_id
        )
        yield _gauge("rabbitmq_connections", "Connections currently open", len(conns))
        yield _gauge("rabbitmq_channels", "Channels currently open", nchannels)
        yield _gauge("rabbitmq_consumers", "Consumers currently connected", consumers)
        yield _gauge("rabbitmq_queues", "Queues available", nqueues)
        yield _counter(
            "rabbitmq_connections_opened",
            "Total number of connections opened",
            c.connections_opened,
        )
        yield _counter(
            "rabbitmq_connections_closed",
            "Total number of connections closed or terminated",
            max(0, c.connections_opened - len(conns)),
        )
        yield _counter(
            "rabbitmq_channels_opened", "Total number of channels opened", c.channels_opened
        )
        yield _counter(
            "rabbitmq_channels_closed",
            "Total number of channels closed",
            max(0, c.channels_opened - nchannels),
        )
        churn = self.node.queue_churn
        if churn is not None:
            yield _counter(
                "rabbitmq_queues_declared", "Total number of queues declared", churn.declared
            )
            yield _counter(
                "rabbitmq_queues_created", "Total number of queues created", churn.created
            )
            yield _counter(
                "rabbitmq_queues_deleted", "Total number of queues deleted", churn.deleted
            )
        yield _gauge("rabbitmq_channel_consumers", "Consumers on a channel", consumers)
        yield _gauge(
            "rabbitmq_channel_messages_unacked",
            "Delivered but not yet acknowledged messages",
            sum(len(ch.unacked) for ch in channels),
        )
        yield _gauge(
            "rabbitmq_channel_messages_unconfirmed",
            "Published but not yet confirmed messages",
            sum(len(ch.pending) for ch in channels),
        )

    def _channel_counters(self) -> Iterator[Metric]:
        c = self.node.broker.counters
        for attr, name, doc in CHANNEL_COUNTERS:
            yield _counter(name, doc, getattr(c, attr))

    def _queues(self, per_object: bool) -> Iterator[Metric]:
        broker = self.node.broker
        names = (
            ("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers"),
            (
                "rabbitmq_queue_messages_unacked",
                "Messages delivered to consumers but not yet acknowledged",
            ),
            (
                "rabbitmq_queue_messages",
                "Sum of ready and unacknowledged messages - total queue depth",
            ),
            ("rabbitmq_queue_consumers", "Consumers on a queue"),
        )
        rows = list(queue_rows(broker))
        labels = ["vhost", "queue"] if per_object else []
        fams = [GaugeMetricFamily(n, d, labels=labels) for n, d in names]
        if per_object:
            for vhost, name, ready, unacked, consumers in rows:
                for fam, v in zip(fams, (ready, unacked, ready + unacked, consumers), strict=True):
                    fam.add_metric([vhost, name], v)
        else:
            ready = sum(r[2] for r in rows)
            unacked = sum(r[3] for r in rows)
            consumers = sum(r[4] for r in rows)
            for fam, v in zip(fams, (ready, unacked, ready + unacked, consumers), strict=True):
                fam.add_metric([], v)
        yield from fams

    def _process(self) -> Iterator[Metric]:
        node = self.node
        rss = resident_memory()
        limit = memory_limit(node)
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        yield _gauge("rabbitmq_process_resident_memory_bytes", "Memory used in bytes", rss)
        yield _gauge(
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            int(limit),
        )
        yield _gauge("rabbitmq_process_open_fds", "Open file descriptors", open_fds())
        yield _gauge("rabbitmq_process_max_fds", "Open file descriptors limit", soft)
        yield _gauge(
            "rabbitmq_process_open_tcp_sockets",
            "Open TCP sockets",
            len(node.broker.connections),
        )
        monitor = node.disk_monitor
        free = monitor.free if monitor is not None else None
        yield _gauge(
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes",
            free if free is not None else disk_free(node.config.data_dir),
        )
        yield _gauge(
            "rabbitmq_disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            monitor.limit_bytes if monitor is not None else 0,
        )
        # This node's own alarms, as RabbitMQ's exporter reports its local ones: each node's
        # series says which node raised an alarm (every node blocks its publishers for it).
        local = node.broker.alarms.local
        yield _gauge(
            "rabbitmq_alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            1 if MEMORY in local else 0,
        )
        yield _gauge(
            "rabbitmq_alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            1 if DISK in local else 0,
        )
        # Merpati has no file descriptor alarm; the family exists so dashboards show 0.
        yield _gauge(
            "rabbitmq_alarms_file_descriptor_limit",
            "is 1 if file descriptor limit alarm is in effect",
            0,
        )
        yield _gauge(
            "rabbitmq_erlang_uptime_seconds",
            "Node uptime",
            max(0.0, _now() - node.broker.counters.started_at),
        )
        budget = node.broker.budget
        if budget is not None:
            yield _gauge(
                "merpati_message_memory_bytes",
                "Bytes of message data held in memory (paged to the store beyond the budget)",
                budget.used,
            )
            yield _gauge(
                "merpati_message_memory_budget_bytes",
                "Bytes of message data kept in memory before queues page out",
                budget.limit,
            )

    def _raft(self) -> Iterator[Metric]:
        broker = self.node.broker
        c = broker.counters
        yield _histogram(
            "merpati_metadata_commit_seconds",
            "Time from proposing a metadata command to its being applied on this node (Raft commit)",
            c.propose_latency,
        )
        yield _counter(
            "merpati_metadata_proposals", "Metadata commands proposed by this node", c.proposals
        )
        yield _counter(
            "merpati_metadata_proposal_failures",
            "Metadata commands that failed (rejected by the state machine or by Raft)",
            c.proposal_failures,
        )
        yield _gauge(
            "merpati_metadata_applied_commands",
            "Metadata commands applied to this node's state",
            broker.state.applied,
        )
        status_fn = getattr(broker.metadata, "status", None)
        if status_fn is None:
            return
        st = status_fn() or {}
        self_addr = str(st.get("self") or "")
        leader = st.get("leader")
        yield _gauge("merpati_raft_term", "Current Raft term", st.get("raft_term") or 0)
        yield _gauge("merpati_raft_commit_index", "Raft commit index", st.get("commit_idx") or 0)
        yield _gauge(
            "merpati_raft_last_applied", "Last Raft log index applied", st.get("last_applied") or 0
        )
        yield _gauge("merpati_raft_log_entries", "Entries in the Raft log", st.get("log_len") or 0)
        yield _gauge(
            "merpati_raft_is_leader",
            "1 if this node is the Raft (metadata) leader",
            1 if leader is not None and str(leader) == self_addr else 0,
        )
        yield _gauge(
            "merpati_raft_has_quorum",
            "1 if this node sees a Raft majority (a leader it can reach)",
            1 if st.get("has_quorum") else 0,
        )
        yield _gauge(
            "merpati_raft_members",
            "Raft cluster members, this node included",
            1 + int(st.get("partner_nodes_count") or 0),
        )
        info = GaugeMetricFamily(
            "merpati_raft_leader_info", "The current Raft leader (1)", labels=["leader"]
        )
        info.add_metric([str(leader or "")], 1)
        yield info

    def _store(self) -> Iterator[Metric]:
        store = self.node.store
        if store is None:
            return
        yield _histogram(
            "merpati_store_commit_seconds",
            "Message store commit (one SQLite transaction) latency",
            store.commit_latency,
        )
        yield _histogram(
            "merpati_store_commit_rows",
            "Rows written per message store commit (group commit batch size)",
            store.commit_rows,
        )
        yield _counter("merpati_store_commits", "Message store commits", store.commits)
        yield _counter(
            "merpati_store_rows_written",
            "Rows inserted or deleted by commits",
            store.committed_rows,
        )
        try:
            size = os.path.getsize(store.path)
        except OSError:
            size = 0
        yield _gauge("merpati_store_size_bytes", "Size of the message store file", size)

    def _forwarding(self) -> Iterator[Metric]:
        """Messages between nodes (cluster.forwarding): what this node sent and received."""
        plan = getattr(self.node, "cluster", None)
        fwd = getattr(plan, "forwarding", None) if plan is not None else None
        if fwd is None:
            return
        server = fwd.server.counters
        yield _counter(
            "merpati_forwarding_received_batches",
            "Publish batches received from other nodes",
            server.publish_batches,
        )
        yield _counter(
            "merpati_forwarding_received_messages",
            "Messages received from other nodes",
            server.publish_messages,
        )
        yield _counter(
            "merpati_forwarding_received_bytes",
            "Message body bytes received from other nodes",
            server.publish_bytes,
        )
        yield _counter(
            "merpati_forwarding_deliveries_sent",
            "Deliveries streamed to consumers on other nodes",
            server.deliveries,
        )
        sent = CounterMetricFamily(
            "merpati_forwarding_sent_messages",
            "Messages forwarded to another node",
            labels=["peer"],
        )
        writes = CounterMetricFamily(
            "merpati_forwarding_sent_batches",
            "Publish batches (gRPC writes) to another node",
            labels=["peer"],
        )
        up = GaugeMetricFamily(
            "merpati_forwarding_peer_up", "Whether the link to a node is up", labels=["peer"]
        )
        inflight = GaugeMetricFamily(
            "merpati_forwarding_unconfirmed",
            "Forwarded messages awaiting the other node's confirm",
            labels=["peer"],
        )
        for node_id, peer in fwd.peers.items():
            sent.add_metric([node_id], getattr(peer, "messages_sent", 0))
            writes.add_metric([node_id], getattr(peer, "writes", 0))
            up.add_metric([node_id], 1 if getattr(peer, "state", "") == "up" else 0)
            inflight.add_metric([node_id], len(getattr(peer, "_inflight", ())))
        yield sent
        yield writes
        yield up
        yield inflight

    def _replication(self) -> Iterator[Metric]:
        """Quorum queues this node leads: replicas, how many hold every committed entry, each
        follower's lag (entries it does not hold yet), and the elections run from here."""
        plan = getattr(self.node, "cluster", None)
        replicated = getattr(plan, "replicated", None) if plan is not None else None
        if replicated is None:
            return
        labels = ["vhost", "queue"]
        replicas = GaugeMetricFamily(
            "merpati_quorum_queue_replicas", "Replicas of a quorum queue led here", labels=labels
        )
        in_sync = GaugeMetricFamily(
            "merpati_quorum_queue_replicas_in_sync",
            "Replicas holding every committed entry of a quorum queue led here (leader included)",
            labels=labels,
        )
        epoch = GaugeMetricFamily(
            "merpati_quorum_queue_epoch", "Leader epoch of a quorum queue led here", labels=labels
        )
        lag = GaugeMetricFamily(
            "merpati_quorum_queue_follower_lag",
            "Log entries a follower of a quorum queue led here does not hold yet",
            labels=[*labels, "replica"],
        )
        for (vhost, name, _inc), member in list(replicated.links.members.items()):
            r = member.replica
            if not r.leads:
                continue
            replicas.add_metric([vhost, name], len(member.replicas))
            in_sync.add_metric([vhost, name], 1 + sum(1 for m in r.match.values() if m >= r.commit))
            epoch.add_metric([vhost, name], r.epoch)
            for follower, match in r.match.items():
                lag.add_metric([vhost, name, follower], max(0, r.log.end - match))
        yield replicas
        yield in_sync
        yield epoch
        yield lag
        yield _counter(
            "merpati_quorum_leader_elections",
            "Quorum queue leaders named by this node as the controller",
            replicated.controller.elections,
        )


def queue_rows(broker: Any) -> Iterator[tuple[str, str, int, int, int]]:
    """(vhost, name, ready, unacked, consumers) of every queue this node leads."""
    for vhost, vh in broker.state.vhosts.items():
        local = broker.queues.get(vhost, {})
        for name in vh.queues:
            # Each node exports the queues it leads (as RabbitMQ's nodes export the queues they
            # host), so summing over a cluster's nodes counts every queue once.
            q = local.get(name)
            if q is None or not q.led_here:
                continue
            yield vhost, name, q.message_count, q.unacked, q.consumer_count


class DetailedCollector:
    """`/metrics/detailed`: only the families (and vhosts) the scraper asked for."""

    def __init__(self, node: Node, families: list[str], vhosts: list[str]) -> None:
        self.node = node
        self.families = families
        self.vhosts = set(vhosts)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        broker = self.node.broker
        if broker is None:
            return
        fams = set(self.families)
        rows = [r for r in queue_rows(broker) if not self.vhosts or r[0] in self.vhosts]
        lab = ["vhost", "queue"]
        if "queue_coarse_metrics" in fams:
            ready = GaugeMetricFamily(
                "rabbitmq_detailed_queue_messages_ready",
                "Messages ready to be delivered to consumers",
                labels=lab,
            )
            unacked = GaugeMetricFamily(
                "rabbitmq_detailed_queue_messages_unacked",
                "Messages delivered to consumers but not yet acknowledged",
                labels=lab,
            )
            total = GaugeMetricFamily(
                "rabbitmq_detailed_queue_messages",
                "Sum of ready and unacknowledged messages",
                labels=lab,
            )
            for vhost, name, r, u, _c in rows:
                ready.add_metric([vhost, name], r)
                unacked.add_metric([vhost, name], u)
                total.add_metric([vhost, name], r + u)
            yield from (ready, unacked, total)
        if "queue_consumer_count" in fams or "queue_metrics" in fams:
            consumers = GaugeMetricFamily(
                "rabbitmq_detailed_queue_consumers", "Consumers on a queue", labels=lab
            )
            for vhost, name, _r, _u, c in rows:
                consumers.add_metric([vhost, name], c)
            yield consumers
        if "queue_info" in fams:
            info = GaugeMetricFamily(
                "rabbitmq_detailed_queue_info",
                "Queue information",
                labels=["vhost", "queue", "queue_type", "membership", "durable"],
            )
            for vhost, vh in broker.state.vhosts.items():
                if self.vhosts and vhost not in self.vhosts:
                    continue
                for name, qdef in vh.queues.items():
                    info.add_metric(
                        [vhost, name, "classic", "leader", str(qdef.durable).lower()], 1
                    )
            yield info
        if "vhost_status" in fams:
            st = GaugeMetricFamily(
                "rabbitmq_detailed_vhost_status",
                "Whether a given vhost is running",
                labels=["vhost"],
            )
            for vhost in broker.state.vhosts:
                if not self.vhosts or vhost in self.vhosts:
                    st.add_metric([vhost], 1)
            yield st
        if "exchange_names" in fams:
            ex = GaugeMetricFamily(
                "rabbitmq_detailed_exchange_name",
                "Enumerates exchanges without any additional info",
                labels=["vhost", "exchange", "type"],
            )
            for vhost, vh in broker.state.vhosts.items():
                if self.vhosts and vhost not in self.vhosts:
                    continue
                for name, e in vh.exchanges.items():
                    ex.add_metric([vhost, name, e.type], 1)
            yield ex
        if "connection_coarse_metrics" in fams:
            ch = GaugeMetricFamily(
                "rabbitmq_detailed_connection_channels",
                "Channels on a connection",
                labels=["connection"],
            )
            for conn in list(broker.connections):
                channels = getattr(conn, "channels", None)
                n = sum(1 for c in channels.values() if c.is_open) if channels is not None else 0
                ch.add_metric([conn.id], n)
            yield ch
        # "channel_queue_metrics" is not served: per-channel, per-queue counters would cost on
        # the hot path, so none are kept.


def _now() -> float:
    import time

    return time.time()
