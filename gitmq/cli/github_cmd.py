"""``gitmq github setup|check``: the GitHub side of the queues of a node config.

The token comes from an environment variable, never from argv (which every
user of the machine can read) or from the config file.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gitmq import github
from gitmq.cli.errors import guarded
from gitmq.consumer import dead_letter_queue
from gitmq.errors import ConfigError, UsageError
from gitmq.github import DeployKey, GithubTarget

DEFAULT_TOKEN_ENV = "GITHUB_TOKEN"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "github",
        help="create or check the GitHub repository, branches and deploy keys of the queues",
        description="Bootstrap GitHub for the queues of a node config (docs/github.md).",
    )
    actions = parser.add_subparsers(dest="github_action", metavar="ACTION", required=True)
    for name, func, summary in (
        ("setup", cmd_setup, "create what is missing, print one line per change"),
        ("check", cmd_check, "change nothing, print one line per problem (exit 1 if any)"),
    ):
        action = actions.add_parser(name, help=summary, description=summary)
        action.add_argument(
            "--config", required=True, type=Path, metavar="FILE", help="the node config (YAML)"
        )
        action.add_argument(
            "--token-env",
            default=DEFAULT_TOKEN_ENV,
            metavar="NAME",
            help="environment variable that holds the GitHub token (default: %(default)s)",
        )
        action.set_defaults(func=func)


def cmd_setup(args: argparse.Namespace) -> int:
    target = github_target_from_config(args.config)
    changes = github.setup(target, _token(args.token_env))
    for change in changes:
        print(change)
    if not changes:
        print("setup: nothing to change")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    target = github_target_from_config(args.config)
    problems = github.check(target, _token(args.token_env))
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print("check: ok")
    return 0


def _token(name: str) -> str:
    token = os.environ.get(name, "").strip()
    if not token:
        raise UsageError(
            f"environment variable {name} is not set: put a GitHub token with admin rights "
            f"on the repository in it, or name another variable with --token-env"
        )
    return token


# --- reading the node config --------------------------------------------------
# Deliberately small and isolated: it reads only the keys it needs and will be
# replaced by the validated config module (gitmq.config).


def github_target_from_config(path: Path) -> GithubTarget:
    """The GitHub target of a node config: its ``github:`` section and its queues.

    The queue branches are the queues whose remote's URL names the repository
    (``git@host:owner/name.git``, ``ssh://...`` or ``https://...``; the host is
    not compared), then the dead-letter queues of their consumers, as sync
    pushes them. ``key_file`` paths are relative to the config file.
    """
    doc = _load(path)
    section = _mapping(doc.get("github"), "github", path)
    repository = section.get("repository")
    if not isinstance(repository, str) or repository.count("/") != 1 or "" in repository.split("/"):
        raise ConfigError(f"{path}: github.repository: expected 'owner/name', found {repository!r}")
    keys = section.get("deploy_keys") or []
    if not isinstance(keys, list):
        raise ConfigError(f"{path}: github.deploy_keys: expected a list, found {keys!r}")
    base_url = section.get("base_url", GithubTarget.base_url)
    private = section.get("private", True)
    if not isinstance(base_url, str) or not isinstance(private, bool):
        raise ConfigError(f"{path}: github.base_url must be a URL and github.private true/false")
    deploy_keys = tuple(_deploy_key(item, n, path) for n, item in enumerate(keys))
    return GithubTarget(
        repository=repository,
        branches=_queue_branches(doc, repository, path),
        deploy_keys=deploy_keys,
        private=private,
        base_url=base_url,
    )


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return _mapping(doc, "the document", path)


def _mapping(value: object, where: str, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping, found {value!r}")
    return value


def _queue_branches(doc: dict[str, Any], repository: str, path: Path) -> tuple[str, ...]:
    remotes = doc.get("remotes") or {}
    queues = doc.get("queues") or {}
    if not isinstance(remotes, dict) or not isinstance(queues, dict):
        raise ConfigError(f"{path}: remotes and queues must be mappings")
    branches = [
        str(name)
        for name, spec in queues.items()
        if _repository_of(_remote_url(remotes, spec)) == repository.lower()
    ]
    consumers = doc.get("consumers") or {}
    for spec in consumers.values() if isinstance(consumers, dict) else ():
        # A dead-letter queue syncs with the remote of the queue it serves.
        queue = spec.get("queue") if isinstance(spec, dict) else None
        if queue in branches:
            dead_letter = str(spec.get("dead_letter") or dead_letter_queue(queue))
            branches += [] if dead_letter in branches else [dead_letter]
    if not branches:
        raise ConfigError(
            f"{path}: no queue has a remote whose url names {repository}: "
            f"nothing to set up on GitHub"
        )
    return tuple(branches)


def _remote_url(remotes: dict[str, Any], queue: object) -> str:
    remote = remotes.get(str(queue.get("remote"))) if isinstance(queue, dict) else None
    url = remote.get("url") if isinstance(remote, dict) else None
    return url if isinstance(url, str) else ""


def _repository_of(url: str) -> str:
    """``owner/name`` of a git URL, lower-cased: GitHub names are case-insensitive."""
    # scp-like URLs have no scheme: git@github.com:owner/name.git
    repo_path = urllib.parse.urlsplit(url).path if "://" in url else url.partition(":")[2]
    return repo_path.strip("/").removesuffix(".git").lower()


def _deploy_key(item: object, index: int, path: Path) -> DeployKey:
    where = f"github.deploy_keys[{index}]"
    entry = _mapping(item, where, path)
    title, key, key_file = entry.get("title"), entry.get("key"), entry.get("key_file")
    if not isinstance(title, str) or not title:
        raise ConfigError(f"{path}: {where}.title: expected a name, found {title!r}")
    if isinstance(key_file, str) and key is None:
        try:
            key = (path.parent / key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{path}: {where}.key_file: cannot read {key_file}: {exc.strerror}"
            ) from None
    if not isinstance(key, str) or len(key.split()) < 2:
        raise ConfigError(
            f"{path}: {where}: expected 'key: \"ssh-ed25519 AAAA... comment\"' or 'key_file: "
            f"FILE.pub', found {key!r}"
        )
    return DeployKey(title, key)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gitmq.cli.github_cmd github ...``: this command without the main CLI."""
    parser = argparse.ArgumentParser(prog="gitmq")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return guarded(lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
