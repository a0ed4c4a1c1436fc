"""Fixtures of the web UI's end-to-end tests: a real node (tests/support/node.py) and Debian's
chromium driven by Playwright. Playwright's own browser downloads are never used (they need
a network): the tests launch /usr/bin/chromium, which .ci/run installs, and skip saying so
where it or the playwright package is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.node import NodeProcess

CHROMIUM = os.environ.get("MERPATI_CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # the test extra installs it; the test modules skip without it
    sync_playwright = None  # type: ignore[assignment]
    Browser = Page = Any  # type: ignore[misc,assignment]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Per module, not per session: while Playwright's sync API is open its event loop counts as
    # running in this thread, and the suite's later asyncio.run() calls would refuse to start.
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def ui_node(request: pytest.FixtureRequest) -> Iterator[NodeProcess]:
    """A node sampling its rates every 500 ms, so that the charts move within a test."""
    n = NodeProcess("--collect-statistics-interval", "500").start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()
    n.discard(keep=request.session.testsfailed > 0)


class PageErrors:
    """JavaScript errors of a page: a test fails on any, whatever it checked."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on(
            "console",
            lambda m: (
                self.errors.append(m.text)
                if m.type == "error" and "status of 4" not in m.text
                else None
            ),
        )


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    watch = PageErrors(pg)
    # Every confirm() (delete, close, purge) is answered yes.
    pg.on("dialog", lambda d: d.accept())
    yield pg
    ctx.close()
    assert not watch.errors, watch.errors


def login(page: Page, node: NodeProcess, user: str = "guest", password: str = "guest") -> None:
    page.goto(node.management_url + "/")
    page.fill("#login input[name=username]", user)
    page.fill("#login input[name=password]", password)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#main[data-page=overview][data-ready='1']")


def goto(page: Page, node: NodeProcess, hash_path: str, page_name: str) -> None:
    page.goto(f"{node.management_url}/#/{hash_path}")
    page.wait_for_selector(f"#main[data-page={page_name}][data-ready='1']")


def fill_form(page: Page, form: str, values: dict[str, Any]) -> None:
    for name, value in values.items():
        el = page.locator(f"{form} [name='{name}']")
        kind = el.get_attribute("type")
        tag = el.evaluate("e => e.tagName")
        if kind == "checkbox":
            el.set_checked(bool(value))
        elif tag == "SELECT":
            el.select_option(str(value))
        else:
            el.fill(str(value))
