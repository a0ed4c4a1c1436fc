"""Topic routing cost with many bindings: prints microseconds per match (a figure, not a test).

python -m bench.topic_routing [--bindings 10000] [--keys 20000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from merpati.node.routing.topic import TopicMatcher

WORDS = [f"w{i}" for i in range(50)]


def pattern(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 5)):
        r = rng.random()
        parts.append("*" if r < 0.1 else "#" if r < 0.15 else rng.choice(WORDS))
    return ".".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindings", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(1)
    m = TopicMatcher()
    for i in range(args.bindings):
        m.add(pattern(rng), ("q", f"q{i}"))
    keys = [".".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in range(args.keys)]
    cold, warm, hits = [], [], 0
    for _ in range(args.runs):
        m._cache.clear()
        t = time.perf_counter()
        for k in keys:
            hits += len(m.match(k))
        cold.append((time.perf_counter() - t) / len(keys) * 1e6)
        m._cache.clear()
        for k in keys[:2000]:
            m.match(k)
        t = time.perf_counter()
        for k in keys[:2000]:
            m.match(k)
        warm.append((time.perf_counter() - t) / 2000 * 1e6)
    print(f"{args.bindings} bindings, {args.keys} distinct-ish keys, median of {args.runs} runs")
    print(
        f"  uncached match: {statistics.median(cold):.1f} us/key (avg {hits / args.runs / len(keys):.1f} destinations)"
    )
    print(f"  cached match:   {statistics.median(warm):.2f} us/key")


if __name__ == "__main__":
    main()
