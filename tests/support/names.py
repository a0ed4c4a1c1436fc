"""Unique names for queues, exchanges, vhosts...: tests share nodes, so no two may collide."""

from __future__ import annotations

import uuid


def uid(prefix: str) -> str:
    """`prefix-` and 12 random hex digits (48 bits: no collision across a test session)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
