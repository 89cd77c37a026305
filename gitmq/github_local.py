"""What check reports beyond GitHub: this machine's git client and the cluster's read load.

Both are known without asking GitHub: the version of git that runs here, and the
reads a minute that the config's sync schedule asks of the remote, against that
remote's budget (``gitmq.budget``).
"""

from __future__ import annotations

import re

from gitmq.github_base import Problem, ReadLoad

MIN_GIT = (2, 23)  # atomic pushes over https (smart HTTP)


def budget_problem(load: ReadLoad) -> Problem:
    """The cluster's reads a minute against the remote's budget: a note, a problem when over."""
    per_node = round(load.per_node, 1)
    total = round(load.nodes * load.per_node, 1)
    poll = f"{load.poll:g}s" if load.poll else "off"
    reads = (
        f"{load.nodes} node(s) at {per_node:g} reads a minute each (sync.interval "
        f"{load.interval:g}s, sync.poll {poll}) = {total:g} reads a minute"
    )
    limit = load.budget.reads_per_minute
    if limit is None:
        return Problem("budget", f"{reads}; remote {load.remote} has no read budget", False)
    of = f"remote {load.remote}'s budget of {limit:g}" + (
        " (the default for github.com)" if load.budget.default else ""
    )
    if total <= limit:
        return Problem("budget", f"{reads}, within {of}", blocking=False)
    return Problem(
        "budget",
        f"{reads}, over {of}: the nodes will sync less often than configured; raise "
        f"remotes.{load.remote}.budget.reads_per_minute, or lengthen sync.interval or sync.poll",
    )


def git_client_problem(version_output: str) -> Problem | None:
    """A problem if ``git --version`` shows a client too old for atomic pushes over https."""
    found = re.search(r"(\d+)\.(\d+)", version_output)
    if found is None:
        return Problem("git", f"cannot read the version of git from {version_output.strip()!r}")
    version = (int(found.group(1)), int(found.group(2)))
    if version >= MIN_GIT:
        return None
    shown = version_output.strip().removeprefix("git version ")
    return Problem(
        "git",
        f"version {shown} on this machine is older than 2.23, which atomic pushes over "
        f"https need: upgrade git",
    )
