"""Merpati's client tools: `merpati ctl` (operate a node over its management API, as rabbitmqctl)
and `merpati perf` (a load generator). They talk to a node over the network like any client and
share nothing with a running node but the 0-9-1 codec perf speaks with."""

if __name__ != "merpati.tools":  # pragma: no cover - a checkout's folder imported by its own name
    # Two copies of the same modules (`tools.x` and `merpati.tools.x`) would not recognise each
    # other's classes; the folder is the package merpati.tools (pyproject.toml's package-dir).
    raise ImportError(
        f"import merpati.tools, not {__name__} (pip install -e . makes it importable)"
    )
