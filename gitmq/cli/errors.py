"""The one error handler at the CLI edge (docs/cli.md lists the exit codes)."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable

from gitmq.errors import GitMQError

EXIT_INTERRUPTED = 130
EXIT_BUG = 70


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
