"""The Ruby gem's command lines, kept as they were.

``gitmq-produce PATH BRANCH`` publishes each line of stdin, stripped as Ruby's
``String#strip`` does, and exits 0 at end of input; ``gitmq-consume PATH BRANCH
CONSUMER`` prints each message as Ruby's ``puts`` does (a newline only where the
payload lacks one) until SIGINT or SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gitmq.cli import consume_cmd, queue_cmds
from gitmq.cli.errors import Parser, guarded


def produce_main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="gitmq-produce", description="Publish one message per line of stdin.")
    parser.add_argument("path", help="storage path (created if missing)")
    parser.add_argument("branch", help="queue (branch) name")
    args = parser.parse_args(argv)
    ns = argparse.Namespace(
        path=args.path,
        queue=args.branch,
        payload=None,
        header=[],
        lines=True,
        strip=True,  # the gem publishes line.strip
        author=None,
        max_payload=1 << 20,
        quiet=True,  # the gem draws no progress bar
        config=None,
    )
    return guarded(lambda: queue_cmds.cmd_publish(ns))


def consume_main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog="gitmq-consume", description="Print each message of a queue as it arrives."
    )
    parser.add_argument("path", help="storage path")
    parser.add_argument("branch", help="queue (branch) name")
    parser.add_argument("consumer", help="consumer name (offset tag)")
    args = parser.parse_args(argv)
    ns = argparse.Namespace(
        path=args.path,
        queue=args.branch,
        consumer=args.consumer,
        exec_cmd=None,
        json=False,
        drain=False,
        max_attempts=5,
        dead_letter=None,
        count=None,
        timeout=None,
        from_=None,
        config=None,
        puts=True,  # the gem prints with puts: a newline only where one is missing
        quiet=True,  # the gem draws no progress bar
    )
    return guarded(lambda: consume_cmd.cmd_consume(ns))


if __name__ == "__main__":
    sys.exit(produce_main())
