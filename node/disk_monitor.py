"""The disk alarm: free space of the data directory's filesystem against --disk-free-limit.

Theory of operation, as RabbitMQ's rabbit_disk_monitor: the node reads the free space
(`shutil.disk_usage`, in a worker thread: statvfs on a network filesystem can hang) and raises
the disk alarm when it is below the limit, clearing it when space returns. It checks more often
the closer free space is to the limit: the interval is the time a disk filling at 250 MB/s
would take to use twice the margin, between 0.1 s and 10 s; while the alarm stands, and while
the free space cannot be read, every 10 s. Changing the limit (`merpati ctl
set_disk_free_limit`, node-local and kept until the node restarts, as rabbitmqctl's) checks at
once, so the answer already reflects the new limit.

The limit is bytes, with RabbitMQ's units (`disk_free_limit.absolute`: "50MB", "2GB", "1GiB",
"500000000") or a multiple of the machine's RAM (`disk_free_limit.relative`; the classic
config's `{mem_relative, 1.0}`), spelled `mem_relative:1.0`. RabbitMQ's default is 50MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("merpati.server")

DEFAULT_DISK_FREE_LIMIT = "50MB"
# Interval bounds (seconds) and the filling rate the interval is worked out from (bytes/s).
MIN_INTERVAL = 0.1
MAX_INTERVAL = 10.0
FAST_RATE = 250_000_000

_UNIT_POWER = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_ABSOLUTE = re.compile(r"([0-9]+)\s*(?:([kmgtp])(i?b|i)?)?", re.IGNORECASE)
_RELATIVE = re.compile(r"mem_relative\s*[:=\s]\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)", re.IGNORECASE)


class DiskLimitError(ValueError):
    pass


@dataclass(frozen=True)
class DiskFreeLimit:
    """Either `absolute` bytes or `mem_relative` times the machine's RAM."""

    absolute: int | None = None
    mem_relative: float | None = None

    def resolve(self, total_memory: int) -> int:
        """The limit in bytes."""
        if self.mem_relative is not None:
            return round(self.mem_relative * total_memory)
        return self.absolute or 0

    def __str__(self) -> str:
        if self.mem_relative is not None:
            return f"mem_relative:{self.mem_relative:g}"
        return str(self.absolute)


def parse_disk_free_limit(text: str | int) -> DiskFreeLimit:
    """`50000000`, `50MB`, `1GiB`, `mem_relative:1.5` (see the module docstring).

    Units as RabbitMQ's parse_information_unit, case aside: a letter alone (k, M, G; T and P
    too) or with "i"/"iB" is a power of 1024; with "B" alone a power of 1000 (so "50MB" is
    50,000,000 bytes, RabbitMQ's default)."""
    if isinstance(text, bool):
        raise DiskLimitError(f"invalid disk free limit {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise DiskLimitError(f"disk free limit {text} is negative")
        return DiskFreeLimit(absolute=text)
    s = str(text).strip()
    m = _RELATIVE.fullmatch(s)
    if m:
        fraction = float(m.group(1))
        if not math.isfinite(fraction):
            raise DiskLimitError(f"invalid disk free limit {text!r}")
        return DiskFreeLimit(mem_relative=fraction)
    m = _ABSOLUTE.fullmatch(s)
    if not m:
        raise DiskLimitError(
            f"invalid disk free limit {text!r}: expected bytes (500000000, 50MB, 2GB, 1GiB) "
            "or mem_relative:FRACTION"
        )
    number, letter, suffix = int(m.group(1)), m.group(2), (m.group(3) or "").lower()
    if letter is None:
        return DiskFreeLimit(absolute=number)
    base = 1000 if suffix == "b" else 1024
    return DiskFreeLimit(absolute=number * base ** _UNIT_POWER[letter.lower()])


def check_interval(free: int | None, limit: int, alarmed: bool) -> float:
    """Seconds until the next check (RabbitMQ's rabbit_disk_monitor:interval/1)."""
    if alarmed or free is None:
        return MAX_INTERVAL
    ideal = 2 * (free - limit) / FAST_RATE
    return max(MIN_INTERVAL, min(MAX_INTERVAL, ideal))


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _free_bytes(path: str) -> int:
    return shutil.disk_usage(path).free


class DiskMonitor:
    """Watches one directory's filesystem; `on_change(raised)` hears the alarm change."""

    def __init__(
        self,
        path: str,
        limit: DiskFreeLimit,
        on_change: Callable[[bool], None],
        total_memory: Callable[[], int] = physical_memory,
        read_free: Callable[[str], int] = _free_bytes,
    ) -> None:
        self.path = path
        self.limit = limit
        self.on_change = on_change
        self.total_memory = total_memory
        self.read_free = read_free
        self.free: int | None = None  # bytes free at the last check (None: unreadable)
        self.alarmed = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._unreadable_logged = False

    @property
    def limit_bytes(self) -> int:
        return self.limit.resolve(self.total_memory())

    async def check(self) -> None:
        """Read the free space now and raise or clear the alarm."""
        try:
            free = await asyncio.get_running_loop().run_in_executor(None, self.read_free, self.path)
        except OSError as e:
            # Without a figure the alarm stays as it was (RabbitMQ's 'NaN'): neither raised on
            # a guess nor cleared while the disk may still be full.
            if not self._unreadable_logged:
                log.warning("cannot read the free disk space of %s: %s", self.path, e)
                self._unreadable_logged = True
            self.free = None
            return
        self._unreadable_logged = False
        self.free = free
        limit = self.limit_bytes
        alarmed = free < limit
        if alarmed != self.alarmed:
            self.alarmed = alarmed
            log.log(
                logging.WARNING if alarmed else logging.INFO,
                "free disk space %s: %d bytes free, limit %d",
                "is below the limit" if alarmed else "is above the limit again",
                free,
                limit,
            )
            self.on_change(alarmed)

    async def set_limit(self, limit: DiskFreeLimit) -> None:
        """A new limit, effective at once (checked before this returns)."""
        self.limit = limit
        log.info("disk free limit set to %d bytes (%s)", self.limit_bytes, limit)
        await self.check()
        self._wake.set()  # the next interval follows the new margin

    def start(self) -> None:
        """Check periodically from now on (after a first `check()` by the caller)."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        # The node ran the first check itself before it listened (a client connecting at once
        # must find the alarm already raised): this loop waits first.
        while True:
            interval = check_interval(self.free, self.limit_bytes, self.alarmed)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the monitor must outlive a surprise
                log.exception("disk free space check failed")
