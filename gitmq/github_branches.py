"""Queue branches on GitHub: their creation, and what keeps them append-only.

Each queue is one branch, created by setup as a root commit with the empty tree
(the queue's first message). A branch is append-only for nodes when classic
branch protection or a ruleset blocks force-pushes and deletion, and no rule
(classic or ruleset, repository or organisation) refuses the nodes' pushes.
Segments (``<queue>.seg.N``) are created by nodes and deleted by retention, and
classic protection is per exact branch name: ``setup --ruleset`` keeps a
repository ruleset that blocks force-pushes on every queue branch and segment.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from github import GithubException
from github.Branch import Branch
from github.BranchProtection import BranchProtection
from github.Repository import Repository

from gitmq.github_base import Change, GithubError, GithubTarget, Problem, calling, repo_subject
from gitmq.segments import segment_branch

ROOT_MESSAGE = "gitmq: queue {name} created"
README = """\
# GitMQ queues

Each queue branch of this repository is a GitMQ queue: every commit on it is a
message. Nodes push to it with deploy keys; do not commit here by hand.
This default branch only holds this file (GitHub cannot create branches in an
empty repository).
"""

RULESET_NAME = "gitmq queues"
SEGMENTS_PATTERN = "refs/heads/**/*.seg.*"  # fnmatch: **/ also matches no directory

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

# --- queue branches -----------------------------------------------------------


def setup_branch(repo: Repository, target: GithubTarget, name: str) -> list[Change]:
    changes: list[Change] = []
    branch = _find_branch(repo, name)
    if branch is None:
        changes += _create_branch(repo, target, name)
        changes.append(Change(f"branch {name}", "created"))
        with calling(f"reading branch {name}"):
            branch = repo.get_branch(name)
    protection = _protection(branch, probe=False)  # a PUT shows a plan without protection
    if _protection_gaps(protection, _branch_rules(repo, name)):
        with calling(f"protecting branch {name}"):
            branch.edit_protection(
                enforce_admins=True, allow_force_pushes=False, allow_deletions=False
            )
        changes.append(Change(f"branch {name}", "protected against force-push and deletion"))
    return changes


def _create_branch(repo: Repository, target: GithubTarget, name: str) -> list[Change]:
    """A root commit with the empty tree: the queue's first message (docs/github.md)."""
    changes: list[Change] = []
    with calling(f"creating branch {name}"):
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
    return Change(repo_subject(target), f"initialised with README.md on branch {default}")


def check_branch(repo: Repository, name: str) -> list[Problem]:
    subject = f"branch {name}"
    rules = _branch_rules(repo, name)  # rules apply to a name, existing or not
    refusals = [Problem(subject, _refusal(rule, name)) for rule in _refusing(rules)]
    branch = _find_branch(repo, name)
    if branch is None:
        return [Problem(subject, "does not exist"), *refusals]
    gaps = _protection_gaps(_protection(branch, probe=repo.private), rules)
    return [Problem(subject, gap) for gap in gaps] + refusals


def _find_branch(repo: Repository, name: str) -> Branch | None:
    with calling(f"reading branch {name}"):
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
    with calling(f"reading the protection of branch {branch.name}"):
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
    with calling(f"reading the rules for branch {name}"):
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


def check_segments(repo: Repository, queue: str) -> list[Problem]:
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


def setup_ruleset(repo: Repository, target: GithubTarget) -> list[Change]:
    subject = f"ruleset {RULESET_NAME!r}"
    request = repo._requester.requestJsonAndCheck
    wanted = wanted_ruleset(target)
    covered = f"force-pushes blocked on {len(target.branches)} queue branch(es) and all segments"
    with calling(f"reading the rulesets of {target.repository}"):
        _, found = request("GET", f"{repo.url}/rulesets", parameters={"includes_parents": "false"})
    ours = [r for r in found or [] if isinstance(r, dict) and r.get("name") == RULESET_NAME]
    if not ours:
        with calling(f"creating {subject}"):
            request("POST", f"{repo.url}/rulesets", input=wanted)
        return [Change(subject, f"created: {covered}")]
    url = f"{repo.url}/rulesets/{ours[0]['id']}"
    with calling(f"reading {subject}"):
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
    with calling(f"updating {subject}"):
        request("PUT", url, input=wanted)
    return [Change(subject, f"updated: {covered}")]


def _ruleset_include(ruleset: dict[str, Any]) -> list[str]:
    ref_name = (ruleset.get("conditions") or {}).get("ref_name") or {}
    return [str(pattern) for pattern in ref_name.get("include") or []]
