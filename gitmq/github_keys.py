"""Deploy keys on GitHub: one per node, with write access, since nodes push with it.

GitHub cannot make a read-only key writable, so setup replaces one; check also
reports keys that GitHub's deploy key policy disabled, and notes keys added by
a person, which GitHub deletes when that person's token or access goes.
"""

from __future__ import annotations

from github import GithubException
from github.Repository import Repository
from github.RepositoryKey import RepositoryKey

from gitmq.github_base import (
    Change,
    DeployKey,
    GithubError,
    GithubTarget,
    Problem,
    calling,
    message_of,
)


def setup_keys(repo: Repository, target: GithubTarget) -> list[Change]:
    changes = []
    for key, found in _deploy_keys(repo, target):
        if found is not None and not found.read_only:
            continue
        with calling(f"adding deploy key {key.title}"):
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
        said = message_of(exc)
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


def check_keys(repo: Repository, target: GithubTarget) -> list[Problem]:
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
    with calling(f"reading the deploy keys of {target.repository}"):
        present = {DeployKey("", k.key).material: k for k in repo.get_keys()}
    return [(key, present.get(key.material)) for key in target.deploy_keys]
