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
from collections.abc import Mapping
from pathlib import Path

from gitmq.errors import UsageError

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
