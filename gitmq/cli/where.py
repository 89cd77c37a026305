"""Which storage a command works on: ``PATH``, ``--config FILE`` or ``GITMQ_STORAGE``.

Every command that works on one storage takes its path as an optional first
argument. When it is left out, the storage is the one named by ``--config
FILE`` (the node config's ``storage.path``), else by the environment variable
``GITMQ_STORAGE``. A path given as an argument wins over the environment;
giving both a path and ``--config`` is an error (which one was meant?).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from gitmq import names
from gitmq.errors import InvalidNameError, UsageError

ENV = "GITMQ_STORAGE"


def add_storage(p: argparse.ArgumentParser) -> None:
    """Declare ``[PATH]`` and ``--config FILE`` on ``p`` (the path comes first)."""
    p.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help=f"storage path (a bare git repository); default: --config's storage, else ${ENV}",
    )
    p.add_argument("--config", metavar="FILE", help="take the storage path from this node config")


def storage_path(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Path:
    """The storage ``args`` name (see the module doc); a UsageError saying how to name one."""
    env = os.environ if environ is None else environ
    path, config_file = getattr(args, "path", None), getattr(args, "config", None)
    if path is not None and config_file is not None:
        raise UsageError(
            f"both a storage path ({path}) and --config {config_file} are given; give one"
        )
    if path == "":  # Path("") is the working directory: never what was meant
        raise UsageError(
            f"the storage path is empty (''); give the storage's path, --config FILE, or set {ENV}"
        )
    if path is not None:
        return Path(path)
    if config_file is not None:
        from gitmq import config  # the loader only when a config is named

        return config.load(config_file).storage_path
    if env.get(ENV):
        return Path(env[ENV])
    raise UsageError(
        f"which storage? give its path as the first argument, --config FILE, or set {ENV}"
    )


def storage_given(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the storage comes from somewhere other than the PATH argument (then a
    command whose later arguments are optional reads its first word as one of them)."""
    env = os.environ if environ is None else environ
    return getattr(args, "config", None) is not None or bool(env.get(ENV))


def shift_words(args: argparse.Namespace, words: Sequence[str]) -> None:
    """Read ``PATH W1 ... Wn-1`` as ``W1 ... Wn`` when the storage is given elsewhere.

    A command like ``publish [PATH] QUEUE [PAYLOAD]`` cannot tell ``PATH QUEUE``
    from ``QUEUE PAYLOAD`` by counting words; argparse fills PATH first. When the
    storage comes from ``--config`` or ``$GITMQ_STORAGE`` and the last of ``words``
    is missing, every word moves one place to the right: the first was no path.
    """
    if args.path is None or getattr(args, words[-1]) is not None or not storage_given(args):
        return
    values = [args.path, *(getattr(args, w) for w in words[:-1])]
    args.path = None
    for word, value in zip(words, values, strict=True):
        setattr(args, word, value)


def check_queue(args: argparse.Namespace, name: str, what: str = "the queue") -> str:
    """``names.check_queue``, with a hint when a name that looks like a path was read as
    a queue because the storage came from ``--config`` or ``$GITMQ_STORAGE``."""
    try:
        return names.check_queue(name)
    except InvalidNameError as exc:
        source = _source(args)
        if source is None or not _looks_like_a_path(name):
            raise
        raise InvalidNameError(
            f"{exc.message} ({source}, so {name!r} was read as {what}, not as a storage "
            f"path: give the storage one way only)"
        ) from None


def _source(args: argparse.Namespace) -> str | None:
    """Where the storage came from when not from the PATH argument."""
    if getattr(args, "path", None) is not None:
        return None
    if getattr(args, "config", None) is not None:
        return "--config is given"
    return f"{ENV} is set" if os.environ.get(ENV) else None


def _looks_like_a_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.endswith(("/", ".git")) or "//" in name
