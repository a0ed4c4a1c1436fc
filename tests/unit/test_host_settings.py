"""node/host_settings.py: the workers of a host share node-local settings through one file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from merpati.node.host_settings import DISK_FREE_LIMIT, MEMORY_HIGH_WATERMARK, HostSettings


class Worker:
    def __init__(self, path: Path) -> None:
        self.applied: list[tuple[str, dict[str, Any]]] = []
        self.settings = HostSettings(path, self.apply, interval=0.01)

    async def apply(self, setting: str, body: dict[str, Any]) -> None:
        if body.get("limit") == "refused":
            raise ValueError("not a limit")
        self.applied.append((setting, body))


def test_a_setting_one_worker_took_reaches_the_others_and_a_late_starter(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "host-settings.json"
        a, b = Worker(path), Worker(path)
        for w in (a, b):
            await w.settings.check()
            w.settings.start()
        memory = {"limit": 0.6, "absolute": False}
        a.settings.put(MEMORY_HIGH_WATERMARK, memory)  # a applied it itself, then shares it
        for _ in range(100):
            if b.applied:
                break
            await asyncio.sleep(0.01)
        assert b.applied == [(MEMORY_HIGH_WATERMARK, memory)]
        assert a.applied == []  # not applied twice by the worker that took it
        disk = {"limit": "2GB"}
        b.settings.put(DISK_FREE_LIMIT, disk)
        os.utime(path, ns=(1, 1))  # a different mtime even within the clock's resolution
        for _ in range(100):
            if a.applied:
                break
            await asyncio.sleep(0.01)
        assert a.applied == [(DISK_FREE_LIMIT, disk)]
        # A worker started again later applies both at its start.
        c = Worker(path)
        await c.settings.check()
        assert sorted(c.applied) == sorted(
            [(MEMORY_HIGH_WATERMARK, memory), (DISK_FREE_LIMIT, disk)]
        )
        for w in (a, b):
            await w.settings.stop()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_refused_or_unreadable_file_changes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "host-settings.json"
        w = Worker(path)
        await w.settings.check()  # no file yet
        path.write_text('{"memory_high_watermark": {"limit": "refused"}}')
        await w.settings.check()
        assert w.applied == []
        path.write_text("not json")
        os.utime(path, ns=(2, 2))
        await w.settings.check()
        assert w.applied == []

    asyncio.run(asyncio.wait_for(main(), 10))
