"""The memory alarm: RabbitMQ's vm_memory_high_watermark, relative to RAM or absolute.

The node's resident memory is compared with the watermark once a second; above it, the node
raises its memory alarm (node.core.alarms), which blocks publishers cluster-wide. The watermark
is `--memory-high-watermark` (a fraction of RAM) at start and can be changed at run time, until
the node restarts, as with `rabbitmqctl set_vm_memory_high_watermark [absolute] LIMIT`.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from .disk_monitor import DiskLimitError, parse_disk_free_limit

CHECK_EVERY = 1.0


class WatermarkError(ValueError):
    pass


@dataclass(frozen=True)
class MemoryWatermark:
    """Either a `fraction` of the machine's RAM or `absolute` bytes."""

    fraction: float | None = None
    absolute: int | None = None

    def resolve(self, total_memory: int) -> int:
        if self.absolute is not None:
            return self.absolute
        return int((self.fraction or 0.0) * total_memory)

    def __str__(self) -> str:
        if self.absolute is not None:
            return f"absolute:{self.absolute}"
        return f"{self.fraction:g}"


def parse_watermark(value: str | float | int, absolute: bool = False) -> MemoryWatermark:
    """A fraction of RAM (`0.4`), or with `absolute` bytes with RabbitMQ's units (`2GB`,
    `1GiB`, `500000000`), as rabbitmqctl set_vm_memory_high_watermark takes them."""
    if isinstance(value, bool):
        raise WatermarkError(f"invalid memory high watermark {value!r}")
    if absolute:
        try:
            limit = parse_disk_free_limit(value if isinstance(value, int) else str(value))
        except DiskLimitError:
            limit = None
        if limit is None or limit.absolute is None:
            raise WatermarkError(
                f"invalid absolute memory high watermark {value!r}: expected bytes "
                "(2000000000, 2GB, 1GiB)"
            )
        return MemoryWatermark(absolute=limit.absolute)
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = math.nan
    if not math.isfinite(fraction) or fraction < 0:
        raise WatermarkError(
            f"invalid memory high watermark {value!r}: expected a fraction of RAM (0.4) or "
            "an absolute limit"
        )
    return MemoryWatermark(fraction=fraction)


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def resident_memory() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryMonitor:
    """Checks resident memory against the watermark every CHECK_EVERY seconds and tells
    `on_change(alarmed)`; 0 (a watermark of 0, or no RAM figure) never alarms."""

    def __init__(
        self,
        watermark: MemoryWatermark,
        on_change: Callable[[bool], None],
        total_memory: Callable[[], int] = physical_memory,
        used: Callable[[], int] = resident_memory,
    ) -> None:
        self.watermark = watermark
        self.on_change = on_change
        self.total_memory = total_memory
        self.used = used
        self.alarmed = False
        self._task: asyncio.Task | None = None

    @property
    def limit_bytes(self) -> int:
        return self.watermark.resolve(self.total_memory())

    def check(self) -> bool:
        rss, limit = self.used(), self.limit_bytes
        self.alarmed = bool(rss and limit and rss > limit)
        self.on_change(self.alarmed)
        return self.alarmed

    def set_watermark(self, watermark: MemoryWatermark) -> None:
        """Changed at run time: checked at once, so the answer says whether the alarm stands."""
        self.watermark = watermark
        self.check()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            self.check()
