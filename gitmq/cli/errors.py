"""The one error handler at the CLI edge (docs/cli.md lists the exit codes)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import NoReturn

from gitmq.errors import GitMQError

EXIT_INTERRUPTED = 130
EXIT_BUG = 70
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one ``error: ...`` line like every other
    error (argparse prints the whole usage first); ``--help`` still shows it."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, found {value}")
    return value


def guarded(func: Callable[[], int]) -> int:
    """Run a command function; turn every failure into a line on stderr and an exit code."""
    try:
        return func()
    except GitMQError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `gitmq log | head`); not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        fd, path = tempfile.mkstemp(prefix="gitmq-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        print(
            f"error: internal error ({type(exc).__name__}: {exc}); this is a bug, "
            f"the traceback is in {path}",
            file=sys.stderr,
        )
        return EXIT_BUG
