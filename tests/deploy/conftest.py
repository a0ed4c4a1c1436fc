"""The `helm` fixture: a helm v3 binary (tests/deploy/chart.py fetches it once)."""

from __future__ import annotations

import pytest

from tests.deploy.chart import helm_binary


@pytest.fixture(scope="session")
def helm() -> str:
    return helm_binary()
