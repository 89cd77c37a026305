"""What the GitHub modules share: the target, what setup did and check found, and errors.

:class:`GithubTarget` is what a node config asks of GitHub (docs/github.md);
:class:`Change` and :class:`Problem` are the lines that setup and check report.
Every call to GitHub runs inside :func:`calling`, which turns GitHub's and the
network's failures into one :class:`GithubError` that says what was being done
and what to do next (a missing right, a rate limit and when it resets, a private
repository on GitHub Free).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from github import GithubException, RateLimitExceededException

from gitmq.budget import Budget
from gitmq.errors import RemoteError

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


def repo_subject(target: GithubTarget) -> str:
    return f"repository {target.repository}"


# --- errors ------------------------------------------------------------------


@contextmanager
def calling(action: str) -> Iterator[None]:
    """Turn GitHub's and the network's failures during ``action`` into GithubError."""
    try:
        yield
    except GithubException as exc:
        raise _translate(action, exc) from None
    except OSError as exc:  # requests' errors are OSErrors; no direct dependency on it
        raise GithubError(f"cannot reach GitHub while {action}: {exc}") from None


def _translate(action: str, exc: GithubException) -> GithubError:
    headers = {key.lower(): str(value) for key, value in (exc.headers or {}).items()}
    said = message_of(exc)
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


def message_of(exc: GithubException) -> str:
    """GitHub's message plus the details of a validation error."""
    data = exc.data if isinstance(exc.data, dict) else {}
    said = str(data.get("message") or exc.message or "no message")
    details = [
        e["message"] if isinstance(e, dict) else e
        for e in data.get("errors", [])
        if isinstance(e, str) or (isinstance(e, dict) and "message" in e)
    ]
    return "; ".join([said, *details])
