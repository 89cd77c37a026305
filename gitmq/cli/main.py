"""``gitmq``: the main command and its subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from gitmq import __version__, demo
from gitmq.cli import (
    completion_cmd,
    consume_cmd,
    consumer_cmd,
    dlq_cmd,
    doctor_cmd,
    github_cmd,
    node_cmd,
    prune_cmd,
    queue_cmds,
    repair_cmd,
    status_cmd,
)
from gitmq.cli.errors import Parser, guarded

#: The commands, in the order ``gitmq --help`` lists them: a queue, its consumers and
#: dead letters, then a node and its remote, then the shell.
REGISTRATIONS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    queue_cmds.register,  # publish, log
    consume_cmd.register,
    status_cmd.register,
    doctor_cmd.register,
    consumer_cmd.register,  # consumer list|delete|reset, seek
    dlq_cmd.register,
    node_cmd.register,  # node, sync, config
    prune_cmd.register,
    repair_cmd.register,
    github_cmd.register,
    demo.register,
    completion_cmd.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gitmq",
        description="A message queue whose whole state is a Git repository.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 storage, 4 not found, 5 config, "
        "6 remote, 7 consumer conflict, 70 bug, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"gitmq {__version__}")
    # Subcommand parsers are Parsers too (argparse makes them of the parent's class).
    sub: argparse._SubParsersAction[argparse.ArgumentParser]
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)  # type: ignore[assignment]
    for register in REGISTRATIONS:
        register(sub)
    parser.set_defaults(parser=parser)  # gitmq completion describes the whole parser
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return guarded(lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
