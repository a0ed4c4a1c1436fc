"""Shared fixtures: a real node process per test session (and fresh ones on demand).

Every node's temporary directory is removed when the test (or the fixture) that made it ends,
except for a failed test's, which are kept and listed at the end of the session (see
tests/support/node.py).
"""

from __future__ import annotations

import pytest

from tests.support import node as nodes
from tests.support.node import NodeProcess


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        item.stash[_FAILED] = True


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _node_dirs(request):
    """Discard the nodes made during this test (by it or by its function-scoped fixtures, which
    stop theirs first); a failed test's directories stay."""
    serial = nodes.next_serial()
    yield
    nodes.discard_since(serial, keep=request.node.stash.get(_FAILED, False))


def pytest_sessionfinish(session):
    # Nodes of module- and session-scoped fixtures, or anything left over.
    nodes.discard_since(0, keep=session.testsfailed > 0)


def pytest_terminal_summary(terminalreporter):
    if nodes.kept_dirs:
        terminalreporter.section("merpati node directories kept")
        for d in nodes.kept_dirs:
            terminalreporter.line(f"{d}  (node.log, data/)")


@pytest.fixture(scope="session")
def node(request):
    """A node shared by the tests that do not care about its configuration."""
    n = NodeProcess().start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()
    n.discard(keep=request.session.testsfailed > 0)


@pytest.fixture
def make_node():
    """Start nodes with their own flags/config; all are stopped after the test (and their
    directories removed by _node_dirs)."""
    started: list[NodeProcess] = []

    def factory(
        *extra: str, config: str | None = None, env: dict[str, str] | None = None
    ) -> NodeProcess:
        n = NodeProcess(*extra, config=config, env=env)
        started.append(n)
        return n.start()

    yield factory
    for n in started:
        n.stop()
