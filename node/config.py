"""Node configuration: one set of names across flags, environment and config file.

Precedence: command-line flag > environment variable `MERPATI_<NAME>` > config file (TOML) >
default. Names are the flag names with dashes; the config file and the environment accept them
with underscores too (`amqp-port`, `amqp_port`, `MERPATI_AMQP_PORT`).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .disk_monitor import DiskLimitError, parse_disk_free_limit


@dataclass
class UserConfig:
    name: str
    password: str
    tags: tuple[str, ...] = ()
    vhosts: tuple[str, ...] = ("/",)


@dataclass
class Config:
    amqp_port: int = 5672  # 0: no plain listener (AMQPS only)
    # AMQPS (TLS) listener, for 0-9-1 and 1.0 alike; it listens once tls-cert is set.
    amqps_port: int = 5671
    tls_cert: str = ""
    tls_key: str = ""  # the key, when tls-cert does not hold it
    tls_ca: str = ""  # CA bundle that client certificates are checked against
    tls_verify: str = "none"  # peer: ask for client certificates (RabbitMQ's verify_peer)
    tls_fail_if_no_peer_cert: bool = False
    http_tls: bool = False  # the management API and metrics over HTTPS with the tls-cert
    # Prometheus /metrics and the management HTTP API (RabbitMQ's ports); 0 disables a listener.
    metrics_port: int = 15692
    management_port: int = 15672
    # Addresses to listen on, comma-separated; the default is every IPv4 and IPv6 address, as
    # RabbitMQ (Node.js resolves localhost to ::1 first).
    bind: str = "0.0.0.0,::"
    data_dir: str = "./data"
    node_id: str = ""
    config: str = ""
    log_level: str = "info"
    default_user: str = "guest"
    default_pass: str = "guest"
    heartbeat: int = 60
    # Seconds a client has to complete the AMQP handshake (TLS included) before it is closed.
    handshake_timeout: float = 10.0
    frame_max: int = 131072
    channel_max: int = 2047
    max_message_size: int = 128 * 1024 * 1024
    # Client connections (0-9-1 and 1.0) this node accepts at once, RabbitMQ's connection_max;
    # 0 is no limit (RabbitMQ's `infinity`: a node refusing every client would be of no use).
    max_connections: int = 0
    # Fraction of physical memory above which publishers are blocked (RabbitMQ's vm_memory_high_watermark).
    memory_high_watermark: float = 0.4
    # Free space of the data directory's filesystem below which publishers are blocked
    # (RabbitMQ's disk_free_limit): bytes with RabbitMQ's units ("50MB", "2GB", "1GiB") or
    # "mem_relative:FRACTION" of RAM (node.disk_monitor).
    disk_free_limit: str = "50MB"
    # Inter-node gRPC port; the Raft port defaults to the cluster port + 1 (0 = that default).
    cluster_port: int = 25672
    raft_port: int = 0
    cluster_secret: str = ""
    cluster_secret_file: str = ""
    # Mutual TLS between nodes (gRPC): this node's certificate and key, the cluster CA.
    cluster_tls_cert: str = ""
    cluster_tls_key: str = ""
    cluster_tls_ca: str = ""
    # Every member as node-id=host:cluster-port,... (this node included), or dns:NAME:PORT.
    peers: str = ""
    # With the DNS form: members the name must resolve to before this node starts (0 = any).
    peers_expected: int = 0
    # Bytes of message data kept in memory before queues page messages out to the store.
    message_memory_budget: int = 128 * 1024 * 1024
    # SQLite synchronous mode of the message store: FULL (fsync per commit) or NORMAL.
    store_sync: str = "full"
    # Largest size of the message store file, bytes (0 = no limit); publishes beyond it are nacked.
    store_max_bytes: int = 0
    # Messages a queue moving to another node (drain, rebalance) has forwarded and not yet seen
    # confirmed, at most (cluster.handover).
    handover_window: int = 1000
    # AMQP 1.0: offer SASL ANONYMOUS (and accept clients without SASL) as the default user, as
    # RabbitMQ does (3.x default_user, 4.x anonymous_login_user); guest only from loopback.
    amqp10_anonymous: bool = True
    # The type of a queue declared without x-queue-type (RabbitMQ's default_queue_type): classic
    # or quorum (then durable, non-exclusive, non-auto-delete queues get replicas).
    default_queue_type: str = "classic"
    # A definitions file (RabbitMQ's format) applied at every start; no default user then.
    load_definitions: str = ""
    # ms an AMQP 0-9-1 delivery may stay unacknowledged before its channel is closed with 406
    # (RabbitMQ's consumer_timeout, same default); 0: no limit. A queue's x-consumer-timeout or
    # consumer-timeout policy overrides it.
    consumer_timeout: int = 1_800_000
    # Where a queue declared without x-queue-leader-locator (or a policy saying it) is led:
    # client-local (the declaring connection's node) or balanced (the live node leading the
    # fewest queues). Empty: balanced, except in the workers of --workers (client-local: the
    # kernel spreads the connections over them, so client-local spreads the queues as well).
    queue_leader_locator: str = ""
    # Node processes on this host (node.supervisor): a number, or "auto" for one per CPU this
    # process may run on. Above 1 this process only supervises them.
    workers: str = "1"
    # Open the client ports (AMQP, AMQPS, management) with SO_REUSEPORT, so that the workers of
    # --workers share them; set by the supervisor for its workers, never needed by hand.
    reuse_port: bool = False
    # A directory where nodes of this host listen on Unix sockets for each other's forwarded
    # streams, which cost far less there than over gRPC (cluster/forwarding/local_link.py); set
    # by --workers for its workers, and useful to several single nodes on one host.
    local_link_dir: str = ""
    # A file through which the workers of --workers share the node-local settings changed at
    # run time (memory watermark, disk free limit; node/host_settings.py); set by --workers.
    host_settings: str = ""
    # ms between samples of the message rates the management API shows with their history
    # (RabbitMQ's collect_statistics_interval, same default).
    collect_statistics_interval: int = 5000
    loopback_users: tuple[str, ...] = ("guest",)
    vhosts: tuple[str, ...] = ("/",)
    users: list[UserConfig] = field(default_factory=list)

    def resolved_raft_port(self) -> int:
        return self.raft_port or self.cluster_port + 1

    def bind_addresses(self) -> list[str]:
        """The addresses of --bind, in order, without repeats."""
        return list(dict.fromkeys(a.strip() for a in self.bind.split(",") if a.strip())) or [
            "0.0.0.0"
        ]

    def resolved_node_id(self) -> str:
        return self.node_id or f"merpati@{socket.gethostname()}"

    def resolved_queue_leader_locator(self) -> str:
        return self.queue_leader_locator or "balanced"

    def resolved_workers(self) -> int:
        """--workers as a number: "auto" is the CPUs this process may run on (its affinity,
        which container runtimes set; a CFS quota is not looked at)."""
        if self.workers.strip().lower() == "auto":
            try:
                return max(1, len(os.sched_getaffinity(0)))
            except (AttributeError, OSError):
                return os.cpu_count() or 1
        return int(self.workers)


# The settings that are flags (and therefore environment variables), with their help text.
FLAGS: dict[str, str] = {
    "amqp_port": "AMQP listener port, 0 disables (AMQPS only)",
    "amqps_port": "AMQPS (TLS) listener port, used once --tls-cert is set",
    "tls_cert": "PEM certificate chain of the AMQPS listener (reloaded on SIGHUP or change)",
    "tls_key": "PEM private key, when the certificate file does not hold it",
    "tls_ca": "PEM CA bundle client certificates are verified against",
    "tls_verify": "peer (ask clients for a certificate and verify it) or none",
    "tls_fail_if_no_peer_cert": "with --tls-verify peer, refuse clients without a certificate "
    "(true/false)",
    "http_tls": "serve the management API and metrics over HTTPS with --tls-cert (true/false)",
    "metrics_port": "Prometheus /metrics port, 0 disables",
    "management_port": "management HTTP API port, 0 disables",
    "bind": "addresses to listen on, comma-separated (default: every IPv4 and IPv6 address)",
    "data_dir": "directory for the node's data",
    "node_id": "this node's id (default merpati@HOSTNAME)",
    "config": "TOML configuration file",
    "log_level": "debug, info, warning or error",
    "default_user": "user created at start when the config file names no users",
    "default_pass": "password of the default user",
    "heartbeat": "heartbeat interval proposed to clients, seconds (0 disables)",
    "handshake_timeout": "seconds a client has to complete the AMQP (and TLS) handshake",
    "frame_max": "largest frame proposed to clients, bytes",
    "channel_max": "most channels per connection proposed to clients",
    "max_message_size": "largest message body accepted, bytes",
    "max_connections": "client connections this node accepts at once, 0 = unlimited",
    "memory_high_watermark": "fraction of RAM above which publishers are blocked",
    "disk_free_limit": "free disk space below which publishers are blocked: bytes, with "
    "units (50MB, 2GB, 1GiB), or mem_relative:FRACTION of RAM",
    "cluster_port": "port for traffic between nodes (gRPC)",
    "raft_port": "Raft port for metadata (default: cluster port + 1)",
    "cluster_secret": "shared secret of the cluster's nodes (required off loopback)",
    "cluster_secret_file": "file holding the cluster secret",
    "cluster_tls_cert": "PEM certificate of this node for mutual TLS between nodes",
    "cluster_tls_key": "PEM key of --cluster-tls-cert",
    "cluster_tls_ca": "PEM CA that every node's cluster certificate must come from",
    "peers": "cluster members: node-id=host:cluster-port,... (this node included) or dns:NAME:PORT",
    "peers_expected": "with --peers dns:NAME:PORT, wait until NAME resolves to at least this many "
    "members before starting (a StatefulSet's replicas; 0 = take what DNS shows)",
    "message_memory_budget": "bytes of messages kept in memory before paging to the store",
    "store_sync": "message store durability: full (fsync every commit) or normal",
    "store_max_bytes": "largest message store size in bytes, 0 = unlimited",
    "handover_window": "messages a queue moving to another node keeps unconfirmed at once",
    "amqp10_anonymous": "AMQP 1.0: allow SASL ANONYMOUS as the default user (true/false; "
    "guest only from loopback)",
    "default_queue_type": "type of queues declared without x-queue-type: classic or quorum",
    "load_definitions": "definitions file (RabbitMQ's JSON) applied at every start; the default "
    "user is then not created",
    "consumer_timeout": "ms an AMQP 0-9-1 delivery may stay unacknowledged before its channel "
    "is closed (406), 0 = no limit; a queue's x-consumer-timeout or policy overrides it",
    "queue_leader_locator": "where new queues are led: client-local (the declaring connection's "
    "node) or balanced (fewest leaders); x-queue-leader-locator or a policy overrides it "
    "(default: balanced; client-local in the workers of --workers)",
    "workers": "node processes to run on this host as one cluster, sharing the client ports "
    "(SO_REUSEPORT): a number or auto (one per CPU); above 1 this process supervises them",
    "reuse_port": "open the client ports with SO_REUSEPORT (set by --workers for its workers)",
    "host_settings": "file through which the workers of this host share the memory watermark "
    "and disk free limit set at run time (set by --workers for its workers)",
    "local_link_dir": "directory of Unix sockets through which nodes of this host forward "
    "messages to each other instead of gRPC (set by --workers for its workers)",
    "collect_statistics_interval": "ms between samples of the message rates (and their "
    "history) the management API and UI show",
}


class ConfigError(ValueError):
    pass


def _tuple(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"invalid value {value!r} for {name}: expected a list of strings")


def _coerce(name: str, value: Any) -> Any:
    default = getattr(Config, name)
    if (
        name in ("disk_free_limit", "workers")
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        value = str(value)  # a TOML integer: bytes, or a number of workers
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(
                f"invalid value {value!r} for {name.replace('_', '-')}: expected a string"
            )
        return value
    try:
        if isinstance(default, bool):
            return (
                value
                if isinstance(value, bool)
                else str(value).lower() in ("1", "true", "yes", "on")
            )
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return _tuple(name.replace("_", "-"), value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value {value!r} for {name.replace('_', '-')}")
    return value


def load(flags: dict[str, Any], environ: dict[str, str] | None = None) -> Config:
    """Merge flags (None = not given), environment and the config file into a Config."""
    environ = dict(os.environ) if environ is None else environ
    names = {f.name for f in fields(Config)}
    values: dict[str, Any] = {}

    config_path = flags.get("config") or environ.get("MERPATI_CONFIG")
    users: list[UserConfig] = []
    if config_path:
        path = Path(config_path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}")
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}")
        for key, value in data.items():
            name = key.replace("-", "_")
            if name == "users":
                for u in value:
                    if "name" not in u or "password" not in u:
                        raise ConfigError(
                            f"config file {path}: every [[users]] entry needs name and password"
                        )
                    users.append(
                        UserConfig(
                            str(u["name"]),
                            str(u["password"]),
                            _tuple("tags", u.get("tags", ())),
                            _tuple("vhosts", u.get("vhosts", ("/",))),
                        )
                    )
                continue
            if name not in names:
                raise ConfigError(f"config file {path}: unknown setting '{key}'")
            values[name] = _coerce(name, value)
        values["config"] = str(path)

    for name in names:
        env = environ.get("MERPATI_" + name.upper())
        if env is not None and name not in ("users",):
            values[name] = _coerce(name, env)

    for name, value in flags.items():
        if value is not None and name in names:
            values[name] = _coerce(name, value)

    cfg = Config(**values)
    cfg.users = users
    for name in ("amqp_port", "amqps_port", "metrics_port", "management_port"):
        if not (0 <= getattr(cfg, name) < 65536):
            raise ConfigError(f"{name.replace('_', '-')} {getattr(cfg, name)} is not a TCP port")
    for address in cfg.bind_addresses():
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if not address or any(c in address for c in " /[]"):
                raise ConfigError(f"bind: {address!r} is not an IP address or a host name")
    if not cfg.amqp_port and not cfg.tls_cert:
        raise ConfigError("amqp-port 0 turns the plain listener off: set tls-cert for AMQPS")
    if cfg.tls_cert and not cfg.amqps_port:
        raise ConfigError("tls-cert is set but amqps-port is 0")
    if cfg.tls_verify not in ("peer", "none"):
        raise ConfigError(f"tls-verify must be peer or none, not {cfg.tls_verify!r}")
    if cfg.tls_fail_if_no_peer_cert and cfg.tls_verify != "peer":
        raise ConfigError("tls-fail-if-no-peer-cert needs tls-verify peer")
    if (cfg.tls_key or cfg.tls_ca or cfg.tls_verify == "peer" or cfg.http_tls) and not cfg.tls_cert:
        raise ConfigError(
            "tls-key, tls-ca, tls-verify and http-tls need tls-cert (the AMQPS certificate)"
        )
    if cfg.tls_verify == "peer" and not cfg.tls_ca:
        raise ConfigError(
            "tls-verify peer needs tls-ca (the CA client certificates are checked against)"
        )
    if not cfg.handshake_timeout > 0:
        raise ConfigError("handshake-timeout must be more than 0 seconds")
    cluster_tls = (cfg.cluster_tls_cert, cfg.cluster_tls_key, cfg.cluster_tls_ca)
    if any(cluster_tls) and not all(cluster_tls):
        raise ConfigError("mutual TLS between nodes needs cluster-tls-cert, -key and -ca together")
    if cfg.frame_max < 4096:
        raise ConfigError("frame-max must be at least 4096")
    if cfg.max_connections < 0:
        raise ConfigError("max-connections must be 0 (no limit) or more")
    if cfg.consumer_timeout < 0:
        raise ConfigError("consumer-timeout must be 0 (no limit) or a number of milliseconds")
    if cfg.collect_statistics_interval < 100:
        raise ConfigError("collect-statistics-interval must be at least 100 (ms)")
    if cfg.handover_window < 1:
        raise ConfigError("handover-window must be at least 1")
    if cfg.default_queue_type not in ("classic", "quorum"):
        raise ConfigError(
            f"default-queue-type must be classic or quorum, not {cfg.default_queue_type!r}"
        )
    try:
        parse_disk_free_limit(cfg.disk_free_limit)
    except DiskLimitError as e:
        raise ConfigError(f"disk-free-limit: {e}")
    if cfg.queue_leader_locator not in ("", "client-local", "balanced"):
        raise ConfigError(
            "queue-leader-locator must be client-local or balanced, not "
            f"{cfg.queue_leader_locator!r}"
        )
    workers = cfg.workers.strip().lower()
    if workers != "auto" and not (workers.isdigit() and int(workers) >= 1):
        raise ConfigError(
            f"workers must be a number of processes (1 or more) or auto, not {cfg.workers!r}"
        )
    if cfg.store_sync.lower() not in ("full", "normal"):
        raise ConfigError(f"store-sync must be full or normal, not {cfg.store_sync!r}")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log-level must be debug, info, warning or error, not {cfg.log_level!r}")
    return cfg
