"""``gitmq node`` (run a node) and ``gitmq config check`` (validate a config)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os

from gitmq import config as node_config
from gitmq import logs
from gitmq.cli import progress
from gitmq.cli.signals import SignalStop
from gitmq.errors import RemoteError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="run a node: consumers plus scheduled sync")
    p.add_argument("--config", required=True, metavar="FILE", help="the node's YAML config")
    p.add_argument(
        "--once",
        action="store_true",
        help="sync, deliver pending messages, sync again, exit (tests, cron)",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.set_defaults(func=cmd_node)

    p = sub.add_parser(
        "sync", help="sync a node's storage with its remotes once, or wake its running node"
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the node's YAML config")
    p.add_argument(
        "--wake",
        action="store_true",
        help="ask the node running on the storage to sync now (a webhook relay, cron)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on a terminal")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("config", help="work with node config files")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate a config file without running anything")
    c.add_argument("file", help="the YAML config")
    c.add_argument(
        "--skip-handlers",
        action="store_true",
        help="do not check that handler programs and Python functions exist "
        "(they are installed after the config, as by deploy/)",
    )
    c.set_defaults(func=cmd_config_check)


def cmd_node(args: argparse.Namespace) -> int:
    from gitmq.node import Node  # APScheduler: imported only by the command that runs it

    logs.setup(args.log_format, args.log_level)
    config = node_config.load(args.config)
    node_config.check_handlers(config)
    if not args.once:
        cap_malloc_arenas()
    stop = SignalStop()
    node = Node(config)
    try:
        if args.once:
            return node.run_once()
        return node.run(stop)
    finally:
        node.close()


def cmd_sync(args: argparse.Namespace) -> int:
    from gitmq.node import Node

    config = node_config.load(args.config)
    if args.wake:
        from gitmq import eager
        from gitmq.storage import Storage

        with Storage(config.storage_path, create=False) as storage:
            node = eager.wake(storage)
        print(f"asked node {node} to sync with every remote now")
        return 0
    node_config.check_handlers(config)
    runner = Node(config)
    try:  # the first sync of a new node fetches the whole queue: say what runs
        with progress.stages(f"sync {config.name}", quiet=args.quiet) as step:
            reports = []
            for name in runner.targets:
                step(f"with {name}")
                reports.append(runner.sync_remote(name))
    finally:
        runner.close()
    for report in reports:
        print(report.line())
    failed = [r for r in reports if not r.ok]
    if failed:
        raise RemoteError(failed[-1].error or "; ".join(failed[-1].rewritten + failed[-1].refused))
    return 0


def cap_malloc_arenas() -> None:
    """Two malloc arenas, as ``MALLOC_ARENA_MAX=2`` gives, unless the operator set it:
    glibc gives each thread that allocates an arena of its own (up to 8 per core) and
    rarely hands their memory back, so a long-running node's RSS climbs in steps as
    its consumer and scheduler threads take turns. Not glibc (musl): nothing to do."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX


def cmd_config_check(args: argparse.Namespace) -> int:
    config = node_config.load(args.file)
    if not args.skip_handlers:
        node_config.check_handlers(config)
    print(
        f"{args.file}: ok (node {config.name}: {len(config.queues)} queues, "
        f"{len(config.consumers)} consumers, {len(config.remotes)} remotes)"
    )
    return 0
