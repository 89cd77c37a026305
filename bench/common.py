"""What every benchmark prints in its headline."""

from __future__ import annotations

import subprocess
from pathlib import Path


def code_version() -> str:
    """The commit of the GitMQ code measured, marked when gitmq/ has local changes."""
    here = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True)
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "gitmq") else "")
