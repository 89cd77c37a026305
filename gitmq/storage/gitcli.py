"""Running the git command line: one place, hermetic, with timeouts.

Every git process GitMQ starts goes through :func:`run`. The environment is
rebuilt from scratch so that the user's global config, hooks, signing prompts
and any ``GIT_*`` variable leaking in from the caller cannot change what is
written. Automatic gc and maintenance are off: GitMQ packs objects itself,
off the publish path (see ``docs/operations.md``).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from gitmq.errors import GitCommandError, RemoteError, StorageError

log = logging.getLogger("gitmq.git")

# Variables of the caller's environment that git may still use. Everything
# else that starts with GIT_ is dropped.
_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSH_AUTH_SOCK", "TZ")
_KEEP_GIT = ("GIT_SSH_COMMAND", "GIT_TERMINAL_PROMPT")

CONFIG_OVERRIDES: tuple[str, ...] = (
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "core.hooksPath=/dev/null",
    "-c", "commit.gpgSign=false",
    "-c", "tag.gpgSign=false",
    "-c", "fetch.writeCommitGraph=false",
    "-c", "fetch.showForcedUpdates=false",
    "-c", "advice.detachedHead=false",
)  # fmt: skip


def hermetic_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a git child process, built from a short allow-list."""
    env = {k: v for k, v in os.environ.items() if k in _KEEP or k in _KEEP_GIT}
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def run(
    git_dir: Path | None,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float | None = 120.0,
    check: bool = True,
    network: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git [--git-dir] ARGS`` and return the finished process.

    A non-zero exit raises :class:`GitCommandError` (when ``check``); a timeout
    raises :class:`RemoteError` for network commands and ``GitCommandError``
    otherwise, after killing the child.
    """
    argv = ["git", *CONFIG_OVERRIDES]
    if git_dir is not None:
        argv.append(f"--git-dir={git_dir}")
    argv.extend(args)
    try:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            env=hermetic_env(env),
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except OSError as exc:  # no git on PATH, or no process could be started
        raise StorageError(
            f"cannot run git ({exc.strerror}); is git installed and on PATH?"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        shown = " ".join(shown_args(args))
        if network:
            raise RemoteError(f"git {shown} timed out after {timeout:g}s") from exc
        raise GitCommandError(shown_args(argv), -1, "", f"timed out after {timeout:g}s") from exc
    if check and proc.returncode != 0:
        log.debug("git %s exited %d: %s", args[:1], proc.returncode, proc.stderr[-4000:])
        raise GitCommandError(
            ["git", *shown_args(args)],
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )
    return proc


def shown_args(args: Sequence[str]) -> list[str]:
    """Arguments worth printing: without the ``-c`` overrides and ``--end-of-options``
    we add ourselves."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "-c":
            skip = True
            continue
        if a != "--end-of-options":
            out.append(a)
    return out
