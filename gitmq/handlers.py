"""Message handlers given by name: an external command or a Python function.

A command runs without a shell: it gets the payload on stdin and the metadata
in ``GITMQ_*`` environment variables; exit status 0 acknowledges the message,
anything else fails it (and the consumer retries, then dead-letters).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gitmq.errors import GitMQError, UsageError
from gitmq.message import Message

_ENV_SAFE = re.compile(r"[^A-Za-z0-9]")


class HandlerFailed(GitMQError):
    """A handler command exited non-zero or timed out."""


def message_env(message: Message, queue: str, consumer: str) -> dict[str, str]:
    """The ``GITMQ_*`` variables that describe ``message`` to a command."""
    env = {
        "GITMQ_ID": message.id,
        "GITMQ_SHA": message.sha,
        "GITMQ_QUEUE": queue,
        "GITMQ_CONSUMER": consumer,
        "GITMQ_AUTHOR": str(message.author),
        "GITMQ_TIME": message.time.isoformat(),
    }
    for name, value in message.headers.items():
        env[header_variable(name)] = value
    return env


def header_variable(name: str) -> str:
    """The environment variable that carries header ``name`` to a command."""
    return "GITMQ_HEADER_" + _ENV_SAFE.sub("_", name).upper()


@dataclass(frozen=True)
class CommandHandler:
    """Runs ``argv`` for each message."""

    argv: tuple[str, ...]
    queue: str
    consumer: str
    timeout: float | None = None

    def __call__(self, message: Message) -> None:
        env = dict(os.environ)
        env.update(message_env(message, self.queue, self.consumer))
        try:
            proc = subprocess.run(
                self.argv,
                input=message.payload,
                env=env,
                stdout=None,
                stderr=subprocess.PIPE,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise HandlerFailed(f"handler command {self.argv[0]!r} not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise HandlerFailed(f"handler command timed out after {self.timeout}s") from exc
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            detail = f": {tail[0]}" if tail else ""
            raise HandlerFailed(f"handler command exited {proc.returncode}{detail}")


def command_handler(
    argv: Sequence[str], queue: str, consumer: str, timeout: float | None = None
) -> CommandHandler:
    if not argv or not argv[0]:
        raise UsageError("a handler command needs at least a program name")
    check_program(argv[0])
    return CommandHandler(tuple(argv), queue, consumer, timeout)


def check_program(program: str) -> None:
    """Refuse a handler program that cannot run: every message would fail on it and
    go to the dead-letter queue."""
    if shutil.which(program) is None:
        where = "" if "/" in program else " on PATH"
        raise UsageError(
            f"handler command {program!r} is not an executable file{where}; install it or "
            f"fix the name (nothing was consumed)"
        )


def python_handler(spec: str) -> Callable[[Message], object]:
    """Import ``package.module:function`` and return the function."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"python handler {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"python handler {spec!r}: cannot import {module_name!r}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise UsageError(f"python handler {spec!r}: {module_name} has no function {attr!r}")
    return func  # type: ignore[no-any-return]
