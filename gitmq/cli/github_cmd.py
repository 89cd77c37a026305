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
from typing import TYPE_CHECKING

from gitmq import config as node_config
from gitmq.cli.errors import guarded
from gitmq.errors import ConfigError, UsageError

if TYPE_CHECKING:  # PyGithub takes a third of a second to import: only when used
    from gitmq.github import GithubTarget

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
    from gitmq import github

    changes = github.setup(target, _token(args.token_env))
    for change in changes:
        print(change)
    if not changes:
        print("setup: nothing to change")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    target = github_target_from_config(args.config)
    from gitmq import github

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


# --- from the node config -----------------------------------------------------


def github_target_from_config(path: Path) -> GithubTarget:
    """The GitHub target of a node config: its ``github:`` section and its queues.

    The queue branches are the queues whose remote's URL names the repository
    (``git@host:owner/name.git``, ``ssh://...`` or ``https://...``; the host is
    not compared), then the dead-letter queues of their consumers, as sync
    pushes them. A rotating queue's later segments are made by the nodes.
    """
    from gitmq.github import DeployKey, GithubTarget

    config = node_config.load(path)
    if config.github is None:
        raise ConfigError(f"{path}: github: is required for 'gitmq github'")
    repository = config.github.repository
    branches: list[str] = []
    for name, remote in config.remotes.items():
        if _repository_of(remote.url) == repository.lower():
            branches += [q for q in config.synced_queues(name) if q not in branches]
    if not branches:
        raise ConfigError(
            f"{path}: no queue has a remote whose url names {repository}: "
            f"nothing to set up on GitHub"
        )
    return GithubTarget(
        repository=repository,
        branches=tuple(branches),
        deploy_keys=tuple(DeployKey(k.title, k.key) for k in config.github.deploy_keys),
        private=config.github.private,
        base_url=config.github.base_url,
    )


def _repository_of(url: str) -> str:
    """``owner/name`` of a git URL, lower-cased: GitHub names are case-insensitive."""
    # scp-like URLs have no scheme: git@github.com:owner/name.git
    repo_path = urllib.parse.urlsplit(url).path if "://" in url else url.partition(":")[2]
    return repo_path.strip("/").removesuffix(".git").lower()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gitmq.cli.github_cmd github ...``: this command without the main CLI."""
    parser = argparse.ArgumentParser(prog="gitmq")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return guarded(lambda: int(args.func(args)))


if __name__ == "__main__":
    sys.exit(main())
