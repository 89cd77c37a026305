"""``gitmq status [PATH] [--config FILE] [--json] [--watch]``: see into a node.

The figures come from ``gitmq/status.py``; this module only draws them. On a
terminal the tables are rich's; anywhere else (a pipe, a file, a log) they are
plain text: no colour, no box drawing, columns padded to the widest cell so
that each line keeps its place from one run to the next. ``--watch`` redraws
every second (in place on a terminal, with ``rich.live``; a new block each
second elsewhere) until SIGINT or SIGTERM, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gitmq import config as node_config
from gitmq.cli import where
from gitmq.cli.signals import SignalStop
from gitmq.status import storage_status
from gitmq.storage import Storage
from gitmq.units import format_duration

NONE = "-"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status", help="the node, its queues, consumers and remotes: counts, lag, last sync"
    )
    where.add_storage(p)
    p.add_argument("--json", action="store_true", help="print it all as JSON")
    p.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    path = where.storage_path(args)
    config = node_config.load(args.config) if args.config is not None else None
    with Storage(path, create=False) as storage:

        def snapshot() -> dict[str, Any]:
            return storage_status(storage, time.time(), config)

        if args.watch:
            return _watch(snapshot, args.json)
        status = snapshot()
        if args.json:
            print(json.dumps(status, indent=2))
        elif sys.stdout.isatty():
            _rich_console().print(rich_view(view(status)))
        else:
            sys.stdout.write(plain(view(status)))
    return 0


def _watch(snapshot: Callable[[], dict[str, Any]], as_json: bool) -> int:
    stop = SignalStop()
    if as_json or not sys.stdout.isatty():
        while True:
            status = snapshot()
            text = json.dumps(status) + "\n" if as_json else plain(view(status)) + "\n"
            sys.stdout.write(text)
            sys.stdout.flush()
            if stop.wait(1.0):
                return 0
    from rich.live import Live

    with Live(rich_view(view(snapshot())), console=_rich_console(), auto_refresh=False) as live:
        while not stop.wait(1.0):
            live.update(rich_view(view(snapshot())), refresh=True)
    return 0


# ------------------------------------------------------------------ what is shown


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class View:
    """The status as lines and tables of text, drawn plain or by rich."""

    header: tuple[str, ...]
    tables: tuple[Table, ...]


def view(status: dict[str, Any]) -> View:
    remotes = status["remotes"]
    tables = [_queues(status["queues"]), _consumers(status["consumers"])]
    if remotes:
        tables.append(_remotes(remotes))
    paces = [(r["name"], r["pace"]) for r in remotes if r["pace"]]
    if paces:
        tables.append(Table("pace", ("REMOTE", "BUDGET AND PACE"), tuple(paces)))
    return View((_node_line(status["node"]),), tuple(tables))


def _node_line(node: dict[str, Any] | None) -> str:
    if node is None:
        return "node: none running (start one with 'gitmq node --config FILE')"
    since = datetime.fromtimestamp(float(node["started"]), UTC).isoformat(timespec="seconds")
    line = f"node: {node['node']} (process {node['pid']}, running since {since})"
    if node.get("observability"):
        line += f"; observability on {node['observability']}"
    return line


def _queues(queues: Sequence[dict[str, Any]]) -> Table:
    rows = tuple(
        (
            q["name"],
            str(q["messages"]),
            _shown(q["confirmed"]),
            _shown(q["unpushed"]) if q["remote"] else NONE,
            age(q["newest_age"]),
            str(q["dead_letters"]),
        )
        for q in queues
    )
    columns = ("QUEUE", "MESSAGES", "CONFIRMED", "UNPUSHED", "NEWEST", "DEAD")
    return Table("queues", columns, rows)


def _consumers(consumers: Sequence[dict[str, Any]]) -> Table:
    rows = []
    for c in consumers:
        position = c["position"][:12] if c["position"] else "beginning"
        running = NONE if c["running"] is None else ("yes" if c["running"] else "no")
        error = c["last_error"] or c["problem"]
        rows.append(
            (
                c["name"],
                c["queue"] or NONE,
                position,
                "?" if c["lag"] is None else str(c["lag"]),
                age(c["lag_seconds"]),
                running,
                _shown(c["delivered"]),
                _shown(c["dead_lettered"]),
                _flat(error) if error else NONE,
            )
        )
    columns = (
        "CONSUMER", "QUEUE", "POSITION", "LAG", "WAITING", "RUNNING", "DELIVERED", "DEAD",
        "LAST ERROR",
    )  # fmt: skip
    return Table("consumers", columns, tuple(rows))


def _remotes(remotes: Sequence[dict[str, Any]]) -> Table:
    rows = []
    for r in remotes:
        synced = NONE if r["last_sync_age"] is None else age(r["last_sync_age"]) + " ago"
        result = NONE if r["ok"] is None else ("ok" if r["ok"] else "failed")
        detail = r["error"] if r["ok"] is False and r["error"] else r["line"]
        rows.append(
            (
                r["name"],
                synced,
                result,
                NONE if r["down_for"] is None else age(r["down_for"]),
                _flat(detail) if detail else NONE,
            )
        )
    return Table("remotes", ("REMOTE", "SYNCED", "RESULT", "DOWN FOR", "LAST SYNC"), tuple(rows))


def _shown(value: object) -> str:
    return NONE if value is None else str(value)


def _flat(text: str) -> str:
    return " ".join(str(text).split())


def age(seconds: float | None) -> str:
    """``12s``, ``4m05s``, ``3h02m``, ``2d03h``; ``-`` for none."""
    return NONE if seconds is None else format_duration(seconds)


# ------------------------------------------------------------------ drawing


def plain(shown: View) -> str:
    """Text without colour or box drawing; every column as wide as its widest cell."""
    lines = list(shown.header)
    for table in shown.tables:
        lines.append(f"{table.title}:")
        if not table.rows:
            lines.append("  (none)")
            continue
        cells = [table.columns, *table.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
        for row in cells:
            lines.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            )
    return "\n".join(lines) + "\n"


def _rich_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def rich_view(shown: View) -> Any:
    """The same text as rich renderables, for a terminal."""
    from rich import box
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    parts: list[Any] = [Text(line) for line in shown.header]
    for table in shown.tables:
        out = RichTable(
            title=table.title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
        )
        for column in table.columns:
            out.add_column(column, overflow="fold")
        for row in table.rows:
            out.add_row(*(Text(cell) for cell in row))  # Text: no markup in queue names
        parts.append(out)
    return Group(*parts)
