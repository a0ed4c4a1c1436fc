"""The scale curves of bench/scale.py as images (docs/img/scale-*.png).

    python -m bench.plot_scale bench/results/scale.jsonl [--to docs/img]

One image per scenario, two panels each (a memory figure and a time figure against the size),
one line per broker; the axes are logarithmic where the sizes span decades.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

# scenario -> (title, x label, [(key, panel title, scale, unit)])
PANELS = {
    "connections": (
        "Idle connections (one channel each)",
        "connections",
        [
            ("per_item", "memory per connection", 1 / 1024, "KiB"),
            ("rss", "broker RSS", 2**-20, "MiB"),
        ],
    ),
    "queues": (
        "Queues declared by one client",
        "queues",
        [
            ("per_item", "memory per queue", 1 / 1024, "KiB"),
            ("declare_rate", "declare rate", 1, "queues/s"),
        ],
    ),
    "bindings": (
        "Topic bindings (each message matches one)",
        "bindings",
        [
            ("cpu_per_message_us", "broker CPU per routed message", 1, "µs"),
            ("rss", "broker RSS", 2**-20, "MiB"),
        ],
    ),
    "fanout": (
        "Fanout to K queues, a consumer on each",
        "queues bound (K)",
        [
            ("cpu_per_copy_us", "broker CPU per delivered copy", 1, "µs"),
            ("copies_per_second", "copies delivered", 1, "per second"),
        ],
    ),
    "deep": (
        "One queue filled with N messages of 100 B, then drained",
        "messages in the queue",
        [
            ("rss_full", "broker RSS when full", 2**-20, "MiB"),
            ("drain_rate", "drain rate", 1, "msg/s"),
        ],
    ),
}
COLOURS = {"merpati": "#1f77b4", "rabbitmq": "#ff6600"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--to", default="docs/img")
    args = ap.parse_args()
    points: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for line in Path(args.results).read_text().splitlines():
        if line.strip():
            p = json.loads(line)
            points[p["scenario"]][p["broker"]].append(p)
    out = Path(args.to)
    out.mkdir(parents=True, exist_ok=True)
    for scenario, by_broker in points.items():
        title, xlabel, panels = PANELS[scenario]
        fig, axes = plt.subplots(1, len(panels), figsize=(10, 3.6))
        for ax, (key, panel, scale, unit) in zip(axes, panels, strict=True):
            for broker, pts in sorted(by_broker.items()):
                pts = sorted(pts, key=lambda p: p["n"])
                xs = [p["n"] for p in pts]
                ys = [p[key] * scale for p in pts]
                ax.plot(xs, ys, marker="o", label=broker, color=COLOURS.get(broker))
            ax.set_xscale("log")
            ax.set_title(panel, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        path = out / f"scale-{scenario}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        print(path)


if __name__ == "__main__":
    main()
