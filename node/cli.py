"""The `merpati` command: `merpati server` runs a node (or, with `--workers N`, supervises N of
them on this host: node/supervisor.py); `merpati ctl` operates one over its management API
(tools/ctl.py); `merpati perf` is a load tool (tools/perf.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__
from .config import FLAGS, Config, ConfigError, load


def _server_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run a broker node")
    for name, help_text in FLAGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"{help_text} (env MERPATI_{name.upper()})",
        )


def cluster_node(cfg: Config) -> object:
    """How this node takes part in the cluster (a one-member one without --peers)."""
    from merpati.cluster.cluster_node import ClusterNode

    return ClusterNode.from_config(cfg)


# Commands with their own argument parsers, handed everything after their name.
TOOLS = {
    "ctl": "operate a node over its management API (rabbitmqctl's commands)",
    "perf": "load test a broker (PerfTest-like: producers, consumers, rates, latency)",
}


def _run_tool(name: str, argv: list[str]) -> int:
    if name == "ctl":
        from merpati.tools.ctl import main as ctl_main

        return ctl_main(argv)
    from merpati.tools.perf import main as perf_main

    return perf_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="merpati", description="Merpati, a clustered AMQP broker")
    parser.add_argument("--version", action="version", version=f"merpati {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _server_parser(sub)
    for name, help_text in TOOLS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args = parser.parse_args(argv)

    if args.command == "server":
        flags = {name: getattr(args, name) for name in FLAGS}
        try:
            cfg = load(flags)
        except ConfigError as e:
            print(f"merpati: {e}", file=sys.stderr)
            return 2
        logging.basicConfig(
            level=getattr(logging, cfg.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if cfg.resolved_workers() > 1:
            from . import supervisor

            return supervisor.run(cfg, argv[argv.index("server") + 1 :])
        from .server import Node, StartupError

        try:
            import uvloop  # type: ignore[import-not-found]
        except ImportError:
            uvloop = None
        try:
            plan = cluster_node(cfg)
        except ValueError as e:
            print(f"merpati: {e}", file=sys.stderr)
            return 2
        node = Node(cfg, cluster=plan)
        try:
            if uvloop is not None:
                uvloop.run(node.run())
            else:
                asyncio.run(node.run())
        except (OSError, StartupError) as e:
            logging.getLogger("merpati.server").error("cannot start: %s", e)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
