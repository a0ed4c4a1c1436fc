"""The management UI's figures: page weight, the queues page's first render with 10,000 queues,
and the screenshot of the overview under load that README.md shows (docs/ui-overview.png).

Starts its own node on free loopback ports and drives Debian's chromium with Playwright:

    python bench/ui_figures.py [--queues 10000] [--load-seconds 75] [--no-screenshot]

1. Under load: a pika publisher with confirms (a few hundred messages a second, in waves) and a
   consumer acknowledging (now and then requeueing, so redelivers show) for --load-seconds, the
   node sampling every second; then a screenshot of the overview.
2. Page weight: the bytes of every response a first visit of the queues page transfers (the
   page, scripts, styles, uPlot, the API calls), with an empty cache.
3. Queues page: --queues queues imported as definitions, then the time from navigation to the
   first page of rows on screen, three visits, each with an empty cache.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.http import call  # noqa: E402
from tests.support.node import NodeProcess  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def _creds_script(user: str = "guest", password: str = "guest") -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"sessionStorage.setItem('merpati.credentials', '{token}');"


def _publisher(url: str, stop: threading.Event) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("orders", durable=True)
    ch.queue_declare("audit", durable=True)
    ch.exchange_declare("events", "fanout")
    ch.queue_bind("orders", "events")
    ch.queue_bind("audit", "events")
    start = time.monotonic()
    while not stop.is_set():
        # Waves: 100 to 400 messages a second, so the chart has a shape.
        t = time.monotonic() - start
        per_tick = 10 + int(30 * abs(((t / 20) % 2) - 1))
        for _ in range(per_tick):
            ch.basic_publish("events", "", b"x" * 200)
        time.sleep(0.1)
    conn.close()


def _consumer(url: str, stop: threading.Event) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("orders", durable=True)
    ch.basic_qos(prefetch_count=50)
    n = 0
    # Slower than the publisher for a while: the queue grows, then catches up.
    for method, _props, _body in ch.consume("orders", inactivity_timeout=0.05):
        if stop.is_set():
            break
        if method is None:
            continue
        n += 1
        if n % 50 == 0:
            ch.basic_nack(method.delivery_tag, requeue=True)
        else:
            ch.basic_ack(method.delivery_tag)
        if n % 200 == 0:
            time.sleep(0.3)
    ch.cancel()
    conn.close()


def under_load(node: NodeProcess, browser, seconds: float, out: Path | None) -> None:
    stop = threading.Event()
    threads = [
        threading.Thread(target=_publisher, args=(node.url, stop), daemon=True),
        threading.Thread(target=_consumer, args=(node.url, stop), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(seconds)
        if out is not None:
            ctx = browser.new_context(viewport={"width": 1280, "height": 820})
            ctx.add_init_script(_creds_script())
            page = ctx.new_page()
            page.goto(node.management_url + "/#/")
            page.wait_for_selector("#main[data-page=overview][data-ready='1']")
            page.wait_for_timeout(1500)  # uPlot draws on the next frame
            page.screenshot(path=str(out))
            ctx.close()
            print(f"screenshot: {out.relative_to(ROOT)}")
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def page_weight(node: NodeProcess, browser) -> None:
    ctx = browser.new_context()
    ctx.add_init_script(_creds_script())
    page = ctx.new_page()
    rows: list[tuple[str, int]] = []
    page.on(
        "requestfinished",
        lambda r: rows.append(
            (r.url, r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"])
        ),
    )
    page.goto(node.management_url + "/#/queues")
    page.wait_for_selector("#main[data-page=queues][data-ready='1']")
    page.wait_for_load_state("networkidle")
    ctx.close()
    static = sum(s for u, s in rows if "/api/" not in u)
    api = sum(s for u, s in rows if "/api/" in u)
    print(
        f"page weight (queues page, empty cache): {static / 1024:.1f} KiB of assets in "
        f"{sum(1 for u, _ in rows if '/api/' not in u)} files + {api / 1024:.1f} KiB of API "
        f"answers in {sum(1 for u, _ in rows if '/api/' in u)} requests"
    )
    for u, s in sorted(rows, key=lambda r: -r[1]):
        print(f"  {s:8d}  {u.replace(node.management_url, '')}")


def queues_first_render(node: NodeProcess, browser, n: int) -> None:
    base = node.management_url
    started = time.monotonic()
    defs = {
        "queues": [
            {
                "name": f"q-{i:05d}",
                "vhost": "/",
                "durable": True,
                "auto_delete": False,
                "arguments": {},
            }
            for i in range(n)
        ]
    }
    # One import, all or nothing; 10,000 durable queues take longer than call()'s 10 s.
    req = urllib.request.Request(
        base + "/api/definitions", data=json.dumps(defs).encode(), method="POST"
    )
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as resp:
        assert resp.status == 204, resp.read()
    print(f"{n} queues imported in {time.monotonic() - started:.1f} s")
    times = []
    for _ in range(3):
        ctx = browser.new_context()
        ctx.add_init_script(_creds_script())
        page = ctx.new_page()
        t0 = time.monotonic()
        page.goto(base + "/#/queues")
        page.wait_for_selector("#queues tbody tr >> nth=99")
        wall = time.monotonic() - t0
        # From the browser's own clock: navigation start to the rows in the DOM.
        in_page = page.evaluate("performance.now()")
        count = page.locator("#queues-count").inner_text()
        ctx.close()
        times.append(wall)
        print(
            f"  queues page: first 100 rows after {wall * 1000:.0f} ms (page clock {in_page:.0f} ms): {count.strip()}"
        )
    print(
        f"queues page first render with {n} queues: median {statistics.median(times) * 1000:.0f} ms"
    )
    t0 = time.monotonic()
    status, body = call(
        base, "GET", "/api/queues?page=1&page_size=100&sort=messages&sort_reverse=true"
    )
    print(
        f"  /api/queues?page=1&page_size=100&sort=messages: {(time.monotonic() - t0) * 1000:.0f} ms "
        f"({body['total_count']} queues)"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queues", type=int, default=10_000)
    p.add_argument("--load-seconds", type=float, default=75)
    p.add_argument("--no-screenshot", action="store_true")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    node = NodeProcess("--collect-statistics-interval", "1000").start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            shot = None if args.no_screenshot else ROOT / "docs" / "ui-overview.png"
            under_load(node, browser, args.load_seconds, shot)
            page_weight(node, browser)
            queues_first_render(node, browser, args.queues)
            browser.close()
    finally:
        node.stop()
        node.discard()
    return 0


if __name__ == "__main__":
    sys.exit(main())
