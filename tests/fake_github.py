"""A stateful stand-in for GitHub's REST API, for the calls of ``gitmq.github``.

No GitHub-compatible server can be installed here, so this small server speaks
the part of GitHub's REST API that the bootstrap uses, over real HTTP on
127.0.0.1, with GitHub's status codes, messages and JSON shapes (from GitHub's
published API description). PyGithub runs against it unpatched. It serves under
the prefix ``/api/v3``, the GitHub Enterprise layout, so the tests also prove
that ``base_url`` is honoured; every URL it returns shares that prefix, as
PyGithub requires.

Modelled faithfully because the bootstrap depends on it:
- 401 ``Bad credentials`` for an unknown token; 404 ``Not Found`` for a
  repository the token's user cannot see; 422 when a name or key is taken.
- An empty repository refuses the Git data API (409 ``Git Repository is
  empty.``) and has no branches; the contents API gives it a first commit.
- A commit must name an existing tree: even the empty tree must be created.
- Branch protection PUT requires its four nullable keys; GET answers 404
  ``Branch not protected`` when there is none.
- A token without the "Administration" permission gets 403 ``Resource not
  accessible by personal access token`` on protection, keys and settings; a
  user who is not admin of the repository gets 403 ``Must have admin rights``.
- A rate-limited token gets 403 (or 429) ``API rate limit exceeded`` with
  ``X-RateLimit-Remaining: 0`` and ``X-RateLimit-Reset``; :meth:`FakeGithub.
  secondary_rate_limit` answers the next requests with GitHub's secondary limit
  (403 or 429, ``You have exceeded a secondary rate limit...``, ``Retry-After``).
- Rulesets (``POST|GET /repos/{o}/{r}/rulesets``, ``GET|PUT .../rulesets/{id}``)
  and the rules that apply to a branch (``GET .../rules/branches/{branch}``),
  matched with GitHub's fnmatch-style ref patterns (``*`` within a path
  segment, ``**`` across ``/``, ``~DEFAULT_BRANCH``, ``~ALL``); a branch that an
  active ruleset covers is ``protected`` in its JSON, while its classic
  protection may still be 404 ``Branch not protected``.
- A private repository of an account on GitHub Free (:meth:`FakeGithub.free_plan`)
  gets 403 ``Upgrade to GitHub Pro or make this repository public to enable this
  feature.`` on branch protection and rulesets.
- An organisation whose policy forbids deploy keys refuses new ones (422
  ``Deploy keys are disabled for this repository``) and lists its repositories'
  keys with ``enabled: false``; every key records ``added_by``.
- GitHub Apps (:meth:`FakeGithub.add_app`): ``POST /app/installations/{id}/
  access_tokens`` with ``Authorization: Bearer <JWT>`` (RS256, ``iss`` = app id,
  verified with the app's public key) answers 201 with a ``ghs_`` token and its
  ``expires_at``; that token acts on the installation owner's repositories and
  gets 403 ``Resource not accessible by integration`` on ``GET /user``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt

PREFIX = "/api/v3"
DOCS = "https://docs.github.com/rest"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
RATE_LIMIT_RESET = 1893456000  # 2030-01-01 00:00:00 UTC
UPGRADE = "Upgrade to GitHub Pro or make this repository public to enable this feature."
SECONDARY = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
    "again. If you reach out to GitHub Support for help, please include the request ID "
    "C0DE:1234:5678:9ABC:DEF0."
)
RULE_TYPES = {
    "creation", "update", "deletion", "required_linear_history", "required_deployments",
    "required_signatures", "pull_request", "required_status_checks", "non_fast_forward",
    "commit_message_pattern", "commit_author_email_pattern", "committer_email_pattern",
    "branch_name_pattern", "merge_queue",
}  # fmt: skip


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"message": message, "documentation_url": DOCS, **extra}
        self.headers: dict[str, str] = {}


@dataclass
class Token:
    login: str
    administration: bool = True  # fine-grained "Administration: write"
    rate_limited: bool = False
    rate_limit_status: int = 403
    app: App | None = None  # an installation access token of this app
    expires_at: float | None = None  # time.time() after which GitHub refuses it


@dataclass
class App:
    """A GitHub App installed on one account (all its repositories)."""

    app_id: int
    public_key_pem: str
    installation_id: int
    owner: str
    expires_in: float = 3600.0  # lifetime of the tokens it mints (GitHub: one hour)
    issued: list[str] = field(default_factory=list)  # the tokens minted, oldest first
    #: Told each new token before it is handed out (a git server to accept it).
    on_issue: Callable[[str], None] | None = None

    @property
    def bot(self) -> str:
        return f"app-{self.app_id}[bot]"


@dataclass
class Org:
    login: str
    admins: set[str] = field(default_factory=set)
    members: set[str] = field(default_factory=set)
    base_permission: str = "read"  # what members get on the org's repositories: read or none
    deploy_keys_allowed: bool = True  # the organisation's deploy key policy


@dataclass
class Key:
    id: int
    title: str
    key: str
    read_only: bool
    added_by: str | None = None


@dataclass
class Repo:
    id: int
    owner: str
    name: str
    private: bool
    default_branch: str = "main"
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha -> object
    protections: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: list[Key] = field(default_factory=list)
    rulesets: list[dict[str, Any]] = field(default_factory=list)  # as POSTed, plus id

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


class FakeGithub:
    """State plus the server; configure it, then point PyGithub at ``base_url``."""

    def __init__(self) -> None:
        self.tokens: dict[str, Token] = {}
        self.users: dict[str, str] = {}  # lower-case login -> login
        self.orgs: dict[str, Org] = {}
        self.repos: dict[str, Repo] = {}  # lower-case full name -> repo
        self.requests: list[tuple[str, str]] = []  # (verb, path below the prefix)
        self.apps: dict[int, App] = {}
        self.free_accounts: set[str] = set()  # lower-case logins on GitHub Free
        self._secondary: list[tuple[int, int]] = []  # (status, retry-after) per request
        self.lock = threading.Lock()
        self._ids = itertools.count(1000)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- configuration ---------------------------------------------------

    def add_user(self, login: str, token: str | None = None, **token_options: Any) -> None:
        self.users[login.lower()] = login
        if token is not None:
            self.tokens[token] = Token(login, **token_options)

    def add_org(self, login: str, *, admins: tuple[str, ...] = (), **options: Any) -> Org:
        org = Org(login, admins={a.lower() for a in admins}, **options)
        self.orgs[login.lower()] = org
        return org

    def add_repo(
        self, full_name: str, *, private: bool = True, branches: tuple[str, ...] = ()
    ) -> Repo:
        owner, _, name = full_name.partition("/")
        repo = Repo(next(self._ids), owner, name, private)
        self.repos[full_name.lower()] = repo
        for branch in branches:
            tree = _store(repo, "tree", b"")
            repo.branches[branch] = _commit(repo, tree, [], f"seed {branch}", "seed")
        return repo

    def protect(self, full_name: str, branch: str, **rules: Any) -> None:
        """Protect ``branch`` as the web UI would; ``rules`` override the stored fields."""
        self.repos[full_name.lower()].protections[branch] = _protection_from({}) | rules

    def add_key(
        self,
        full_name: str,
        title: str,
        key: str,
        *,
        read_only: bool,
        added_by: str | None = None,
    ) -> None:
        repo = self.repos[full_name.lower()]
        repo.keys.append(Key(next(self._ids), title, _material(key), read_only, added_by))

    def add_app(
        self, app_id: int, public_key_pem: str | bytes, installation_id: int, owner: str
    ) -> App:
        """Register a GitHub App (its public key) installed on all of ``owner``'s repositories."""
        pem = public_key_pem.decode() if isinstance(public_key_pem, bytes) else public_key_pem
        app = App(app_id, pem, installation_id, owner)
        self.apps[app_id] = app
        return app

    def free_plan(self, owner: str) -> None:
        """Put ``owner`` on GitHub Free: no protection or rulesets for its private repos."""
        self.free_accounts.add(owner.lower())

    def add_ruleset(self, full_name: str, **ruleset: Any) -> dict[str, Any]:
        """A repository ruleset as made in the web UI (defaults: active, on branches)."""
        body = {"target": "branch", "enforcement": "active", "bypass_actors": []} | ruleset
        return _store_ruleset(self, self.repos[full_name.lower()], body)

    def secondary_rate_limit(
        self, requests: int = 1, *, retry_after: int = 60, status: int = 403
    ) -> None:
        """Answer the next ``requests`` requests with GitHub's secondary rate limit."""
        self._secondary += [(status, retry_after)] * requests

    def writes(self) -> list[tuple[str, str]]:
        return [(verb, path) for verb, path in self.requests if verb != "GET"]

    # --- server ----------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{PREFIX}"

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        # A short poll interval: shutdown() waits for it (0.5 s by default, per test).
        serve = functools.partial(self._server.serve_forever, poll_interval=0.02)
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- request handling --------------------------------------------------

    def handle(self, verb: str, path: str, headers: Any, body: Any) -> tuple[int, Any]:
        self.requests.append((verb, path))
        if self._secondary:
            status, retry_after = self._secondary.pop(0)
            error = HttpError(status, SECONDARY)
            error.headers = {"Retry-After": str(retry_after), "X-RateLimit-Remaining": "4990"}
            raise error
        minting = re.fullmatch(r"/app/installations/([^/]+)/access_tokens", path)
        if verb == "POST" and minting:
            return _mint_token(self, headers.get("Authorization", ""), minting.group(1))
        token = self._token(headers.get("Authorization", ""))
        user = token.login
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        route = _route(verb, parts)
        if route is None:
            raise HttpError(404, "Not Found")
        handler, args = route
        return handler(self, token, user, body, *args)  # type: ignore[no-any-return]

    def _token(self, authorization: str) -> Token:
        scheme, _, secret = authorization.partition(" ")
        token = self.tokens.get(secret) if scheme.lower() in ("token", "bearer") else None
        if token is None or (token.expires_at is not None and time.time() >= token.expires_at):
            raise HttpError(401, "Bad credentials")
        if token.rate_limited:
            error = HttpError(
                token.rate_limit_status,
                "API rate limit exceeded for user ID 1. If you reach out to GitHub Support "
                "for help, please include the request ID.",
            )
            error.headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Used": "5000"}
            raise error
        return token

    def url(self, *parts: str) -> str:
        return self.base_url + "/" + "/".join(urllib.parse.quote(p) for p in parts)

    def repo_for(self, user: str, owner: str, name: str, need: str = "read") -> Repo:
        repo = self.repos.get(f"{owner}/{name}".lower())
        role = self.role(user, repo) if repo else None
        if repo is None or role is None:
            raise HttpError(404, "Not Found")
        if need == "admin" and role != "admin":
            raise HttpError(403, "Must have admin rights to Repository.")
        if need == "write" and role != "admin":
            raise HttpError(404, "Not Found")
        return repo

    def role(self, user: str, repo: Repo) -> str | None:
        user = user.lower()
        app = next((a for a in self.apps.values() if a.bot.lower() == user), None)
        if app is not None:  # an installation: its app's permissions on the owner's repos
            return "admin" if app.owner.lower() == repo.owner.lower() else None
        org = self.orgs.get(repo.owner.lower())
        if repo.owner.lower() == user or (org and user in org.admins):
            return "admin"
        if org and user in org.members and org.base_permission == "read":
            return "read"
        return None if repo.private else "read"

    def repo_json(self, repo: Repo, user: str) -> dict[str, Any]:
        role = self.role(user, repo)
        owner_type = "Organization" if repo.owner.lower() in self.orgs else "User"
        return {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.name,
            "full_name": repo.full_name,
            "owner": self.account_json(repo.owner, owner_type),
            "private": repo.private,
            "visibility": "private" if repo.private else "public",
            "url": self.url("repos", repo.owner, repo.name),
            "html_url": self.base_url.removesuffix(PREFIX) + "/" + repo.full_name,
            "default_branch": repo.default_branch,
            "size": 0,
            "permissions": {
                "admin": role == "admin",
                "maintain": role == "admin",
                "push": role == "admin",
                "triage": role == "admin",
                "pull": role is not None,
            },
        }

    def account_json(self, login: str, kind: str) -> dict[str, Any]:
        kind_path = "orgs" if kind == "Organization" else "users"
        return {
            "login": login,
            "id": abs(hash(login.lower())) % 10**6,
            "type": kind,
            "url": self.url(kind_path, login),
            "site_admin": False,
        }


# --- routes --------------------------------------------------------------------


def _route(verb: str, parts: list[str]) -> tuple[Any, tuple[str, ...]] | None:
    match (verb, parts):
        case ("GET", ["user"]):
            return _get_user, ()
        case ("POST", ["user", "repos"]):
            return _create_user_repo, ()
        case ("GET", ["users", login]):
            return _get_account, (login,)
        case ("GET", ["orgs", login]):
            return _get_org, (login,)
        case ("POST", ["orgs", login, "repos"]):
            return _create_org_repo, (login,)
        case ("GET" | "PATCH", ["repos", owner, name]):
            return (_get_repo if verb == "GET" else _edit_repo), (owner, name)
        case ("GET" | "PUT", ["repos", owner, name, "branches", *rest, "protection"]) if rest:
            handler = _get_protection if verb == "GET" else _put_protection
            return handler, (owner, name, "/".join(rest))
        case ("GET", ["repos", owner, name, "branches", *rest]) if rest:
            return _get_branch, (owner, name, "/".join(rest))
        case ("GET", ["repos", owner, name, "rules", "branches", *rest]) if rest:
            return _get_branch_rules, (owner, name, "/".join(rest))
        case ("GET" | "POST", ["repos", owner, name, "rulesets"]):
            return (_list_rulesets if verb == "GET" else _create_ruleset), (owner, name)
        case ("GET" | "PUT", ["repos", owner, name, "rulesets", ruleset_id]):
            return (_get_ruleset if verb == "GET" else _put_ruleset), (owner, name, ruleset_id)
        case ("POST", ["repos", owner, name, "git", "trees" | "commits" | "refs" as kind]):
            return _GIT_DATA[kind], (owner, name)
        case ("PUT", ["repos", owner, name, "contents", *path]) if path:
            return _put_contents, (owner, name, "/".join(path))
        case ("GET" | "POST", ["repos", owner, name, "keys"]):
            return (_list_keys if verb == "GET" else _add_key), (owner, name)
        case ("DELETE", ["repos", owner, name, "keys", key_id]):
            return _delete_key, (owner, name, key_id)
    return None


def _get_user(fake: FakeGithub, token: Token, user: str, body: Any) -> tuple[int, Any]:
    if token.app is not None:
        raise HttpError(403, "Resource not accessible by integration")
    return 200, fake.account_json(user, "User")


def _get_account(fake: FakeGithub, token: Token, user: str, body: Any, login: str) -> Any:
    if login.lower() in fake.orgs:
        return 200, fake.account_json(fake.orgs[login.lower()].login, "Organization")
    if login.lower() in fake.users:
        return 200, fake.account_json(fake.users[login.lower()], "User")
    raise HttpError(404, "Not Found")


def _get_org(fake: FakeGithub, token: Token, user: str, body: Any, login: str) -> Any:
    org = fake.orgs.get(login.lower())
    if org is None:
        raise HttpError(404, "Not Found")
    return 200, fake.account_json(org.login, "Organization") | {
        "repos_url": fake.url("orgs", org.login, "repos")
    }


def _create_user_repo(fake: FakeGithub, token: Token, user: str, body: Any) -> Any:
    return _create_repo(fake, user, fake.users[user.lower()], body)


def _create_org_repo(fake: FakeGithub, token: Token, user: str, body: Any, login: str) -> Any:
    org = fake.orgs.get(login.lower())
    if org is None:
        raise HttpError(404, "Not Found")
    installed = token.app is not None and token.app.owner.lower() == org.login.lower()
    if user.lower() not in org.admins | org.members and not installed:
        raise HttpError(403, "You need admin access to the organization before adding a repo.")
    return _create_repo(fake, user, org.login, body)


def _create_repo(fake: FakeGithub, user: str, owner: str, body: Any) -> Any:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise HttpError(422, "Repository creation failed.")
    if f"{owner}/{name}".lower() in fake.repos:
        raise HttpError(
            422,
            "Repository creation failed.",
            errors=[
                {
                    "resource": "Repository",
                    "code": "custom",
                    "field": "name",
                    "message": "name already exists on this account",
                }
            ],
        )
    repo = fake.add_repo(f"{owner}/{name}", private=bool(body.get("private", False)))
    if body.get("auto_init"):
        _initial_commit(repo, "README.md", f"# {name}\n".encode(), "Initial commit", user)
    return 201, fake.repo_json(repo, user)


def _get_repo(fake: FakeGithub, token: Token, user: str, body: Any, owner: str, name: str) -> Any:
    return 200, fake.repo_json(fake.repo_for(user, owner, name), user)


def _edit_repo(fake: FakeGithub, token: Token, user: str, body: Any, owner: str, name: str) -> Any:
    repo = _admin_repo(fake, token, user, owner, name)
    if "private" in body:
        repo.private = bool(body["private"])
    return 200, fake.repo_json(repo, user)


def _admin_repo(fake: FakeGithub, token: Token, user: str, owner: str, name: str) -> Repo:
    repo = fake.repo_for(user, owner, name, need="admin")
    if not token.administration:
        raise HttpError(403, "Resource not accessible by personal access token")
    return repo


def _require_plan(fake: FakeGithub, repo: Repo) -> None:
    """GitHub Free has branch protection and rulesets for public repositories only."""
    if repo.private and repo.owner.lower() in fake.free_accounts:
        raise HttpError(403, UPGRADE)


# --- branches and protection ---------------------------------------------------


def _get_branch(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    owner, name, branch = where
    repo = fake.repo_for(user, owner, name)
    if branch not in repo.branches:
        raise HttpError(404, "Branch not found")
    sha = repo.branches[branch]
    protected = branch in repo.protections or bool(_rules_for(repo, branch))
    return 200, {
        "name": branch,
        "commit": {"sha": sha, "url": fake.url("repos", owner, name, "commits", sha)},
        "protected": protected,
        "protection": {"enabled": protected, "required_status_checks": {"contexts": []}},
        "protection_url": fake.url("repos", owner, name, "branches", branch, "protection"),
    }


def _get_protection(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    owner, name, branch = where
    repo = _admin_repo(fake, token, user, owner, name)
    _require_plan(fake, repo)
    if branch not in repo.branches:
        raise HttpError(404, "Branch not found")
    if branch not in repo.protections:
        raise HttpError(404, "Branch not protected")
    return 200, _protection_json(fake, repo, branch)


def _put_protection(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    owner, name, branch = where
    repo = _admin_repo(fake, token, user, owner, name)
    _require_plan(fake, repo)
    if branch not in repo.branches:
        raise HttpError(404, "Branch not found")
    required = ("required_status_checks", "enforce_admins", "required_pull_request_reviews")
    missing = [key for key in (*required, "restrictions") if key not in body]
    if missing:
        raise HttpError(422, f"Invalid request.\n\n{missing[0]!r} wasn't supplied.")
    repo.protections[branch] = _protection_from(body)
    return 200, _protection_json(fake, repo, branch)


def _protection_from(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "required_status_checks": body.get("required_status_checks"),
        "required_pull_request_reviews": body.get("required_pull_request_reviews"),
        "restrictions": body.get("restrictions"),
        "enforce_admins": bool(body.get("enforce_admins")),
        "allow_force_pushes": bool(body.get("allow_force_pushes")),
        "allow_deletions": bool(body.get("allow_deletions")),
        "lock_branch": bool(body.get("lock_branch")),
    }


def _protection_json(fake: FakeGithub, repo: Repo, branch: str) -> dict[str, Any]:
    rules = repo.protections[branch]
    url = fake.url("repos", repo.owner, repo.name, "branches", branch, "protection")
    out: dict[str, Any] = {
        "url": url,
        "required_signatures": {"url": f"{url}/required_signatures", "enabled": False},
        "enforce_admins": {"url": f"{url}/enforce_admins", "enabled": rules["enforce_admins"]},
        "required_linear_history": {"enabled": False},
        "allow_force_pushes": {"enabled": rules["allow_force_pushes"]},
        "allow_deletions": {"enabled": rules["allow_deletions"]},
        "block_creations": {"enabled": False},
        "required_conversation_resolution": {"enabled": False},
        "lock_branch": {"enabled": rules["lock_branch"]},
        "allow_fork_syncing": {"enabled": False},
    }
    if rules["required_status_checks"] is not None:
        checks = rules["required_status_checks"]
        out["required_status_checks"] = {
            "url": f"{url}/required_status_checks",
            "strict": bool(checks.get("strict")),
            "contexts": [c["context"] for c in checks.get("checks", [])],
            "checks": checks.get("checks", []),
        }
    if rules["required_pull_request_reviews"] is not None:
        out["required_pull_request_reviews"] = {
            "url": f"{url}/required_pull_request_reviews",
            "required_approving_review_count": 1,
        }
    if rules["restrictions"] is not None:
        out["restrictions"] = {
            "url": f"{url}/restrictions",
            "users_url": f"{url}/restrictions/users",
            "teams_url": f"{url}/restrictions/teams",
            "apps_url": f"{url}/restrictions/apps",
            "users": [],
            "teams": [],
            "apps": [],
        }
    return out


# --- rulesets ------------------------------------------------------------------


def _rules_for(repo: Repo, branch: str) -> list[dict[str, Any]]:
    """The rules of the active branch rulesets whose ref_name condition takes ``branch``."""
    ref = f"refs/heads/{branch}"
    out = []
    for ruleset in repo.rulesets:
        if ruleset["enforcement"] != "active" or ruleset["target"] != "branch":
            continue
        ref_name = (ruleset.get("conditions") or {}).get("ref_name") or {}
        included = any(_ref_matches(p, ref, repo) for p in ref_name.get("include") or [])
        if not included or any(_ref_matches(p, ref, repo) for p in ref_name.get("exclude") or []):
            continue
        source = {
            "ruleset_source_type": "Repository",
            "ruleset_source": repo.full_name,
            "ruleset_id": ruleset["id"],
        }
        out += [rule | source for rule in ruleset.get("rules") or []]
    return out


def _ref_matches(pattern: str, ref: str, repo: Repo) -> bool:
    if pattern == "~ALL":
        return True
    if pattern == "~DEFAULT_BRANCH":
        return ref == f"refs/heads/{repo.default_branch}"
    return re.fullmatch(_fnmatch_regex(pattern), ref) is not None


def _fnmatch_regex(pattern: str) -> str:
    """GitHub's ref patterns (Ruby's File.fnmatch with FNM_PATHNAME): ``*`` and ``?``
    stay within a path segment, ``**/`` is any number of directories (even none),
    ``[...]`` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _get_branch_rules(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    owner, name, branch = where
    repo = fake.repo_for(user, owner, name)  # "Metadata: read"; the branch need not exist
    return 200, _rules_for(repo, branch)


def _list_rulesets(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    repo = fake.repo_for(user, *where)
    return 200, [_ruleset_json(fake, repo, r, full=False) for r in repo.rulesets]


def _create_ruleset(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    repo = _admin_repo(fake, token, user, *where)
    _require_plan(fake, repo)
    _validate_ruleset(repo, body, None)
    return 201, _ruleset_json(fake, repo, _store_ruleset(fake, repo, body))


def _find_ruleset(repo: Repo, ruleset_id: str) -> dict[str, Any]:
    found = next((r for r in repo.rulesets if str(r["id"]) == ruleset_id), None)
    if found is None:
        raise HttpError(404, "Not Found")
    return found


def _get_ruleset(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    owner, name, ruleset_id = where
    repo = fake.repo_for(user, owner, name)
    return 200, _ruleset_json(fake, repo, _find_ruleset(repo, ruleset_id))


def _put_ruleset(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    owner, name, ruleset_id = where
    repo = _admin_repo(fake, token, user, owner, name)
    _require_plan(fake, repo)
    ruleset = _find_ruleset(repo, ruleset_id)
    _validate_ruleset(repo, ruleset | body, ruleset["id"])
    keys = ("name", "target", "enforcement", "bypass_actors", "conditions", "rules")
    ruleset.update({key: body[key] for key in keys if key in body})
    ruleset["updated_at"] = _now()
    return 200, _ruleset_json(fake, repo, ruleset)


def _validate_ruleset(repo: Repo, body: dict[str, Any], own_id: int | None) -> None:
    errors = []
    name = body.get("name")
    if not isinstance(name, str) or not name:
        errors.append("Name can't be blank")
    elif any(r["name"] == name and r["id"] != own_id for r in repo.rulesets):
        errors.append("Name must be unique")
    if body.get("enforcement") not in ("disabled", "active", "evaluate"):
        errors.append(f"Invalid property /enforcement: {body.get('enforcement')!r}")
    if body.get("target", "branch") not in ("branch", "tag", "push"):
        errors.append(f"Invalid property /target: {body.get('target')!r}")
    for rule in body.get("rules") or []:
        if not isinstance(rule, dict) or rule.get("type") not in RULE_TYPES:
            errors.append(f"Invalid rule: {rule!r}")
    if errors:
        raise HttpError(422, "Validation Failed", errors=errors)


def _store_ruleset(fake: FakeGithub, repo: Repo, body: dict[str, Any]) -> dict[str, Any]:
    ruleset = {
        "id": next(fake._ids),
        "name": body["name"],
        "target": body.get("target", "branch"),
        "enforcement": body["enforcement"],
        "bypass_actors": body.get("bypass_actors", []),
        "conditions": body.get("conditions") or {},
        "rules": body.get("rules") or [],
        "created_at": _now(),
        "updated_at": _now(),
    }
    repo.rulesets.append(ruleset)
    return ruleset


def _ruleset_json(
    fake: FakeGithub, repo: Repo, ruleset: dict[str, Any], full: bool = True
) -> dict[str, Any]:
    url = fake.url("repos", repo.owner, repo.name, "rulesets", str(ruleset["id"]))
    out = {
        "id": ruleset["id"],
        "name": ruleset["name"],
        "target": ruleset["target"],
        "source_type": "Repository",
        "source": repo.full_name,
        "enforcement": ruleset["enforcement"],
        "node_id": f"RRS_{ruleset['id']}",
        "_links": {"self": {"href": url}},
        "created_at": ruleset["created_at"],
        "updated_at": ruleset["updated_at"],
    }
    if full:
        out |= {
            "bypass_actors": ruleset["bypass_actors"],
            "current_user_can_bypass": "never",
            "conditions": ruleset["conditions"],
            "rules": ruleset["rules"],
        }
    return out


def _now(at: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if at is None else at))


# --- GitHub Apps ----------------------------------------------------------------


def _mint_token(fake: FakeGithub, authorization: str, installation_id: str) -> tuple[int, Any]:
    """``POST /app/installations/{id}/access_tokens``, authenticated as the app by a JWT."""
    scheme, _, text = authorization.partition(" ")
    undecodable = HttpError(401, "A JSON web token could not be decoded")
    try:
        claims = jwt.decode(text, options={"verify_signature": False})
        app = fake.apps.get(int(claims["iss"]))
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        raise undecodable from None
    if scheme.lower() != "bearer" or app is None:
        raise undecodable
    try:
        jwt.decode(
            text, app.public_key_pem, algorithms=["RS256"], options={"require": ["iat", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise HttpError(
            401,
            "'Expiration time' claim ('exp') must be a numeric value representing the future "
            "time at which the assertion expires",
        ) from None
    except jwt.PyJWTError:
        raise undecodable from None
    if claims["exp"] > time.time() + 600:
        raise HttpError(401, "'Expiration time' claim ('exp') is too far in the future")
    if installation_id != str(app.installation_id):
        raise HttpError(404, "Not Found")
    token = "ghs_" + secrets.token_hex(18)
    expires_at = time.time() + app.expires_in
    fake.tokens[token] = Token(app.bot, app=app, expires_at=expires_at)
    app.issued.append(token)
    if app.on_issue is not None:
        app.on_issue(token)
    return 201, {
        "token": token,
        "expires_at": _now(expires_at),
        "permissions": {"administration": "write", "contents": "write", "metadata": "read"},
        "repository_selection": "all",
    }


# --- git data and contents -----------------------------------------------------


def _git_repo(fake: FakeGithub, user: str, owner: str, name: str) -> Repo:
    repo = fake.repo_for(user, owner, name, need="write")
    if not repo.branches:
        raise HttpError(409, "Git Repository is empty.")
    return repo


def _create_tree(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    repo = _git_repo(fake, user, *where)
    if body.get("tree") != [] or "base_tree" in body:
        raise HttpError(422, "this fake creates only the empty tree")
    sha = _store(repo, "tree", b"")
    return 201, {"sha": sha, "url": fake.url("repos", *where, "git", "trees", sha), "tree": []}


def _create_commit(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    repo = _git_repo(fake, user, *where)
    tree, parents = body.get("tree"), body.get("parents", [])
    if repo.objects.get(tree, {}).get("type") != "tree":
        raise HttpError(422, "Tree SHA does not exist")
    if any(repo.objects.get(p, {}).get("type") != "commit" for p in parents):
        raise HttpError(422, "Parent SHA does not exist or is not a commit object")
    sha = _commit(repo, tree, parents, body["message"], user)
    return 201, _commit_json(fake, repo, sha)


def _create_ref(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    repo = _git_repo(fake, user, *where)
    ref, sha = body.get("ref", ""), body.get("sha", "")
    if not ref.startswith("refs/heads/") or ref.count("/") < 2:
        raise HttpError(422, "Reference name is invalid")
    if repo.objects.get(sha, {}).get("type") != "commit":
        raise HttpError(422, "Object does not exist")
    branch = ref.removeprefix("refs/heads/")
    if branch in repo.branches:
        raise HttpError(422, "Reference already exists")
    repo.branches[branch] = sha
    return 201, {
        "ref": ref,
        "node_id": f"REF_{sha[:8]}",
        "url": fake.url("repos", *where, "git", "refs", "heads", branch),
        "object": {"type": "commit", "sha": sha, "url": fake.url("repos", *where, "git", sha)},
    }


_GIT_DATA = {"trees": _create_tree, "commits": _create_commit, "refs": _create_ref}


def _put_contents(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    owner, name, path = where
    repo = fake.repo_for(user, owner, name, need="write")
    branch = body.get("branch", repo.default_branch)
    if repo.branches and branch not in repo.branches:
        raise HttpError(404, f"Branch {branch} not found")
    if repo.branches:
        raise HttpError(422, "this fake writes files only into an empty repository")
    content = base64.b64decode(body["content"])
    sha = _initial_commit(repo, path, content, body["message"], user, branch)
    blob = repo.objects[sha]["blob"]
    return 201, {
        "content": {
            "type": "file",
            "name": path.rpartition("/")[2],
            "path": path,
            "sha": blob,
            "size": len(content),
            "url": fake.url("repos", owner, name, "contents", path),
            "git_url": fake.url("repos", owner, name, "git", "blobs", blob),
        },
        "commit": _commit_json(fake, repo, sha),
    }


def _initial_commit(
    repo: Repo, path: str, content: bytes, message: str, user: str, branch: str = ""
) -> str:
    blob = _store(repo, "blob", content)
    tree = _store(repo, "tree", b"100644 " + path.encode() + b"\0" + bytes.fromhex(blob))
    sha = _commit(repo, tree, [], message, user)
    repo.objects[sha]["blob"] = blob
    repo.branches[branch or repo.default_branch] = sha
    return sha


# --- deploy keys ---------------------------------------------------------------


def _list_keys(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    repo = _admin_repo(fake, token, user, *where)
    return 200, [_key_json(fake, repo, key) for key in repo.keys]


def _add_key(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    repo = _admin_repo(fake, token, user, *where)
    if not _keys_allowed(fake, repo):
        raise HttpError(422, "Deploy keys are disabled for this repository")
    material = _material(body.get("key", ""))
    if not material.startswith(("ssh-ed25519 AAAA", "ssh-rsa AAAA", "ecdsa-sha2-")):
        raise HttpError(422, "Validation Failed", errors=[_key_error("key is invalid")])
    if any(k.key == material for r in fake.repos.values() for k in r.keys):
        raise HttpError(422, "Validation Failed", errors=[_key_error("key is already in use")])
    read_only = body.get("read_only", True)  # GitHub's default: read-only
    key = Key(next(fake._ids), body.get("title", ""), material, bool(read_only), user)
    repo.keys.append(key)
    return 201, _key_json(fake, repo, key)


def _delete_key(fake: FakeGithub, token: Token, user: str, body: Any, *where: str) -> Any:
    owner, name, key_id = where
    repo = _admin_repo(fake, token, user, owner, name)
    before = len(repo.keys)
    repo.keys = [k for k in repo.keys if str(k.id) != key_id]
    if len(repo.keys) == before:
        raise HttpError(404, "Not Found")
    return 204, None


def _keys_allowed(fake: FakeGithub, repo: Repo) -> bool:
    org = fake.orgs.get(repo.owner.lower())
    return org is None or org.deploy_keys_allowed


def _key_error(message: str) -> dict[str, str]:
    return {"resource": "PublicKey", "code": "custom", "field": "key", "message": message}


def _key_json(fake: FakeGithub, repo: Repo, key: Key) -> dict[str, Any]:
    return {
        "id": key.id,
        "key": key.key,
        "url": fake.url("repos", repo.owner, repo.name, "keys", str(key.id)),
        "title": key.title,
        "verified": True,
        "created_at": "2024-01-01T00:00:00Z",
        "read_only": key.read_only,
        "added_by": key.added_by,
        "last_used": None,
        "enabled": _keys_allowed(fake, repo),
    }


def _material(key: str) -> str:
    return " ".join(key.split()[:2])


# --- git objects ---------------------------------------------------------------


def _store(repo: Repo, kind: str, data: bytes) -> str:
    """Store an object under its real git SHA-1 (so the empty tree is 4b825dc...)."""
    sha = hashlib.sha1(b"%s %d\0%s" % (kind.encode(), len(data), data)).hexdigest()
    repo.objects.setdefault(sha, {"type": kind})
    return sha


def _commit(repo: Repo, tree: str, parents: list[str], message: str, user: str) -> str:
    when = int(time.time())
    ident = f"{user} <{user}@users.noreply.github.com> {when} +0000"
    lines = [f"tree {tree}", *(f"parent {p}" for p in parents)]
    text = "\n".join([*lines, f"author {ident}", f"committer {ident}", "", message])
    sha = _store(repo, "commit", text.encode())
    repo.objects[sha].update(tree=tree, parents=parents, message=message, user=user, when=when)
    return sha


def _commit_json(fake: FakeGithub, repo: Repo, sha: str) -> dict[str, Any]:
    commit = repo.objects[sha]
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(commit["when"]))
    who = {"name": commit["user"], "email": f"{commit['user']}@users.noreply.github.com"}
    where = ("repos", repo.owner, repo.name, "git")
    return {
        "sha": sha,
        "node_id": f"C_{sha[:8]}",
        "url": fake.url(*where, "commits", sha),
        "author": who | {"date": date},
        "committer": who | {"date": date},
        "message": commit["message"],
        "tree": {"sha": commit["tree"], "url": fake.url(*where, "trees", commit["tree"])},
        "parents": [{"sha": p, "url": fake.url(*where, "commits", p)} for p in commit["parents"]],
        "verification": {"verified": False, "reason": "unsigned", "signature": None},
    }


# --- HTTP ----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each request waits 30-40 ms for a delayed ACK

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        fake: FakeGithub = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(self.path).path
        extra: dict[str, str] = {}
        try:
            if not path.startswith(PREFIX + "/"):
                raise HttpError(404, "Not Found")
            body = json.loads(raw) if raw else {}
            with fake.lock:
                status, payload = fake.handle(self.command, path[len(PREFIX) :], self.headers, body)
        except HttpError as error:
            status, payload, extra = error.status, error.body, error.headers
        self._reply(status, payload, extra)

    def _reply(self, status: int, payload: Any, extra: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(data)),
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Reset": str(RATE_LIMIT_RESET),
            "X-RateLimit-Used": "1",
            "X-RateLimit-Resource": "core",
        }
        for name, value in (headers | extra).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass
