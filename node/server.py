"""A running node: bootstraps metadata from configuration, listens, watches memory, stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from .amqp091.connection import Settings
from .amqp091.transport import AMQPProtocol
from .broker import Broker, hash_password
from .config import Config
from .metadata import commands as cmds

log = logging.getLogger("merpati.server")


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_id = config.resolved_node_id()
        self.broker = Broker(self.node_id, loopback_users=config.loopback_users)
        self.settings = Settings(
            frame_max=config.frame_max,
            channel_max=config.channel_max,
            heartbeat=config.heartbeat,
            max_message_size=config.max_message_size,
        )
        self._servers: list[asyncio.base_events.Server] = []
        self._stopping: asyncio.Event | None = None
        self.broker.alarm_listeners.append(self._on_alarm)

    def bootstrap(self) -> None:
        """Apply the configured vhosts and users (idempotent commands)."""
        cfg = self.config
        apply = self.broker.metadata.apply  # type: ignore[attr-defined]
        vhosts = list(
            dict.fromkeys(
                ("/",) + tuple(cfg.vhosts) + tuple(v for u in cfg.users for v in u.vhosts)
            )
        )
        for vhost in vhosts:
            apply(cmds.AddVhost(vhost))
        users = cfg.users or [
            _UserFromFlags(cfg.default_user, cfg.default_pass, ("administrator",), tuple(vhosts))
        ]
        for user in users:
            apply(cmds.PutUser(user.name, hash_password(user.password), tuple(user.tags)))
            for vhost in user.vhosts:
                apply(cmds.SetPermissions(user.name, vhost))

    async def start(self) -> None:
        Path(self.config.data_dir).mkdir(parents=True, exist_ok=True)
        self.bootstrap()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: AMQPProtocol(self.broker, self.settings),
            host=self.config.bind,
            port=self.config.amqp_port,
            reuse_address=True,
            backlog=1024,
        )
        self._servers.append(server)
        addrs = ", ".join(_fmt(s.getsockname()) for s in server.sockets)
        log.info(
            "Merpati node %s ready: AMQP 0-9-1 on %s (data in %s)",
            self.node_id,
            addrs,
            os.path.abspath(self.config.data_dir),
        )
        self._memory_task = asyncio.create_task(self._watch_memory())

    async def _watch_memory(self) -> None:
        limit = self.config.memory_high_watermark * _physical_memory()
        while True:
            await asyncio.sleep(1.0)
            rss = _resident_memory()
            if rss and limit:
                self.broker.set_alarm(rss > limit)

    def _on_alarm(self, raised: bool) -> None:
        for conn in list(self.broker.connections):
            conn.on_alarm(raised)
            conn.flush_soon()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        conns = list(self.broker.connections)
        for conn in conns:
            conn.force_close("shutdown")
            conn.flush_soon()
        # Give clients a moment to answer connection.close before the process exits.
        deadline = asyncio.get_running_loop().time() + 2.0
        while (
            any(c.state != "closed" for c in conns) and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
        task = getattr(self, "_memory_task", None)
        if task is not None:
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def run(self) -> None:
        await self.start()
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


def _fmt(sockname: tuple) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _resident_memory() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
