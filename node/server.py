"""A running node: bootstraps metadata from configuration, listens, watches memory and disk space,
stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

from .broker import Broker, hash_password
from .config import Config
from .core.alarms import DISK, MEMORY
from .disk_monitor import DiskMonitor, parse_disk_free_limit
from .host_settings import DISK_FREE_LIMIT, MEMORY_HIGH_WATERMARK, HostSettings
from .listener import AMQPProtocol, settings_from_config
from .memory_monitor import MemoryMonitor, parse_watermark
from .metadata import commands as cmds
from .metadata.log import LocalLog
from .store import SQLiteStore, StoreError

log = logging.getLogger("merpati.server")

# Seconds a stopping node waits for queue handovers still under way (see Node.stop).
HANDOVER_GRACE = 10.0
# How long a stopping node waits for other replicas to lead the quorum queues it leads.
STEP_DOWN_GRACE = 5.0


class StartupError(Exception):
    """The node cannot start; the message says why (and names the file at fault)."""


class Node:
    def __init__(self, config: Config, cluster: Any = None) -> None:
        self.config = config
        self.node_id = config.resolved_node_id()
        # cluster.cluster_node.ClusterNode (Raft metadata, placement, forwarding, queue moves):
        # the broker's ClusterSeam. None: a LocalLog node on its own.
        self.cluster = cluster
        # The listener sniffs the protocol header and hands each front end its own settings.
        self.settings, self.settings10 = settings_from_config(config)
        self.broker: Broker | None = None
        self.store: SQLiteStore | None = None
        self.metadata: Any = None
        self._servers: list[asyncio.base_events.Server] = []
        self.tls_watcher: Any = None
        self.http_tls: Any = None  # the HTTPS context of management and metrics (--http-tls)
        # Observability and operator listeners (node.metrics, node.management): aiohttp runners.
        self._http_runners: list[Any] = []
        # (protocol, address, port) of every listener, for the management API's overview.
        self.hosts: list[str] = []  # the addresses the listeners bind (--bind)
        self.listeners: list[tuple[str, str, int]] = []
        self.queue_churn: Any = None
        self.cluster_name = self.node_id
        self.cluster_id = ""
        self.started_at = 0.0
        self.disk_monitor: DiskMonitor | None = None
        self.memory_monitor: MemoryMonitor | None = None
        # The workers' shared node-local settings (--host-settings), else None.
        self.host_settings: HostSettings | None = None

    async def _bootstrap(self, first_boot: bool) -> None:
        """Propose the configured vhosts and users (idempotent commands).

        The default user is created on the first boot only, as RabbitMQ does, so deleting it
        later sticks; users named in the config file are declarative and applied every start.
        """
        assert self.broker is not None
        cfg = self.config
        propose = self.broker.propose
        vhosts = list(
            dict.fromkeys(
                ("/",) + tuple(cfg.vhosts) + tuple(v for u in cfg.users for v in u.vhosts)
            )
        )
        for vhost in vhosts:
            await propose(cmds.AddVhost(vhost))
        users: list[Any] = list(cfg.users)
        # A definitions file at boot provisions the users itself: no default user, as RabbitMQ.
        if not users and first_boot and not cfg.load_definitions:
            users = [
                _UserFromFlags(
                    cfg.default_user, cfg.default_pass, ("administrator",), tuple(vhosts)
                )
            ]
        for user in users:
            await propose(cmds.PutUser(user.name, hash_password(user.password), tuple(user.tags)))
            for vhost in user.vhosts:
                await propose(cmds.SetPermissions(user.name, vhost))

    async def _load_definitions(self) -> None:
        """--load-definitions: apply a definitions file (RabbitMQ's format) at every start,
        through the same checks as the API's import, all or nothing; what exists already and
        is equivalent stays as it is, so every node of a cluster may apply the same file."""
        path = self.config.load_definitions
        if not path:
            return
        import json

        from .management import definitions
        from .management.app import ApiError

        try:
            body = json.loads(Path(path).read_text())
        except OSError as e:
            raise StartupError(f"cannot read definitions file {path}: {e.strerror}") from None
        except ValueError as e:
            raise StartupError(f"definitions file {path} is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise StartupError(f"definitions file {path}: expected a JSON object")
        assert self.broker is not None
        try:
            n = await definitions.import_(self, body, None, self.broker.propose)
        except ApiError as e:
            raise StartupError(f"definitions file {path}: {e.reason}") from None
        log.info("definitions from %s applied (%d items)", path, n)

    async def start(self) -> None:
        cfg = self.config
        data_dir = Path(cfg.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

        self.store = SQLiteStore(
            data_dir / "messages.db",
            synchronous=cfg.store_sync.upper(),
            max_bytes=cfg.store_max_bytes,
        )
        try:
            stored = self.store.open()
        except StoreError as e:
            raise StartupError(str(e)) from None
        self.store.start(loop)

        if self.cluster is not None:
            try:
                await self.cluster.join_if_new()  # a node that never ran Raft here
            except ValueError as e:  # PeersError: refused, and why
                raise StartupError(f"joining the cluster: {e}") from None
        self.metadata = self.cluster.metadata(data_dir) if self.cluster is not None else LocalLog()
        self.broker = Broker(
            self.node_id,
            self.metadata,
            loopback_users=cfg.loopback_users,
            store=self.store,
            memory_budget=cfg.message_memory_budget,
            cluster=self.cluster,
            defer_local_queues=True,  # until recover() below
            default_queue_type=cfg.default_queue_type,
            max_connections=cfg.max_connections,
            consumer_timeout=cfg.consumer_timeout,
            queue_leader_locator=cfg.resolved_queue_leader_locator(),
        )
        self.broker.alarm_listeners.append(self._on_alarm)
        from .management.views import ClientViews

        # The other nodes list (and close) this node's clients through it, so that every
        # node's management API answers for the whole cluster.
        self.broker.client_views = ClientViews(self)
        only_member = True
        if self.cluster is not None:
            only_member = not self.cluster.clustered
            await self.cluster.start_forwarding()
            try:
                await self.cluster.wait_for_majority(self.metadata.start)
            except Exception as e:  # the log names the file or setting at fault
                raise StartupError(f"metadata log: {e}") from None
        if self.cluster is not None:
            await self.cluster.announce(self.broker)
        first_boot = not self.broker.state.users
        await self.broker.propose(
            cmds.NodeStarted(self.node_id, only_member=only_member, features=cmds.FEATURES)
        )
        await self._bootstrap(first_boot)
        await self._load_definitions()
        recovered = self.broker.recover(stored)
        # The first disk check runs before the listeners open: a client connecting at once
        # finds a disk alarm that stands already raised.
        self.disk_monitor = DiskMonitor(
            str(data_dir),
            parse_disk_free_limit(cfg.disk_free_limit),
            lambda raised: self.broker.set_alarm(DISK, raised),
        )
        await self.disk_monitor.check()
        self.disk_monitor.start()

        self.hosts = _listen_hosts(cfg.bind_addresses())
        addrs = []
        for kind, port, tls in (
            ("amqp", cfg.amqp_port, None),
            ("amqps", cfg.amqps_port if cfg.tls_cert else 0, self._tls_context()),
        ):
            if not port:
                continue
            server = await loop.create_server(
                lambda tls=tls: AMQPProtocol(self.broker, self.settings, self.settings10, tls),
                host=self.hosts,
                port=port,
                reuse_address=True,
                # Only the workers of --workers share a port: a lone node must fail to start
                # on a port another process holds, not silently split its clients with it.
                reuse_port=cfg.reuse_port or None,
                backlog=1024,
                ssl=tls,
                # A client that stalls in the TLS handshake is closed as one that stalls in
                # AMQP's (the listener's timer starts once TLS is up).
                ssl_handshake_timeout=cfg.handshake_timeout if tls is not None else None,
            )
            self._servers.append(server)
            where = ", ".join(_fmt(s.getsockname()) for s in server.sockets)
            addrs.append(where if tls is None else f"{where} (TLS)")
            for sock in server.sockets:
                self.listeners.append((kind, *sock.getsockname()[:2]))
        await self._start_http(data_dir)
        log.info(
            "Merpati node %s ready: AMQP on %s (data in %s, %d messages recovered)",
            self.node_id,
            ", ".join(addrs),
            os.path.abspath(cfg.data_dir),
            recovered,
        )
        self.memory_monitor = MemoryMonitor(
            parse_watermark(cfg.memory_high_watermark), self._on_memory_alarm
        )
        self.memory_monitor.start()
        if cfg.host_settings:
            self.host_settings = HostSettings(cfg.host_settings, self._apply_host_setting)
            await self.host_settings.check()  # what the other workers were told before
            self.host_settings.start()

    async def _apply_host_setting(self, setting: str, body: dict[str, Any]) -> None:
        """A setting another worker of this host took (node/host_settings.py)."""
        if setting == MEMORY_HIGH_WATERMARK and self.memory_monitor is not None:
            watermark = parse_watermark(body.get("limit"), bool(body.get("absolute")))  # type: ignore[arg-type]
            self.memory_monitor.set_watermark(watermark)
        elif setting == DISK_FREE_LIMIT and self.disk_monitor is not None:
            await self.disk_monitor.set_limit(parse_disk_free_limit(body.get("limit")))  # type: ignore[arg-type]

    async def _start_http(self, data_dir: Path) -> None:
        """Start the Prometheus and management HTTP listeners (a port of 0 disables one)."""
        import time
        import uuid

        from .metrics.collector import QueueChurn

        cfg = self.config
        self.started_at = time.time()
        id_file = data_dir / "cluster_id"
        if not id_file.exists():
            id_file.write_text(f"merpati-{uuid.uuid4()}\n")
        self.cluster_id = id_file.read_text().strip()
        assert self.broker is not None
        self.queue_churn = QueueChurn()
        self.broker.metadata.subscribe(self.queue_churn.on_applied)
        apps: list[tuple[str, str, Any, int, bool]] = []
        if cfg.metrics_port:
            from .metrics.server import metrics_app

            # Never shared: each worker of --workers has a metrics port of its own (node.supervisor),
            # as a scrape must name the node its per-node figures are of.
            apps.append(
                (
                    "Prometheus metrics",
                    "http/prometheus",
                    metrics_app(self),
                    cfg.metrics_port,
                    False,
                )
            )
        if cfg.management_port:
            from .management.app import management_app

            apps.append(
                (
                    "management API",
                    "http",
                    management_app(self),
                    cfg.management_port,
                    cfg.reuse_port,
                )
            )
        if not apps:
            return
        from aiohttp import web

        for what, protocol, app, port, shared in apps:
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            self._http_runners.append(runner)
            # aiohttp hands `host` to loop.create_server, which takes several addresses.
            hosts: Any = self.hosts
            site = web.TCPSite(
                runner,
                host=hosts,
                port=port,
                reuse_address=True,
                reuse_port=shared or None,
                backlog=128,
                ssl_context=self.http_tls,
            )
            await site.start()
            if self.http_tls is not None:
                protocol = protocol.replace("http", "https", 1)  # RabbitMQ's listener names
            socks = [sn for sn in runner.addresses if isinstance(sn, tuple)]
            for sn in socks:
                self.listeners.append((protocol, sn[0], sn[1]))
            log.info(
                "%s on %s%s",
                what,
                ", ".join(_fmt(sn) for sn in socks),
                " (HTTPS)" if self.http_tls is not None else "",
            )

    def _on_memory_alarm(self, alarmed: bool) -> None:
        assert self.broker is not None
        self.broker.set_alarm(MEMORY, alarmed)

    def _tls_context(self) -> Any:
        """The AMQPS context (None without --tls-cert), reloaded on SIGHUP or a file change."""
        cfg = self.config
        if not cfg.tls_cert:
            return None
        from . import tls

        try:
            ctx = tls.server_context(
                cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_verify, cfg.tls_fail_if_no_peer_cert
            )
        except tls.TLSConfigError as e:
            raise StartupError(str(e)) from None
        if cfg.http_tls:
            self.http_tls = tls.http_context(cfg.tls_cert, cfg.tls_key)
        also = (self.http_tls,) if cfg.http_tls else ()
        self.tls_watcher = tls.CertificateWatcher(
            (cfg.tls_cert, cfg.tls_key, cfg.tls_ca),
            tls.amqps_loader(ctx, cfg.tls_cert, cfg.tls_key, cfg.tls_ca, also),
        )
        self.tls_watcher.start()
        return ctx

    def _on_sighup(self) -> None:
        """SIGHUP reloads every certificate: AMQPS (and HTTPS) and the cluster's."""
        if self.tls_watcher is not None:
            self.tls_watcher.reload()
        if self.cluster is not None:
            self.cluster.reload_tls("SIGHUP")

    def _on_alarm(self, resources: frozenset[str]) -> None:
        """The resource alarms in effect in the cluster changed: every client connection
        hears the new set (node.core.alarms)."""
        assert self.broker is not None
        for conn in list(self.broker.connections):
            conn.on_alarm(resources)
            conn.flush_soon()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        if self.broker is not None and self.broker.recovered:
            await self.broker.cluster.step_down(STEP_DOWN_GRACE)
        conns = list(self.broker.connections) if self.broker is not None else []
        for conn in conns:
            conn.force_close("shutdown")
            conn.flush_soon()
        # Give clients a moment to answer connection.close before the process exits.
        deadline = asyncio.get_running_loop().time() + 2.0
        while (
            any(c.state != "closed" for c in conns) and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
        if self.broker is not None:
            # Deliveries the closed connections released belong to queues moved away (a drain
            # before this stop): give them a moment to reach their new leader. Whatever does not
            # make it stays in the store and is handed over at the next start.
            await self.broker.cluster.wait_handovers(HANDOVER_GRACE)
        if self.host_settings is not None:
            await self.host_settings.stop()
        if self.memory_monitor is not None:
            self.memory_monitor.stop()
        if self.disk_monitor is not None:
            await self.disk_monitor.stop()
        if self.tls_watcher is not None:
            self.tls_watcher.stop()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        for runner in self._http_runners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.cleanup(), 2.0)
        if self.cluster is not None:
            await self.cluster.detach()  # forwarding streams end before the store closes
        if self.store is not None:
            # Commits what the last loop turns gathered, then stops the writer.
            await asyncio.get_running_loop().run_in_executor(None, self.store.close)
        stopper = getattr(self.metadata, "stop", None)
        if stopper is not None:
            stopper()

    async def run(self) -> None:
        try:
            await self.start()
        except StartupError:
            await self.stop()
            raise
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("Merpati node %s stopping", self.node_id)
        await self.stop()
        log.info("Merpati node %s stopped", self.node_id)


class _UserFromFlags:
    def __init__(
        self, name: str, password: str, tags: tuple[str, ...], vhosts: tuple[str, ...]
    ) -> None:
        self.name, self.password, self.tags, self.vhosts = name, password, tags, vhosts


def _listen_hosts(addresses: list[str]) -> list[str]:
    """--bind's addresses, without the IPv6 wildcard on a machine without IPv6 (the default
    asks for both families; a machine with IPv4 only still starts, saying so)."""
    out = []
    for address in addresses:
        if address == "::":
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                    s.bind(("::", 0))
            except OSError as e:
                log.warning("not listening on IPv6 (::): %s", e.strerror or e)
                continue
        out.append(address)
    return out or addresses


def _fmt(sockname: tuple) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
