"""``gitmq doctor --config FILE [--json]``: check a node's setup, one line per finding.

Exit 0 when every finding is ``ok`` or ``warn``, 1 when one is ``FAIL``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from gitmq import config as node_config
from gitmq import doctor


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check a node's remotes, clock, disk, locks, consumers, handlers and budget",
    )
    p.add_argument("--config", metavar="FILE", required=True, help="the node config to check")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    config = node_config.load(args.config)
    found = doctor.diagnose(config, os.environ, time.time())
    if args.json:
        shown = [
            {"level": f.level.value, "subject": f.subject, "text": f.text, "line": f.line()}
            for f in found
        ]
        print(json.dumps({"config": str(config.file), "findings": shown}, indent=2))
    else:
        for finding in found:
            print(finding.line())
    return doctor.exit_code(found)
