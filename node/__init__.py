"""One Merpati broker node: protocol front ends, routing, queues, store, management."""

if __name__ != "merpati.node":  # pragma: no cover - a checkout's folder imported by its own name
    # Two copies of the same modules (`node.x` and `merpati.node.x`) would not recognise each
    # other's classes; the folder is the package merpati.node (pyproject.toml's package-dir).
    raise ImportError(f"import merpati.node, not {__name__} (pip install -e . makes it importable)")


__version__ = "0.1.0"
