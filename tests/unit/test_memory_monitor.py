"""node.memory_monitor: the watermark's spellings and the alarm it raises."""

from __future__ import annotations

import pytest

from merpati.node.memory_monitor import (
    MemoryMonitor,
    MemoryWatermark,
    WatermarkError,
    parse_watermark,
)


@pytest.mark.parametrize(
    ("value", "absolute", "limit"),
    [
        ("0.4", False, 400),
        (0.5, False, 500),
        ("2GB", True, 2_000_000_000),
        ("1GiB", True, 1 << 30),
        ("500000", True, 500000),
        (1024, True, 1024),
    ],
)
def test_watermark_spellings(value, absolute, limit) -> None:
    assert parse_watermark(value, absolute).resolve(1000) == limit


@pytest.mark.parametrize(
    ("value", "absolute"),
    [("lots", False), ("-0.1", False), ("nan", False), (True, False), ("0.5", True), ("x", True)],
)
def test_bad_watermarks_are_refused(value, absolute) -> None:
    with pytest.raises(WatermarkError, match="invalid"):
        parse_watermark(value, absolute)


def test_the_alarm_follows_the_memory_in_use_and_the_watermark() -> None:
    heard: list[bool] = []
    used = [500]
    mon = MemoryMonitor(
        MemoryWatermark(fraction=0.4), heard.append, total_memory=lambda: 1000, used=lambda: used[0]
    )
    assert mon.check() is True and mon.limit_bytes == 400
    used[0] = 300
    assert mon.check() is False
    mon.set_watermark(MemoryWatermark(absolute=100))
    assert mon.alarmed is True and str(mon.watermark) == "absolute:100"
    mon.set_watermark(MemoryWatermark(fraction=0.0))  # 0: never alarms
    assert heard == [True, False, True, False]
