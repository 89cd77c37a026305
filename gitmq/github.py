"""Bootstrap and check the GitHub side of a deployment (docs/github.md).

Nodes push queue branches to one GitHub repository with deploy keys, and the
remote is the sequencer: a force-push or a deleted branch there would lose or
reorder messages on every node. So GitHub must hold the repository (private
unless told otherwise), one branch per queue protected against force-push and
deletion, and one deploy key with write access per node.

:func:`setup` makes it so and returns what it changed (nothing on a second
run); :func:`check` changes nothing and returns what is wrong. Both need a token
with admin rights on the repository; it is only ever sent to GitHub.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from github import Auth, Github, GithubException, RateLimitExceededException
from github.Branch import Branch
from github.BranchProtection import BranchProtection
from github.Repository import Repository
from github.RepositoryKey import RepositoryKey

from gitmq.errors import RemoteError

ROOT_MESSAGE = "gitmq: queue {name} created"
README = """\
# GitMQ queues

Each queue branch of this repository is a GitMQ queue: every commit on it is a
message. Nodes push to it with deploy keys; do not commit here by hand.
This default branch only holds this file (GitHub cannot create branches in an
empty repository).
"""
TOKEN_RIGHTS = (
    "the token needs admin rights on the repository (classic token: scope 'repo'; "
    "fine-grained token: 'Administration' and 'Contents' read and write)"
)


class GithubError(RemoteError):
    """GitHub refused, or could not do, what setup or check asked (a GitMQError, exit 6)."""


@dataclass(frozen=True)
class DeployKey:
    title: str
    key: str  # public key text: "ssh-ed25519 AAAA... comment"

    @property
    def material(self) -> str:
        """Key type and blob: what GitHub stores and compares (it drops the comment)."""
        return " ".join(self.key.split()[:2])


@dataclass(frozen=True)
class GithubTarget:
    repository: str  # "owner/name"
    branches: tuple[str, ...]  # queue branches to create and protect
    deploy_keys: tuple[DeployKey, ...]
    private: bool = True
    base_url: str = "https://api.github.com"  # GitHub Enterprise: https://HOST/api/v3

    @property
    def owner(self) -> str:
        return self.repository.partition("/")[0]


@dataclass(frozen=True)
class Change:
    """One thing :func:`setup` did, e.g. ``branch orders: created``."""

    subject: str
    done: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.done}"


@dataclass(frozen=True)
class Problem:
    """One thing :func:`check` found wrong, e.g. ``deploy key node-a: missing``."""

    subject: str
    issue: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.issue}"


def setup(target: GithubTarget, token: str, *, throttle: bool = True) -> list[Change]:
    """Create and protect whatever is missing; idempotent."""
    changes: list[Change] = []
    with _client(target, token, throttle) as gh:
        login = _login(gh)
        repo = _find_repo(gh, target)
        if repo is None:
            repo = _create_repo(gh, target, login)
            changes.append(Change(_repo_subject(target), f"created ({_visibility(repo)})"))
        else:
            _require_admin(repo, target, login)
            if target.private and not repo.private:
                with _calling(f"making repository {target.repository} private"):
                    repo.edit(private=True)
                changes.append(Change(_repo_subject(target), "made private"))
        for name in target.branches:
            changes += _setup_branch(repo, target, name)
        changes += _setup_keys(repo, target)
    return changes


def check(target: GithubTarget, token: str, *, throttle: bool = True) -> list[Problem]:
    """Report, one per issue, what :func:`setup` would fix; changes nothing."""
    with _client(target, token, throttle) as gh:
        login = _login(gh)
        repo = _find_repo(gh, target)
        if repo is None:
            return [Problem(_repo_subject(target), "does not exist (or the token cannot see it)")]
        _require_admin(repo, target, login)
        problems: list[Problem] = []
        if target.private and not repo.private:
            problems.append(Problem(_repo_subject(target), "public, but the config asks private"))
        for name in target.branches:
            problems += [Problem(f"branch {name}", gap) for gap in _branch_gaps(repo, name)]
        for key, found in _deploy_keys(repo, target):
            if found is None:
                problems.append(Problem(f"deploy key {key.title}", "missing"))
            elif found.read_only:
                problems.append(Problem(f"deploy key {key.title}", "read-only; nodes push with it"))
        return problems


# --- the repository ---------------------------------------------------------


@contextmanager
def _client(target: GithubTarget, token: str, throttle: bool) -> Iterator[Github]:
    # No retries: a rate limit or an outage is reported at once with what to do
    # (setup is idempotent, run it again) instead of blocking for up to an hour.
    pacing: dict[str, Any] = {}
    if not throttle:
        pacing = {"seconds_between_requests": 0, "seconds_between_writes": 0}
    gh = Github(
        auth=Auth.Token(token),
        base_url=target.base_url,
        retry=None,
        per_page=100,
        user_agent="gitmq",
        **pacing,
    )
    try:
        yield gh
    finally:
        gh.close()


def _login(gh: Github) -> str:
    with _calling("reading the token's user"):
        login: str = gh.get_user().login
    return login


def _find_repo(gh: Github, target: GithubTarget) -> Repository | None:
    with _calling(f"reading repository {target.repository}"):
        try:
            return gh.get_repo(target.repository)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise


def _create_repo(gh: Github, target: GithubTarget, login: str) -> Repository:
    name = target.repository.partition("/")[2]
    action = f"creating repository {target.repository}"
    with _calling(action):
        try:
            if target.owner.lower() == login.lower():
                return gh.get_user().create_repo(name, private=target.private, auto_init=False)
            _require_organisation(gh, target, login)
            org = gh.get_organization(target.owner)
            return org.create_repo(name, private=target.private, auto_init=False)
        except GithubException as exc:
            if exc.status == 422 and "already exists" in _said(exc):
                raise GithubError(
                    f"repository {target.repository} already exists, but the token's user "
                    f"{login} cannot see it: ask an owner of {target.owner} for admin rights on it"
                ) from None
            raise


def _require_organisation(gh: Github, target: GithubTarget, login: str) -> None:
    try:
        kind = gh.get_user(target.owner).type
    except GithubException as exc:
        if exc.status != 404:
            raise
        raise GithubError(
            f"cannot create repository {target.repository}: there is no GitHub organisation "
            f"or user named {target.owner!r}"
        ) from None
    if kind != "Organization":
        raise GithubError(
            f"cannot create repository {target.repository}: {target.owner} is another user's "
            f"account; a token can create repositories only for its own user ({login}) or "
            f"for an organisation"
        )


def _require_admin(repo: Repository, target: GithubTarget, login: str) -> None:
    if not repo.permissions.admin:
        raise GithubError(
            f"repository {target.repository} belongs to {repo.owner.login} and the token's "
            f"user {login} is not an admin of it: use a token of one of its admins, or "
            f"choose another repository"
        )


def _repo_subject(target: GithubTarget) -> str:
    return f"repository {target.repository}"


def _visibility(repo: Repository) -> str:
    return "private" if repo.private else "public"


# --- queue branches -----------------------------------------------------------


def _setup_branch(repo: Repository, target: GithubTarget, name: str) -> list[Change]:
    changes: list[Change] = []
    branch = _find_branch(repo, name)
    if branch is None:
        changes += _create_branch(repo, target, name)
        changes.append(Change(f"branch {name}", "created"))
        with _calling(f"reading branch {name}"):
            branch = repo.get_branch(name)
    if _protection_gaps(_protection(branch)):
        with _calling(f"protecting branch {name}"):
            branch.edit_protection(
                enforce_admins=True, allow_force_pushes=False, allow_deletions=False
            )
        changes.append(Change(f"branch {name}", "protected against force-push and deletion"))
    return changes


def _create_branch(repo: Repository, target: GithubTarget, name: str) -> list[Change]:
    """A root commit with the empty tree: the queue's first message (docs/github.md)."""
    changes: list[Change] = []
    with _calling(f"creating branch {name}"):
        try:
            tree = repo.create_git_tree([])
        except GithubException as exc:
            if exc.status != 409:  # "Git Repository is empty."
                raise
            changes.append(_initialise(repo, target))
            tree = repo.create_git_tree([])
        commit = repo.create_git_commit(ROOT_MESSAGE.format(name=name), tree, [])
        repo.create_git_ref(f"refs/heads/{name}", commit.sha)
    return changes


def _initialise(repo: Repository, target: GithubTarget) -> Change:
    """Give an empty repository its first commit: GitHub's Git data API refuses it."""
    default = repo.default_branch
    if default in target.branches:
        raise GithubError(
            f"repository {target.repository} is empty and queue {default!r} has the name of "
            f"its default branch, which must hold a README before GitHub accepts any other "
            f"commit: rename the queue, or push that queue from a node before running setup"
        )
    repo.create_file("README.md", "gitmq: describe the queue repository", README)
    return Change(_repo_subject(target), f"initialised with README.md on branch {default}")


def _branch_gaps(repo: Repository, name: str) -> list[str]:
    branch = _find_branch(repo, name)
    if branch is None:
        return ["does not exist"]
    return _protection_gaps(_protection(branch))


def _find_branch(repo: Repository, name: str) -> Branch | None:
    with _calling(f"reading branch {name}"):
        try:
            return repo.get_branch(name)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise


def _protection(branch: Branch) -> BranchProtection | None:
    if not branch.protected:
        return None
    with _calling(f"reading the protection of branch {branch.name}"):
        return branch.get_protection()


def _protection_gaps(protection: BranchProtection | None) -> list[str]:
    """What keeps a queue branch from being append-only for nodes, or from being pushed."""
    if protection is None:
        return ["not protected against force-push and deletion"]
    gaps = []
    if protection.allow_force_pushes:
        gaps.append("allows force-pushes")
    if protection.allow_deletions:
        gaps.append("allows deletion")
    if not protection.enforce_admins:
        gaps.append("protection does not apply to administrators")
    if protection.required_pull_request_reviews is not None:
        gaps.append("requires pull request reviews, which refuse node pushes")
    if protection.required_status_checks is not None:
        gaps.append("requires status checks, which refuse node pushes")
    if protection.raw_data.get("restrictions"):  # PyGithub 2.10's .restrictions raises
        gaps.append("restricts who may push, which refuses deploy keys")
    if protection.lock_branch:
        gaps.append("is locked read-only")
    return gaps


# --- deploy keys -------------------------------------------------------------


def _setup_keys(repo: Repository, target: GithubTarget) -> list[Change]:
    changes = []
    for key, found in _deploy_keys(repo, target):
        if found is not None and not found.read_only:
            continue
        with _calling(f"adding deploy key {key.title}"):
            if found is not None:  # GitHub cannot make a key writable: replace it
                found.delete()
            _add_key(repo, key)
        done = "replaced read-only key with a write key" if found else "added with write access"
        changes.append(Change(f"deploy key {key.title}", done))
    return changes


def _add_key(repo: Repository, key: DeployKey) -> None:
    try:
        repo.create_key(key.title, key.key, read_only=False)
    except GithubException as exc:
        if exc.status == 422 and "already in use" in _said(exc):
            raise GithubError(
                f"deploy key {key.title}: GitHub refuses it, the key is already in use "
                f"elsewhere; a deploy key serves one repository only, so give this node "
                f"its own key"
            ) from None
        raise


def _deploy_keys(
    repo: Repository, target: GithubTarget
) -> list[tuple[DeployKey, RepositoryKey | None]]:
    """Each wanted key with the repository's key of the same material, if any."""
    with _calling(f"reading the deploy keys of {target.repository}"):
        present = {DeployKey("", k.key).material: k for k in repo.get_keys()}
    return [(key, present.get(key.material)) for key in target.deploy_keys]


# --- errors ------------------------------------------------------------------


@contextmanager
def _calling(action: str) -> Iterator[None]:
    """Turn GitHub's and the network's failures during ``action`` into GithubError."""
    try:
        yield
    except GithubException as exc:
        raise _translate(action, exc) from None
    except OSError as exc:  # requests' errors are OSErrors; no direct dependency on it
        raise GithubError(f"cannot reach GitHub while {action}: {exc}") from None


def _translate(action: str, exc: GithubException) -> GithubError:
    headers = {key.lower(): str(value) for key, value in (exc.headers or {}).items()}
    said = _said(exc)
    if exc.status == 401:
        return GithubError(
            f"bad token: GitHub answered 401 ({said}) while {action}; "
            f"check that the token is current and complete"
        )
    if _is_rate_limit(exc, headers):
        return GithubError(
            f"GitHub API rate limit exceeded while {action}; {_reset(headers)}, then run again"
        )
    if exc.status in (403, 404):
        return GithubError(
            f"permission denied while {action}: GitHub answered {exc.status} ({said}); "
            f"{TOKEN_RIGHTS}"
        )
    return GithubError(f"GitHub answered {exc.status} while {action}: {said}")


def _is_rate_limit(exc: GithubException, headers: dict[str, str]) -> bool:
    if isinstance(exc, RateLimitExceededException) or exc.status == 429:
        return True
    return exc.status == 403 and headers.get("x-ratelimit-remaining") == "0"


def _reset(headers: dict[str, str]) -> str:
    reset = headers.get("x-ratelimit-reset", "")
    if reset.isdigit():
        when = datetime.fromtimestamp(int(reset), UTC)
        return f"it resets at {when:%Y-%m-%d %H:%M:%S} UTC"
    retry_after = headers.get("retry-after", "")
    if retry_after.isdigit():
        return f"GitHub asks to wait {retry_after} seconds"
    return "wait a few minutes"


def _said(exc: GithubException) -> str:
    """GitHub's message plus the details of a validation error."""
    data = exc.data if isinstance(exc.data, dict) else {}
    said = str(data.get("message") or exc.message or "no message")
    details = [
        e["message"] for e in data.get("errors", []) if isinstance(e, dict) and "message" in e
    ]
    return "; ".join([said, *details])
