"""Shared fixtures: a real node process per test session (and fresh ones on demand)."""

from __future__ import annotations

import pytest

from tests.support.node import NodeProcess


@pytest.fixture(scope="session")
def node():
    """A node shared by the tests that do not care about its configuration."""
    n = NodeProcess().start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()


@pytest.fixture
def make_node():
    """Start nodes with their own flags/config; all are stopped after the test."""
    started: list[NodeProcess] = []

    def factory(
        *extra: str, config: str | None = None, env: dict[str, str] | None = None
    ) -> NodeProcess:
        n = NodeProcess(*extra, config=config, env=env).start()
        started.append(n)
        return n

    yield factory
    for n in started:
        n.stop()
