"""The one exception family of GitMQ.

Every expected failure is a :class:`GitMQError` subclass that carries the exit
code the CLI uses and a message that says what went wrong and what to do next.
"""

from __future__ import annotations


class GitMQError(Exception):
    """Base of every error GitMQ raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(GitMQError):
    """A bad argument or value given by the user (exit 2, like argparse)."""

    exit_code = 2


class InvalidNameError(UsageError):
    """A queue or consumer name that cannot be a Git ref."""


class PayloadTooLargeError(UsageError):
    """A payload over the configured size limit; nothing was written."""


class StorageError(GitMQError):
    """The repository is missing, unreadable or not a GitMQ storage."""

    exit_code = 3


class GitCommandError(StorageError):
    """A git command failed; the message shows the command, status and stderr."""

    def __init__(self, argv: list[str], status: int, stdout: str, stderr: str) -> None:
        self.argv = argv
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        shown = " ".join(argv)
        said = [ln.strip() for ln in (stderr or stdout).splitlines() if ln.strip()]
        # One line: git's "fatal:" or "error:" line, else its last; all of it is in
        # .stderr (and in the debug log, gitcli.run).
        detail = next((ln for ln in said if ln.startswith(("fatal:", "error:"))), None)
        detail = detail or (said[-1] if said else "(no output)")
        super().__init__(f"git command failed (exit {status}): {shown}: {detail}")


class RefConflictError(StorageError):
    """A compare-and-swap on a ref lost to another writer after every retry."""


class NotFoundError(GitMQError):
    """A queue, consumer or message that does not exist."""

    exit_code = 4


class ConfigError(GitMQError):
    """An invalid configuration file; the message names the file and key path."""

    exit_code = 5


class RemoteError(GitMQError):
    """The remote could not be reached or refused us (auth, network, timeout)."""

    exit_code = 6


class ConsumerConflictError(GitMQError):
    """Two writers moved one consumer offset in ways that cannot both be true."""

    exit_code = 7
