"""Bootstrap and check the GitHub side of a deployment (docs/github.md).

Nodes push queue branches to one GitHub repository with deploy keys, and the
remote is the sequencer: a force-push or a deleted branch there would lose or
reorder messages on every node. So GitHub must hold the repository (private
unless told otherwise), one branch per queue protected against force-push and
deletion (by classic branch protection or by rulesets), no rule that refuses the
nodes' pushes, and one deploy key with write access per node.

:func:`setup` makes it so and returns what it changed (nothing on a second
run); :func:`check` changes nothing and returns what is wrong, plus notes that
do not fail it. Both act with a token that has admin rights on the repository,
or as a GitHub App installation; credentials are only ever sent to GitHub.

This module holds the session with GitHub, the repository and the two entry
points; ``github_branches`` (queue branches, protection and rulesets),
``github_keys`` (deploy keys) and ``github_local`` (the git client and the read
budget) hold the rest, and ``github_base`` the types and errors they share, all
importable from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jwt
from github import Auth, Github, GithubException
from github.Repository import Repository

from gitmq.github_base import (
    APP_RIGHTS,
    PAID_PLAN,
    TOKEN_RIGHTS,
    Change,
    DeployKey,
    GithubError,
    GithubTarget,
    PaidPlanError,
    Problem,
    ReadLoad,
    calling,
    message_of,
    repo_subject,
)
from gitmq.github_branches import (
    README,
    ROOT_MESSAGE,
    RULESET_NAME,
    SEGMENTS_PATTERN,
    check_branch,
    check_segments,
    setup_branch,
    setup_ruleset,
    wanted_ruleset,
)
from gitmq.github_keys import check_keys, setup_keys
from gitmq.github_local import MIN_GIT, budget_problem, git_client_problem

__all__ = [
    "APP_RIGHTS",
    "MIN_GIT",
    "PAID_PLAN",
    "README",
    "ROOT_MESSAGE",
    "RULESET_NAME",
    "SEGMENTS_PATTERN",
    "TOKEN_RIGHTS",
    "ApiCredentials",
    "Change",
    "DeployKey",
    "GithubError",
    "GithubTarget",
    "PaidPlanError",
    "Problem",
    "ReadLoad",
    "budget_problem",
    "check",
    "git_client_problem",
    "setup",
    "wanted_ruleset",
]

ApiCredentials = (
    str | Auth.Token | Auth.AppInstallationAuth
)  # a token, or a GitHub App installation


@dataclass(frozen=True)
class _Session:
    gh: Github
    target: GithubTarget
    login: str | None  # the token's user; None for a GitHub App installation
    who: str  # "the token" or "GitHub App 1 (installation 2)"


def setup(
    target: GithubTarget,
    credentials: ApiCredentials,
    *,
    throttle: bool = True,
    ruleset: bool = False,
) -> list[Change]:
    """Create and protect whatever is missing; idempotent.

    With ``ruleset``, also keep the repository ruleset "gitmq queues" that blocks
    force-pushes on every queue branch and segment (classic protection is per
    exact branch name; segments are created by nodes).
    """
    changes: list[Change] = []
    with _session(target, credentials, throttle) as s:
        repo = _find_repo(s)
        if repo is None:
            repo = _create_repo(s)
            changes.append(Change(repo_subject(target), f"created ({_visibility(repo)})"))
        else:
            _require_admin(s, repo)
            if target.private and not repo.private:
                with calling(f"making repository {target.repository} private"):
                    repo.edit(private=True)
                changes.append(Change(repo_subject(target), "made private"))
        for name in target.branches:
            changes += setup_branch(repo, target, name)
        if ruleset:
            changes += setup_ruleset(repo, target)
        changes += setup_keys(repo, target)
    return changes


def check(
    target: GithubTarget, credentials: ApiCredentials, *, throttle: bool = True
) -> list[Problem]:
    """Report, one per issue, what is wrong (and notes); changes nothing."""
    with _session(target, credentials, throttle) as s:
        repo = _find_repo(s)
        if repo is None:
            return [Problem(repo_subject(target), f"does not exist (or {s.who} cannot see it)")]
        _require_admin(s, repo)
        problems: list[Problem] = []
        if target.private and not repo.private:
            problems.append(Problem(repo_subject(target), "public, but the config asks private"))
        plan_limited = False
        for name in target.branches:
            try:
                problems += check_branch(repo, name)
            except PaidPlanError:
                plan_limited = True
        if plan_limited:
            problems.append(Problem(repo_subject(target), PAID_PLAN))
        for queue in target.segmented:
            problems += check_segments(repo, queue)
        problems += check_keys(repo, target)
    if target.load is not None:
        problems.append(budget_problem(target.load))
    return problems


# --- the session and the repository -----------------------------------------------


@contextmanager
def _session(
    target: GithubTarget, credentials: ApiCredentials, throttle: bool
) -> Iterator[_Session]:
    # No retries: a rate limit or an outage is reported at once with what to do
    # (setup is idempotent, run it again) instead of blocking for up to an hour.
    pacing: dict[str, Any] = {}
    if not throttle:
        pacing = {"seconds_between_requests": 0, "seconds_between_writes": 0}
    auth = Auth.Token(credentials) if isinstance(credentials, str) else credentials
    gh = Github(
        auth=auth,
        base_url=target.base_url,
        retry=None,
        per_page=100,
        user_agent="gitmq",
        **pacing,
    )
    try:
        if isinstance(auth, Auth.AppInstallationAuth):
            _mint(auth)
            who = f"GitHub App {auth.app_id} (installation {auth.installation_id})"
            yield _Session(gh, target, None, who)
        else:
            login = _login(gh)  # installation tokens may not read /user: tokens only
            yield _Session(gh, target, login, "the token")
    finally:
        gh.close()


def _mint(auth: Auth.AppInstallationAuth) -> None:
    """Get the installation's first token now, so that its failure says what it is."""
    app = f"GitHub App {auth.app_id}"
    with calling(f"getting an installation token of {app}"):
        try:
            auth.token  # noqa: B018 - the property asks GitHub for a token
        except GithubException as exc:
            if exc.status == 401:
                raise GithubError(
                    f"{app}: GitHub refused its signed request for a token (401: "
                    f"{message_of(exc)}): check github.app.app_id and github.app.private_key_file "
                    f"against the app's settings page"
                ) from None
            if exc.status == 404:
                raise GithubError(
                    f"{app} has no installation {auth.installation_id}: check "
                    f"github.app.installation_id (the number at the end of the URL of the "
                    f"installation's settings page), and that the app is installed"
                ) from None
            raise
        except jwt.PyJWTError as exc:
            raise GithubError(
                f"{app}: cannot sign its request for a token with github.app.private_key_file "
                f"({exc}): download a new private key from the app's settings page"
            ) from None


def _login(gh: Github) -> str:
    with calling("reading the token's user"):
        login: str = gh.get_user().login
    return login


def _find_repo(s: _Session) -> Repository | None:
    with calling(f"reading repository {s.target.repository}"):
        try:
            return s.gh.get_repo(s.target.repository)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise


def _create_repo(s: _Session) -> Repository:
    target = s.target
    name = target.repository.partition("/")[2]
    with calling(f"creating repository {target.repository}"):
        try:
            if s.login is not None and target.owner.lower() == s.login.lower():
                return s.gh.get_user().create_repo(name, private=target.private, auto_init=False)
            _require_organisation(s)
            org = s.gh.get_organization(target.owner)
            return org.create_repo(name, private=target.private, auto_init=False)
        except GithubException as exc:
            if exc.status == 422 and "already exists" in message_of(exc):
                who = s.who if s.login is None else f"the token's user {s.login}"
                raise GithubError(
                    f"repository {target.repository} already exists, but {who} cannot see "
                    f"it: ask an owner of {target.owner} for admin rights on it"
                ) from None
            raise


def _require_organisation(s: _Session) -> None:
    target = s.target
    try:
        kind = s.gh.get_user(target.owner).type
    except GithubException as exc:
        if exc.status != 404:
            raise
        raise GithubError(
            f"cannot create repository {target.repository}: there is no GitHub organisation "
            f"or user named {target.owner!r}"
        ) from None
    if kind == "Organization":
        return
    if s.login is None:
        raise GithubError(
            f"cannot create repository {target.repository}: {target.owner} is a user account "
            f"and {s.who} can create repositories only in an organisation: create it by hand "
            f"and add it to the installation, or run setup with a token of {target.owner}"
        )
    raise GithubError(
        f"cannot create repository {target.repository}: {target.owner} is another user's "
        f"account; a token can create repositories only for its own user ({s.login}) or "
        f"for an organisation"
    )


def _require_admin(s: _Session, repo: Repository) -> None:
    # An installation has no role on the repository, only its app's permissions:
    # a missing one shows as 403 "Resource not accessible by integration".
    if s.login is not None and not repo.permissions.admin:
        raise GithubError(
            f"repository {s.target.repository} belongs to {repo.owner.login} and the token's "
            f"user {s.login} is not an admin of it: use a token of one of its admins, or "
            f"choose another repository"
        )


def _visibility(repo: Repository) -> str:
    return "private" if repo.private else "public"
