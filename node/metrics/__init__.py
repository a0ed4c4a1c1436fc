"""Observability: counters on the hot path (`counters`), and a Prometheus exporter that reads them
and the broker's state at scrape time (`collector`, `server`; these import prometheus-client)."""

from .counters import Histogram, NodeCounters

__all__ = ["Histogram", "NodeCounters"]
