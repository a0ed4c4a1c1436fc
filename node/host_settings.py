"""Node-local settings that every worker of a host applies (`merpati server --workers N`).

The memory high watermark and the disk free limit are a node's own, changed at run time through
the management API (`merpati ctl set_vm_memory_high_watermark`, `set_disk_free_limit`). The
workers share one management port, so such a request reaches whichever worker the kernel picks;
the operator meant the host. So the worker that takes it applies it, then writes it to a file the
supervisor named (`--host-settings`, DATA_DIR/host-settings.json), and every worker applies what
the file says within a second (it checks the file's modification time; a worker started again
later applies it at start). The supervisor removes the file when it starts, so the settings last
until the host's Merpati restarts, as rabbitmqctl's do until a node restarts.

The file holds each setting as the API's request body ({"limit": ..., "absolute": ...}); every
worker parses it as the API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("merpati.server")

MEMORY_HIGH_WATERMARK = "memory_high_watermark"
DISK_FREE_LIMIT = "disk_free_limit"
CHECK_INTERVAL = 1.0

Apply = Callable[[str, dict[str, Any]], Awaitable[None]]


class HostSettings:
    def __init__(self, path: str | Path, apply: Apply, interval: float = CHECK_INTERVAL) -> None:
        self.path = Path(path)
        self.apply = apply  # (setting, request body): raises ValueError when it is refused
        self.interval = interval
        self._applied: dict[str, Any] = {}
        self._mtime = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def put(self, setting: str, body: dict[str, Any]) -> None:
        """This worker applied `body` for `setting`: pass it on to the others through the file."""
        settings = self._read()
        settings[setting] = body
        self._applied[setting] = body
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(settings, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def _read(self) -> dict[str, Any]:
        try:
            settings = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("host settings %s unreadable, ignored: %s", self.path, e)
            return {}
        return settings if isinstance(settings, dict) else {}

    async def check(self) -> None:
        """Apply what the file says and this worker has not applied yet."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        for setting, body in self._read().items():
            if self._applied.get(setting) == body or not isinstance(body, dict):
                continue
            self._applied[setting] = body
            try:
                await self.apply(setting, body)
                log.info("host setting %s applied: %s", setting, body)
            except ValueError as e:
                log.warning("host setting %s=%s refused: %s", setting, body, e)

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bad file must not end the watch
                log.exception("host settings check failed")
            await asyncio.sleep(self.interval)
