"""Writes merpati-overview.json, the Grafana dashboard for Merpati (run after editing the panels).

Queries use RabbitMQ's metric names joined with rabbitmq_identity_info on `instance`, as the
RabbitMQ-Overview dashboard (grafana.com id 10991) does, so that dashboard works on Merpati too;
this one adds Merpati's own rows: Raft metadata, message store.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
JOIN = ' * on(instance) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster="$rabbitmq_cluster"}'

_id = 0
_y = 0


def _next_id() -> int:
    global _id
    _id += 1
    return _id


def target(expr: str, legend: str = "", ref: str = "A") -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def stat(title: str, expr: str, x: int, w: int = 3, unit: str = "short") -> dict:
    return {
        "id": _next_id(),
        "type": "stat",
        "title": title,
        "datasource": DS,
        "gridPos": {"h": 4, "w": w, "x": x, "y": _y},
        "targets": [target(expr)],
        "fieldConfig": {"defaults": {"unit": unit, "decimals": 0}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def series(
    title: str, targets: list[tuple[str, str]], x: int, w: int = 12, unit: str = "short"
) -> dict:
    refs = "ABCDEFGHIJ"
    return {
        "id": _next_id(),
        "type": "timeseries",
        "title": title,
        "datasource": DS,
        "gridPos": {"h": 8, "w": w, "x": x, "y": _y},
        "targets": [target(e, lg, refs[i]) for i, (e, lg) in enumerate(targets)],
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}},
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def row(title: str) -> dict:
    global _y
    panel = {
        "id": _next_id(),
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": _y},
        "panels": [],
    }
    _y += 1
    return panel


def advance(h: int) -> None:
    global _y
    _y += h


def build() -> dict:
    panels = [row("Overview")]
    panels += [
        stat("Ready messages", f"sum(rabbitmq_queue_messages_ready{JOIN})", 0),
        stat("Unacknowledged", f"sum(rabbitmq_queue_messages_unacked{JOIN})", 3),
        stat(
            "Incoming msg/s", f"sum(rate(rabbitmq_channel_messages_published_total[60s]){JOIN})", 6
        ),
        stat(
            "Outgoing msg/s",
            "sum(("
            "rate(rabbitmq_channel_messages_delivered_total[60s]) + rate(rabbitmq_channel_messages_delivered_ack_total[60s]) + "
            f"rate(rabbitmq_channel_get_total[60s]) + rate(rabbitmq_channel_get_ack_total[60s])){JOIN})",
            9,
        ),
        stat("Connections", f"sum(rabbitmq_connections{JOIN})", 12),
        stat("Channels", f"sum(rabbitmq_channels{JOIN})", 15),
        stat("Queues", f"sum(rabbitmq_queues{JOIN})", 18),
        stat("Nodes", 'count(rabbitmq_identity_info{rabbitmq_cluster="$rabbitmq_cluster"})', 21),
    ]
    advance(4)
    panels.append(row("Messages"))
    per_node = lambda m: f"sum by(rabbitmq_node) (rate({m}[60s]){JOIN})"  # noqa: E731
    panels += [
        series(
            "Published / confirmed / unroutable per second",
            [
                (
                    per_node("rabbitmq_channel_messages_published_total"),
                    "published {{rabbitmq_node}}",
                ),
                (
                    per_node("rabbitmq_channel_messages_confirmed_total"),
                    "confirmed {{rabbitmq_node}}",
                ),
                (
                    per_node("rabbitmq_channel_messages_unroutable_dropped_total"),
                    "unroutable dropped {{rabbitmq_node}}",
                ),
                (
                    per_node("rabbitmq_channel_messages_unroutable_returned_total"),
                    "unroutable returned {{rabbitmq_node}}",
                ),
            ],
            0,
        ),
        series(
            "Delivered / acknowledged / redelivered per second",
            [
                (
                    per_node("rabbitmq_channel_messages_delivered_ack_total"),
                    "delivered (manual ack) {{rabbitmq_node}}",
                ),
                (
                    per_node("rabbitmq_channel_messages_delivered_total"),
                    "delivered (auto ack) {{rabbitmq_node}}",
                ),
                (
                    per_node("rabbitmq_channel_messages_acked_total"),
                    "acknowledged {{rabbitmq_node}}",
                ),
                (
                    per_node("rabbitmq_channel_messages_redelivered_total"),
                    "redelivered {{rabbitmq_node}}",
                ),
            ],
            12,
        ),
    ]
    advance(8)
    panels += [
        series(
            "Messages ready / unacknowledged per node",
            [
                (
                    f"sum by(rabbitmq_node) (rabbitmq_queue_messages_ready{JOIN})",
                    "ready {{rabbitmq_node}}",
                ),
                (
                    f"sum by(rabbitmq_node) (rabbitmq_queue_messages_unacked{JOIN})",
                    "unacked {{rabbitmq_node}}",
                ),
            ],
            0,
        ),
        series(
            "Connections and channels opened / closed per second",
            [
                (
                    per_node("rabbitmq_connections_opened_total"),
                    "connections opened {{rabbitmq_node}}",
                ),
                (
                    per_node("rabbitmq_connections_closed_total"),
                    "connections closed {{rabbitmq_node}}",
                ),
                (per_node("rabbitmq_channels_opened_total"), "channels opened {{rabbitmq_node}}"),
                (per_node("rabbitmq_queues_created_total"), "queues created {{rabbitmq_node}}"),
            ],
            12,
        ),
    ]
    advance(8)
    panels.append(row("Nodes"))
    panels += [
        series(
            "Memory used / high watermark",
            [
                (
                    f"sum by(rabbitmq_node) (rabbitmq_process_resident_memory_bytes{JOIN})",
                    "used {{rabbitmq_node}}",
                ),
                (
                    f"sum by(rabbitmq_node) (rabbitmq_resident_memory_limit_bytes{JOIN})",
                    "limit {{rabbitmq_node}}",
                ),
            ],
            0,
            8,
            "bytes",
        ),
        series(
            "Disk space available",
            [
                (
                    f"sum by(rabbitmq_node) (rabbitmq_disk_space_available_bytes{JOIN})",
                    "{{rabbitmq_node}}",
                )
            ],
            8,
            8,
            "bytes",
        ),
        series(
            "Alarms and file descriptors",
            [
                (
                    f"max by(rabbitmq_node) (rabbitmq_alarms_memory_used_watermark{JOIN})",
                    "memory alarm {{rabbitmq_node}}",
                ),
                (
                    f"max by(rabbitmq_node) (rabbitmq_alarms_free_disk_space_watermark{JOIN})",
                    "disk alarm {{rabbitmq_node}}",
                ),
                (
                    f"sum by(rabbitmq_node) (rabbitmq_process_open_fds{JOIN})",
                    "open fds {{rabbitmq_node}}",
                ),
            ],
            16,
            8,
        ),
    ]
    advance(8)
    panels.append(row("Raft metadata (merpati_*)"))
    panels += [
        series(
            "Raft term and leader",
            [
                (f"max by(rabbitmq_node) (merpati_raft_term{JOIN})", "term {{rabbitmq_node}}"),
                (
                    f"max by(rabbitmq_node) (merpati_raft_is_leader{JOIN})",
                    "is leader {{rabbitmq_node}}",
                ),
                (
                    f"min by(rabbitmq_node) (merpati_raft_has_quorum{JOIN})",
                    "has majority {{rabbitmq_node}}",
                ),
            ],
            0,
            8,
        ),
        series(
            "Metadata commit latency (propose to applied)",
            [
                (
                    f"histogram_quantile(0.5, sum by(le, rabbitmq_node) (rate(merpati_metadata_commit_seconds_bucket[5m]){JOIN}))",
                    "p50 {{rabbitmq_node}}",
                ),
                (
                    f"histogram_quantile(0.99, sum by(le, rabbitmq_node) (rate(merpati_metadata_commit_seconds_bucket[5m]){JOIN}))",
                    "p99 {{rabbitmq_node}}",
                ),
            ],
            8,
            8,
            "s",
        ),
        series(
            "Metadata commands per second",
            [
                (per_node("merpati_metadata_proposals_total"), "proposed {{rabbitmq_node}}"),
                (per_node("merpati_metadata_proposal_failures_total"), "failed {{rabbitmq_node}}"),
                (
                    f"sum by(rabbitmq_node) (rate(merpati_raft_commit_index[5m]){JOIN})",
                    "committed (log) {{rabbitmq_node}}",
                ),
            ],
            16,
            8,
        ),
    ]
    advance(8)
    panels.append(row("Message store (merpati_*)"))
    panels += [
        series(
            "Store commit latency",
            [
                (
                    f"histogram_quantile(0.5, sum by(le, rabbitmq_node) (rate(merpati_store_commit_seconds_bucket[5m]){JOIN}))",
                    "p50 {{rabbitmq_node}}",
                ),
                (
                    f"histogram_quantile(0.99, sum by(le, rabbitmq_node) (rate(merpati_store_commit_seconds_bucket[5m]){JOIN}))",
                    "p99 {{rabbitmq_node}}",
                ),
            ],
            0,
            8,
            "s",
        ),
        series(
            "Store commits per second and rows per commit",
            [
                (per_node("merpati_store_commits_total"), "commits/s {{rabbitmq_node}}"),
                (
                    f"sum by(rabbitmq_node) (rate(merpati_store_commit_rows_sum[5m]){JOIN}) / sum by(rabbitmq_node) (rate(merpati_store_commit_rows_count[5m]){JOIN})",
                    "rows/commit {{rabbitmq_node}}",
                ),
            ],
            8,
            8,
        ),
        series(
            "Store size and messages in memory",
            [
                (
                    f"sum by(rabbitmq_node) (merpati_store_size_bytes{JOIN})",
                    "store file {{rabbitmq_node}}",
                ),
                (
                    f"sum by(rabbitmq_node) (merpati_message_memory_bytes{JOIN})",
                    "message bytes in memory {{rabbitmq_node}}",
                ),
            ],
            16,
            8,
            "bytes",
        ),
    ]
    advance(8)
    panels.append(row("Forwarding between nodes (merpati_*)"))
    panels += [
        series(
            "Messages forwarded per second, by peer",
            [
                (
                    f"sum by(rabbitmq_node, peer) (rate(merpati_forwarding_sent_messages_total[5m]){JOIN})",
                    "{{rabbitmq_node}} -> {{peer}}",
                ),
            ],
            0,
            8,
        ),
        series(
            "Messages per gRPC write (batching)",
            [
                (
                    f"sum by(rabbitmq_node) (rate(merpati_forwarding_sent_messages_total[5m]){JOIN}) / sum by(rabbitmq_node) (rate(merpati_forwarding_sent_batches_total[5m]){JOIN})",
                    "{{rabbitmq_node}}",
                ),
            ],
            8,
            8,
        ),
        series(
            "Links up and forwards awaiting confirm",
            [
                (
                    f"sum by(rabbitmq_node, peer) (merpati_forwarding_peer_up{JOIN})",
                    "up {{rabbitmq_node}} -> {{peer}}",
                ),
                (
                    f"sum by(rabbitmq_node, peer) (merpati_forwarding_unconfirmed{JOIN})",
                    "unconfirmed {{rabbitmq_node}} -> {{peer}}",
                ),
            ],
            16,
            8,
        ),
    ]
    advance(8)
    panels.append(row("Quorum queues (merpati_*)"))
    panels += [
        series(
            "Replicas in sync / replicas, by queue",
            [
                (
                    f"sum by(vhost, queue) (merpati_quorum_queue_replicas_in_sync{JOIN})",
                    "in sync {{vhost}}/{{queue}}",
                ),
                (
                    f"sum by(vhost, queue) (merpati_quorum_queue_replicas{JOIN})",
                    "replicas {{vhost}}/{{queue}}",
                ),
            ],
            0,
            8,
        ),
        series(
            "Follower lag (log entries)",
            [
                (
                    f"max by(vhost, queue, replica) (merpati_quorum_queue_follower_lag{JOIN})",
                    "{{vhost}}/{{queue}} on {{replica}}",
                ),
            ],
            8,
            8,
        ),
        series(
            "Leader elections per hour",
            [
                (
                    f"sum by(rabbitmq_node) (increase(merpati_quorum_leader_elections_total[1h]){JOIN})",
                    "controller {{rabbitmq_node}}",
                ),
            ],
            16,
            8,
        ),
    ]
    advance(8)
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "9.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "annotations": {"list": []},
        "description": "Merpati: RabbitMQ-compatible overview plus Raft metadata and message store",
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": panels,
        "refresh": "15s",
        "schemaVersion": 38,
        "tags": ["merpati", "rabbitmq-prometheus"],
        "templating": {
            "list": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "options": [],
                },
                {
                    "name": "rabbitmq_cluster",
                    "label": "cluster",
                    "type": "query",
                    "datasource": DS,
                    "query": {
                        "query": "label_values(rabbitmq_identity_info, rabbitmq_cluster)",
                        "refId": "cluster",
                    },
                    "definition": "label_values(rabbitmq_identity_info, rabbitmq_cluster)",
                    "refresh": 2,
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "sort": 1,
                },
            ]
        },
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "Merpati Overview",
        "uid": "merpati-overview",
        "version": 1,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("merpati-overview.json")
    out.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {out}")
