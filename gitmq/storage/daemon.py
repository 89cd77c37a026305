"""Serving a directory of repositories over git:// on 127.0.0.1 (``git daemon``).

For the demo and the benchmarks: a central remote anyone can run locally.
Production nodes talk to GitHub or another real git server instead.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from gitmq.errors import StorageError
from gitmq.storage.gitcli import hermetic_env


def start_git_daemon(root: Path, log: Path | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``git daemon`` (push enabled, no auth) in its own process group on a
    free port; returns the process and the port once it accepts connections.
    With ``log``, every request is written there (``--verbose``), e.g. to count them."""
    verbose = ["--verbose", "--log-destination=stderr"] if log else []
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sink = log.open("ab") if log else None
        proc = subprocess.Popen(
            ["git", "daemon", *verbose, "--reuseaddr", "--export-all", "--enable=receive-pack",
             "--informative-errors", f"--base-path={root}", "--listen=127.0.0.1",
             f"--port={port}", str(root)],
            env=hermetic_env(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=sink or subprocess.DEVNULL,
        )  # fmt: skip
        if sink is not None:
            sink.close()  # the daemon has its own copy
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return proc, port
            time.sleep(0.02)
        if proc.poll() is None:  # the port was taken meanwhile: try another
            proc.kill()
        proc.wait()
    raise StorageError("could not start git daemon on 127.0.0.1 (is git installed?)")
