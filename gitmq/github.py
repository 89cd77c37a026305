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
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from github import Auth, Github, GithubException, RateLimitExceededException
from github.Branch import Branch
from github.BranchProtection import BranchProtection
from github.Repository import Repository
from github.RepositoryKey import RepositoryKey

from gitmq.budget import Budget
from gitmq.errors import RemoteError
from gitmq.segments import segment_branch

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
APP_RIGHTS = (
    "the GitHub App needs the repository permissions 'Administration' and 'Contents' "
    "(read and write), and its installation must include the repository"
)
PAID_PLAN = (
    "is private on GitHub Free, which offers no branch protection or rulesets for "
    "private repositories: upgrade its owner's plan to GitHub Pro, Team or Enterprise, "
    "or make it public (github.private: false)"
)
RULESET_NAME = "gitmq queues"
SEGMENTS_PATTERN = "refs/heads/**/*.seg.*"  # fnmatch: **/ also matches no directory
MIN_GIT = (2, 23)  # atomic pushes over https (smart HTTP)

#: Ruleset rules that refuse a node's push (a fast-forward by a deploy key).
_REFUSING = {
    "update": "forbids updates",
    "required_signatures": "requires signed commits",
    "pull_request": "requires a pull request",
    "required_status_checks": "requires status checks",
    "required_deployments": "requires deployments",
    "commit_message_pattern": "restricts commit messages",
    "commit_author_email_pattern": "restricts commit author emails",
    "committer_email_pattern": "restricts committer emails",
}

Credentials = str | Auth.Token | Auth.AppInstallationAuth  # a token, or a GitHub App installation


class GithubError(RemoteError):
    """GitHub refused, or could not do, what setup or check asked (a GitMQError, exit 6)."""


class PaidPlanError(GithubError):
    """The repository is private on GitHub Free: no branch protection, no rulesets."""


@dataclass(frozen=True)
class DeployKey:
    title: str
    key: str  # public key text: "ssh-ed25519 AAAA... comment"

    @property
    def material(self) -> str:
        """Key type and blob: what GitHub stores and compares (it drops the comment)."""
        return " ".join(self.key.split()[:2])


@dataclass(frozen=True)
class ReadLoad:
    """What the cluster's sync schedule asks of the remote that holds the repository."""

    remote: str
    budget: Budget
    nodes: int
    interval: float
    poll: float | None = None

    @property
    def per_node(self) -> float:
        """Reads a minute one node's schedule asks for (as the node computes it)."""
        return 60 / self.interval + (60 / self.poll if self.poll else 0)


@dataclass(frozen=True)
class GithubTarget:
    repository: str  # "owner/name"
    branches: tuple[str, ...]  # queue branches to create and protect
    deploy_keys: tuple[DeployKey, ...]
    private: bool = True
    base_url: str = "https://api.github.com"  # GitHub Enterprise: https://HOST/api/v3
    segmented: tuple[str, ...] = ()  # queues whose segments nodes create and retention deletes
    load: ReadLoad | None = None

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
    """One thing :func:`check` found, e.g. ``deploy key node-a: missing``.

    A note (``blocking=False``) is worth knowing but does not fail the check.
    """

    subject: str
    issue: str
    blocking: bool = True

    def __str__(self) -> str:
        return f"{'' if self.blocking else 'note: '}{self.subject}: {self.issue}"


@dataclass(frozen=True)
class _Session:
    gh: Github
    target: GithubTarget
    login: str | None  # the token's user; None for a GitHub App installation
    who: str  # "the token" or "GitHub App 1 (installation 2)"


def setup(
    target: GithubTarget, credentials: Credentials, *, throttle: bool = True, ruleset: bool = False
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
            changes.append(Change(_repo_subject(target), f"created ({_visibility(repo)})"))
        else:
            _require_admin(s, repo)
            if target.private and not repo.private:
                with _calling(f"making repository {target.repository} private"):
                    repo.edit(private=True)
                changes.append(Change(_repo_subject(target), "made private"))
        for name in target.branches:
            changes += _setup_branch(repo, target, name)
        if ruleset:
            changes += _setup_ruleset(repo, target)
        changes += _setup_keys(repo, target)
    return changes


def check(
    target: GithubTarget, credentials: Credentials, *, throttle: bool = True
) -> list[Problem]:
    """Report, one per issue, what is wrong (and notes); changes nothing."""
    with _session(target, credentials, throttle) as s:
        repo = _find_repo(s)
        if repo is None:
            return [Problem(_repo_subject(target), f"does not exist (or {s.who} cannot see it)")]
        _require_admin(s, repo)
        problems: list[Problem] = []
        if target.private and not repo.private:
            problems.append(Problem(_repo_subject(target), "public, but the config asks private"))
        plan_limited = False
        for name in target.branches:
            try:
                problems += _check_branch(repo, name)
            except PaidPlanError:
                plan_limited = True
        if plan_limited:
            problems.append(Problem(_repo_subject(target), PAID_PLAN))
        for queue in target.segmented:
            problems += _check_segments(repo, queue)
        problems += _check_keys(repo, target)
    if target.load is not None:
        problems.append(budget_problem(target.load))
    return problems


# --- the session and the repository -----------------------------------------------


@contextmanager
def _session(target: GithubTarget, credentials: Credentials, throttle: bool) -> Iterator[_Session]:
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
    with _calling(f"getting an installation token of {app}"):
        try:
            auth.token  # noqa: B018 - the property asks GitHub for a token
        except GithubException as exc:
            if exc.status == 401:
                raise GithubError(
                    f"{app}: GitHub refused its signed request for a token (401: "
                    f"{_said(exc)}): check github.app.app_id and github.app.private_key_file "
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
    with _calling("reading the token's user"):
        login: str = gh.get_user().login
    return login


def _find_repo(s: _Session) -> Repository | None:
    with _calling(f"reading repository {s.target.repository}"):
        try:
            return s.gh.get_repo(s.target.repository)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise


def _create_repo(s: _Session) -> Repository:
    target = s.target
    name = target.repository.partition("/")[2]
    with _calling(f"creating repository {target.repository}"):
        try:
            if s.login is not None and target.owner.lower() == s.login.lower():
                return s.gh.get_user().create_repo(name, private=target.private, auto_init=False)
            _require_organisation(s)
            org = s.gh.get_organization(target.owner)
            return org.create_repo(name, private=target.private, auto_init=False)
        except GithubException as exc:
            if exc.status == 422 and "already exists" in _said(exc):
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
    protection = _protection(branch, probe=False)  # a PUT shows a plan without protection
    if _protection_gaps(protection, _branch_rules(repo, name)):
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


def _check_branch(repo: Repository, name: str) -> list[Problem]:
    subject = f"branch {name}"
    rules = _branch_rules(repo, name)  # rules apply to a name, existing or not
    refusals = [Problem(subject, _refusal(rule, name)) for rule in _refusing(rules)]
    branch = _find_branch(repo, name)
    if branch is None:
        return [Problem(subject, "does not exist"), *refusals]
    gaps = _protection_gaps(_protection(branch, probe=repo.private), rules)
    return [Problem(subject, gap) for gap in gaps] + refusals


def _find_branch(repo: Repository, name: str) -> Branch | None:
    with _calling(f"reading branch {name}"):
        try:
            return repo.get_branch(name)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise


def _protection(branch: Branch, probe: bool) -> BranchProtection | None:
    """The branch's classic protection, or None.

    A branch covered only by a ruleset is ``protected`` but has no classic
    protection (404 "Branch not protected"). With ``probe``, an unprotected
    branch is asked anyway: for a private repository on GitHub Free the answer
    is 403 "Upgrade to GitHub Pro ...", the one way to tell that GitHub offers
    no protection there.
    """
    if not branch.protected and not probe:
        return None
    with _calling(f"reading the protection of branch {branch.name}"):
        try:
            return branch.get_protection()
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise


def _protection_gaps(protection: BranchProtection | None, rules: list[dict[str, Any]]) -> list[str]:
    """What keeps a queue branch from being append-only for nodes, or from being pushed.

    Force-pushes are blocked by classic protection or a ``non_fast_forward`` rule,
    deletion by classic protection or a ``deletion`` rule.
    """
    types = {rule.get("type") for rule in rules}
    no_force = "non_fast_forward" in types or bool(protection and not protection.allow_force_pushes)
    no_delete = "deletion" in types or bool(protection and not protection.allow_deletions)
    if protection is None:
        pairs = (("force-push", no_force), ("deletion", no_delete))
        open_to = [what for what, blocked in pairs if not blocked]
        return [f"not protected against {' and '.join(open_to)}"] if open_to else []
    gaps = []
    if not no_force:
        gaps.append("allows force-pushes")
    if not no_delete:
        gaps.append("allows deletion")
    if not protection.enforce_admins and not ({"non_fast_forward", "deletion"} <= types):
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


# --- rulesets -------------------------------------------------------------------


def _branch_rules(repo: Repository, name: str) -> list[dict[str, Any]]:
    """The active rules of every ruleset (repository or organisation) that apply to ``name``.

    PyGithub 2.10 has no call for it: its requester keeps errors GithubExceptions.
    """
    url = f"{repo.url}/rules/branches/{urllib.parse.quote(name)}"
    with _calling(f"reading the rules for branch {name}"):
        _, rules = repo._requester.requestJsonAndCheck("GET", url, parameters={"per_page": 100})
    return [rule for rule in rules or [] if isinstance(rule, dict)]


def _refusing(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for rule in rules if rule.get("type") in _REFUSING]


def _refusal(rule: dict[str, Any], name: str, exclude: str = "") -> str:
    kind = str(rule.get("type"))
    return (
        f"{_ruleset_of(rule)} {_REFUSING[kind]} ({kind}), which refuses node pushes: "
        f"exclude {exclude or 'refs/heads/' + name} from it, or let deploy keys bypass it"
    )


def _ruleset_of(rule: dict[str, Any]) -> str:
    source_type = str(rule.get("ruleset_source_type") or "repository").lower()
    return f"ruleset {rule.get('ruleset_id')} of {source_type} {rule.get('ruleset_source')}"


def _check_segments(repo: Repository, queue: str) -> list[Problem]:
    """Rules on the queue's next segments: nodes create and push them, retention deletes them."""
    first = segment_branch(queue, 1)
    pattern = f"refs/heads/{queue}.seg.*"
    subject = f"segments of {queue}"
    problems = []
    for rule in _branch_rules(repo, first):
        kind = rule.get("type")
        if kind == "deletion":
            stops = "retention from deleting old segments"
        elif kind == "creation":
            stops = "nodes from opening new segments"
        elif kind in _REFUSING:
            problems.append(Problem(subject, _refusal(rule, first, pattern)))
            continue
        else:
            continue
        problems.append(
            Problem(
                subject,
                f"{_ruleset_of(rule)} forbids the {kind} of {first} ({kind}), which stops "
                f"{stops}: exclude {pattern} from it",
            )
        )
    return problems


def wanted_ruleset(target: GithubTarget) -> dict[str, Any]:
    """The ruleset setup keeps: no force-push on queue branches and segments, deletion allowed."""
    include = [f"refs/heads/{name}" for name in target.branches] + [SEGMENTS_PATTERN]
    return {
        "name": RULESET_NAME,
        "target": "branch",
        "enforcement": "active",
        "conditions": {"ref_name": {"include": include, "exclude": []}},
        "rules": [{"type": "non_fast_forward"}],
    }


def _setup_ruleset(repo: Repository, target: GithubTarget) -> list[Change]:
    subject = f"ruleset {RULESET_NAME!r}"
    request = repo._requester.requestJsonAndCheck
    wanted = wanted_ruleset(target)
    covered = f"force-pushes blocked on {len(target.branches)} queue branch(es) and all segments"
    with _calling(f"reading the rulesets of {target.repository}"):
        _, found = request("GET", f"{repo.url}/rulesets", parameters={"includes_parents": "false"})
    ours = [r for r in found or [] if isinstance(r, dict) and r.get("name") == RULESET_NAME]
    if not ours:
        with _calling(f"creating {subject}"):
            request("POST", f"{repo.url}/rulesets", input=wanted)
        return [Change(subject, f"created: {covered}")]
    url = f"{repo.url}/rulesets/{ours[0]['id']}"
    with _calling(f"reading {subject}"):
        _, current = request("GET", url)
    include = _ruleset_include(current)
    rules = {rule.get("type") for rule in current.get("rules") or []}
    if (
        current.get("enforcement") == "active"
        and current.get("target") == "branch"
        and set(wanted["conditions"]["ref_name"]["include"]) <= set(include)
        and not (current.get("conditions") or {}).get("ref_name", {}).get("exclude")
        and rules == {"non_fast_forward"}
    ):
        return []
    new = wanted["conditions"]["ref_name"]["include"]
    wanted["conditions"]["ref_name"]["include"] = [*include, *(p for p in new if p not in include)]
    with _calling(f"updating {subject}"):
        request("PUT", url, input=wanted)
    return [Change(subject, f"updated: {covered}")]


def _ruleset_include(ruleset: dict[str, Any]) -> list[str]:
    ref_name = (ruleset.get("conditions") or {}).get("ref_name") or {}
    return [str(pattern) for pattern in ref_name.get("include") or []]


# --- deploy keys -------------------------------------------------------------


def _setup_keys(repo: Repository, target: GithubTarget) -> list[Change]:
    changes = []
    for key, found in _deploy_keys(repo, target):
        if found is not None and not found.read_only:
            continue
        with _calling(f"adding deploy key {key.title}"):
            if found is not None:  # GitHub cannot make a key writable: replace it
                found.delete()
            _add_key(repo, target, key)
        done = "replaced read-only key with a write key" if found else "added with write access"
        changes.append(Change(f"deploy key {key.title}", done))
    return changes


def _add_key(repo: Repository, target: GithubTarget, key: DeployKey) -> None:
    try:
        repo.create_key(key.title, key.key, read_only=False)
    except GithubException as exc:
        said = _said(exc)
        if "deploy keys are disabled" in said.lower():
            raise GithubError(
                f"deploy key {key.title}: GitHub refuses it ({said}): the deploy key policy "
                f"of {target.owner} (or of its enterprise) forbids deploy keys; ask an owner to "
                f"allow them, or let the nodes push over https as a GitHub App (github.app)"
            ) from None
        if exc.status == 422 and "already in use" in said:
            raise GithubError(
                f"deploy key {key.title}: GitHub refuses it, the key is already in use "
                f"elsewhere; a deploy key serves one repository only, so give this node "
                f"its own key"
            ) from None
        raise


def _check_keys(repo: Repository, target: GithubTarget) -> list[Problem]:
    problems = []
    for key, found in _deploy_keys(repo, target):
        subject = f"deploy key {key.title}"
        if found is None:
            problems.append(Problem(subject, "missing"))
            continue
        if found.read_only:
            problems.append(Problem(subject, "read-only; nodes push with it"))
        if found.enabled is False:
            problems.append(
                Problem(
                    subject,
                    f"disabled by the deploy key policy of {target.owner} (or of its "
                    f"enterprise): ask an owner to allow deploy keys, or let the nodes push "
                    f"over https as a GitHub App (github.app)",
                )
            )
        added_by = found.added_by
        if added_by and not str(added_by).endswith("[bot]"):
            problems.append(
                Problem(
                    subject,
                    f"added by {added_by}; if with a personal access token, GitHub deletes "
                    f"the key when that token is deleted or {added_by} loses access to the "
                    f"repository: add keys as a GitHub App (github.app) to make them outlast "
                    f"people",
                    blocking=False,
                )
            )
    return problems


def _deploy_keys(
    repo: Repository, target: GithubTarget
) -> list[tuple[DeployKey, RepositoryKey | None]]:
    """Each wanted key with the repository's key of the same material, if any."""
    with _calling(f"reading the deploy keys of {target.repository}"):
        present = {DeployKey("", k.key).material: k for k in repo.get_keys()}
    return [(key, present.get(key.material)) for key in target.deploy_keys]


# --- this machine and the cluster ---------------------------------------------


def budget_problem(load: ReadLoad) -> Problem:
    """The cluster's reads a minute against the remote's budget: a note, a problem when over."""
    per_node = round(load.per_node, 1)
    total = round(load.nodes * load.per_node, 1)
    poll = f"{load.poll:g}s" if load.poll else "off"
    reads = (
        f"{load.nodes} node(s) at {per_node:g} reads a minute each (sync.interval "
        f"{load.interval:g}s, sync.poll {poll}) = {total:g} reads a minute"
    )
    limit = load.budget.reads_per_minute
    if limit is None:
        return Problem("budget", f"{reads}; remote {load.remote} has no read budget", False)
    of = f"remote {load.remote}'s budget of {limit:g}" + (
        " (the default for github.com)" if load.budget.default else ""
    )
    if total <= limit:
        return Problem("budget", f"{reads}, within {of}", blocking=False)
    return Problem(
        "budget",
        f"{reads}, over {of}: the nodes will sync less often than configured; raise "
        f"remotes.{load.remote}.budget.reads_per_minute, or lengthen sync.interval or sync.poll",
    )


def git_client_problem(version_output: str) -> Problem | None:
    """A problem if ``git --version`` shows a client too old for atomic pushes over https."""
    found = re.search(r"(\d+)\.(\d+)", version_output)
    if found is None:
        return Problem("git", f"cannot read the version of git from {version_output.strip()!r}")
    version = (int(found.group(1)), int(found.group(2)))
    if version >= MIN_GIT:
        return None
    shown = version_output.strip().removeprefix("git version ")
    return Problem(
        "git",
        f"version {shown} on this machine is older than 2.23, which atomic pushes over "
        f"https need: upgrade git",
    )


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
        kind = "secondary rate limit" if _is_secondary(said, headers) else "rate limit"
        return GithubError(
            f"GitHub API {kind} exceeded while {action}; {_reset(headers)}, then run again"
        )
    if exc.status == 403 and "upgrade to github pro" in said.lower():
        return PaidPlanError(
            f"branch protection unavailable while {action}: GitHub answered 403 ({said}); "
            f"the repository {PAID_PLAN}"
        )
    if exc.status in (403, 404):
        rights = APP_RIGHTS if "by integration" in said else TOKEN_RIGHTS
        return GithubError(
            f"permission denied while {action}: GitHub answered {exc.status} ({said}); {rights}"
        )
    return GithubError(f"GitHub answered {exc.status} while {action}: {said}")


def _is_rate_limit(exc: GithubException, headers: dict[str, str]) -> bool:
    if isinstance(exc, RateLimitExceededException) or exc.status == 429:
        return True
    limited = headers.get("x-ratelimit-remaining") == "0" or "retry-after" in headers
    return exc.status == 403 and limited


def _is_secondary(said: str, headers: dict[str, str]) -> bool:
    if "secondary rate limit" in said.lower():
        return True
    return "retry-after" in headers and headers.get("x-ratelimit-remaining") != "0"


def _reset(headers: dict[str, str]) -> str:
    """When to try again, in the order GitHub documents: retry-after, then the reset time."""
    retry_after = headers.get("retry-after", "")
    if retry_after.isdigit():
        return f"GitHub asks to wait {retry_after} seconds"
    reset = headers.get("x-ratelimit-reset", "")
    if headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
        when = datetime.fromtimestamp(int(reset), UTC)
        return f"it resets at {when:%Y-%m-%d %H:%M:%S} UTC"
    return "wait at least a minute"


def _said(exc: GithubException) -> str:
    """GitHub's message plus the details of a validation error."""
    data = exc.data if isinstance(exc.data, dict) else {}
    said = str(data.get("message") or exc.message or "no message")
    details = [
        e["message"] if isinstance(e, dict) else e
        for e in data.get("errors", [])
        if isinstance(e, str) or (isinstance(e, dict) and "message" in e)
    ]
    return "; ".join([said, *details])
