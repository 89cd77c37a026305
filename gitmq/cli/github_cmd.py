"""``gitmq github setup|check``: the GitHub side of the queues of a node config.

The token comes from an environment variable, never from argv (which every
user of the machine can read) or from the config file. With ``github.app`` in
the config, setup and check act as that GitHub App's installation instead.
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
    from gitmq.github import ApiCredentials, GithubTarget, Problem

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
            metavar="NAME",
            help=f"environment variable that holds the GitHub token (default: "
            f"{DEFAULT_TOKEN_ENV}, unless the config has github.app)",
        )
        action.set_defaults(func=func)
    setup_parser = actions.choices["setup"]
    setup_parser.add_argument(
        "--ruleset",
        action="store_true",
        help="also keep the repository ruleset 'gitmq queues': no force-push on queue "
        "branches and their segments",
    )


def cmd_setup(args: argparse.Namespace) -> int:
    config = node_config.load(args.config)
    target = target_from(config)
    from gitmq import github

    changes = github.setup(target, _credentials(args, config), ruleset=args.ruleset)
    for change in changes:
        print(change)
    if not changes:
        print("setup: nothing to change")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = node_config.load(args.config)
    target = target_from(config)
    from gitmq import github

    local = _git_client_problem()  # before GitHub, so that it shows even if GitHub fails
    problems = [*local, *github.check(target, _credentials(args, config))]
    for problem in problems:
        print(problem)
    if any(problem.blocking for problem in problems):
        return 1
    print("check: ok")
    return 0


def _git_client_problem() -> list[Problem]:
    from gitmq.github import git_client_problem
    from gitmq.storage import gitcli

    version = gitcli.run(None, ["--version"], timeout=30).stdout.decode("utf-8", "replace")
    problem = git_client_problem(version)
    return [] if problem is None else [problem]


def _credentials(args: argparse.Namespace, config: node_config.NodeConfig) -> ApiCredentials:
    """A token from ``--token-env``; else the config's GitHub App; else ``$GITHUB_TOKEN``."""
    app = config.github.app if config.github else None
    if args.token_env is None and app is not None:
        from gitmq.github_app import installation_auth

        try:
            return installation_auth(app)
        except OSError as exc:
            raise ConfigError(
                f"{config.file}: github.app.private_key_file: cannot read "
                f"{app.private_key_file} ({exc.strerror})"
            ) from None
    return _token(args.token_env or DEFAULT_TOKEN_ENV)


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
    return target_from(node_config.load(path))


def target_from(config: node_config.NodeConfig) -> GithubTarget:
    """The GitHub target of a loaded node config (see :func:`github_target_from_config`).

    Its segmented queues are the rotating ones; its read load counts one node per
    deploy key (at least one) on the sync schedule of this config.
    """
    from gitmq.github import DeployKey, GithubTarget, ReadLoad

    path = config.file
    if config.github is None:
        raise ConfigError(f"{path}: github: is required for 'gitmq github'")
    repository = config.github.repository
    branches: list[str] = []
    remotes = [n for n, r in config.remotes.items() if _repository_of(r.url) == repository.lower()]
    for name in remotes:
        branches += [q for q in config.synced_queues(name) if q not in branches]
    if not branches:
        raise ConfigError(
            f"{path}: no queue has a remote whose url names {repository}: "
            f"nothing to set up on GitHub"
        )
    rotating = [q.name for q in config.queues.values() if q.rotate and q.name in branches]
    load = ReadLoad(
        remote=remotes[0],
        budget=config.remotes[remotes[0]].budget,
        nodes=max(1, len(config.github.deploy_keys)),
        interval=config.sync.interval,
        poll=config.sync.poll,
    )
    return GithubTarget(
        repository=repository,
        branches=tuple(branches),
        deploy_keys=tuple(DeployKey(k.title, k.key) for k in config.github.deploy_keys),
        private=config.github.private,
        base_url=config.github.base_url,
        segmented=tuple(rotating),
        load=load,
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
