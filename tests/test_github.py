"""GitHub bootstrap: PyGithub, unpatched, against a stateful fake of GitHub's REST API."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_github import EMPTY_TREE, FakeGithub
from github import Auth, Github

import gitmq.github
from gitmq.budget import Budget
from gitmq.cli.github_cmd import github_target_from_config, main
from gitmq.config import GithubAppConfig
from gitmq.errors import ConfigError, GitMQError
from gitmq.github import (
    ApiCredentials,
    DeployKey,
    GithubError,
    GithubTarget,
    ReadLoad,
    check,
    setup,
)
from gitmq.github_app import installation_auth

ROOT = Path(__file__).resolve().parent.parent
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHdeploykeyofnodeaaaaaaaaaaaaaaaaaaaaaaaaaaa node-a"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHdeploykeyofnodebbbbbbbbbbbbbbbbbbbbbbbbbbb node-b"
RIGHTS = (
    "the token needs admin rights on the repository (classic token: scope 'repo'; "
    "fine-grained token: 'Administration' and 'Contents' read and write)"
)
CREATED = [
    "repository acme/queues: created (private)",
    "repository acme/queues: initialised with README.md on branch main",
    "branch orders: created",
    "branch orders: protected against force-push and deletion",
    "branch orders.dlq: created",
    "branch orders.dlq: protected against force-push and deletion",
    "deploy key node-a: added with write access",
    "deploy key node-b: added with write access",
]


@pytest.fixture
def fake_github() -> Iterator[FakeGithub]:
    """A started fake: user alice (token "alice-token") is an admin of organisation acme."""
    fake = FakeGithub()
    fake.add_user("alice", "alice-token")
    fake.add_user("mallory", "mallory-token")
    fake.add_org("acme", admins=("alice",))
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def target(fake: FakeGithub, repository: str = "acme/queues", **options: object) -> GithubTarget:
    keys = (DeployKey("node-a", KEY_A), DeployKey("node-b", KEY_B))
    fields: dict[str, object] = {"branches": ("orders", "orders.dlq"), "deploy_keys": keys}
    fields |= options
    return GithubTarget(repository, base_url=fake.base_url, **fields)  # type: ignore[arg-type]


def lines(records: list[object]) -> list[str]:
    return [str(record) for record in records]


def run_setup(
    fake: FakeGithub,
    token: ApiCredentials = "alice-token",
    ruleset: bool = False,
    **options: object,
) -> list[str]:
    changes = setup(target(fake, **options), token, throttle=False, ruleset=ruleset)  # type: ignore[arg-type]
    return lines(changes)


def run_check(
    fake: FakeGithub, token: ApiCredentials = "alice-token", notes: bool = False, **options: object
) -> list[str]:
    """The lines check reports; without ``notes``, only the problems."""
    found = check(target(fake, **options), token, throttle=False)  # type: ignore[arg-type]
    return lines([p for p in found if notes or p.blocking])


def setup_error(fake: FakeGithub, token: ApiCredentials = "alice-token", **options: object) -> str:
    with pytest.raises(GithubError) as info:
        run_setup(fake, token, **options)
    assert isinstance(info.value, GitMQError)
    return info.value.message


def added_by_note(title: str, login: str = "alice") -> str:
    return (
        f"note: deploy key {title}: added by {login}; if with a personal access token, GitHub "
        f"deletes the key when that token is deleted or {login} loses access to the "
        f"repository: add keys as a GitHub App (github.app) to make them outlast people"
    )


# --- setup ---------------------------------------------------------------------


def test_first_setup_creates_and_protects_everything(fake_github: FakeGithub) -> None:
    assert run_setup(fake_github) == CREATED

    repo = fake_github.repos["acme/queues"]
    assert repo.private
    for name in ("orders", "orders.dlq"):
        root = repo.objects[repo.branches[name]]
        assert (root["tree"], root["parents"]) == (EMPTY_TREE, [])
        assert root["message"] == f"gitmq: queue {name} created"
        rules = repo.protections[name]
        assert not rules["allow_force_pushes"]
        assert not rules["allow_deletions"]
        assert rules["enforce_admins"]
        assert rules["required_pull_request_reviews"] is None
        assert rules["required_status_checks"] is None
    assert [(k.title, k.read_only) for k in repo.keys] == [("node-a", False), ("node-b", False)]


def test_second_setup_changes_nothing_and_writes_nothing(fake_github: FakeGithub) -> None:
    run_setup(fake_github)
    before = len(fake_github.requests)

    assert run_setup(fake_github) == []
    second = fake_github.requests[before:]
    assert second, "the second run still looks at everything"
    assert [verb for verb, _ in second if verb != "GET"] == []


def test_setup_makes_a_public_repository_private(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues", private=False, branches=("orders", "orders.dlq"))

    assert run_setup(fake_github)[0] == "repository acme/queues: made private"
    assert fake_github.repos["acme/queues"].private


def test_setup_creates_a_repository_for_the_token_user(fake_github: FakeGithub) -> None:
    changes = run_setup(fake_github, repository="alice/queues", private=False)

    assert changes[0] == "repository alice/queues: created (public)"
    assert fake_github.repos["alice/queues"].owner == "alice"


def test_setup_adopts_an_existing_repository_and_fixes_only_what_is_missing(
    fake_github: FakeGithub,
) -> None:
    fake_github.add_repo("alice/queues", branches=("main", "orders"))
    fake_github.protect("alice/queues", "orders", allow_force_pushes=True)
    fake_github.add_key("alice/queues", "node-a", KEY_A, read_only=False)
    fake_github.add_key("alice/queues", "node-b", KEY_B, read_only=True)
    orders = fake_github.repos["alice/queues"].branches["orders"]

    assert run_setup(fake_github, repository="alice/queues") == [
        "branch orders: protected against force-push and deletion",
        "branch orders.dlq: created",
        "branch orders.dlq: protected against force-push and deletion",
        "deploy key node-b: replaced read-only key with a write key",
    ]
    repo = fake_github.repos["alice/queues"]
    assert repo.branches["orders"] == orders, "an existing queue keeps its messages"
    assert [(k.title, k.read_only) for k in repo.keys] == [("node-a", False), ("node-b", False)]
    assert run_check(fake_github, repository="alice/queues") == []


# --- check ---------------------------------------------------------------------


def test_check_passes_after_setup(fake_github: FakeGithub) -> None:
    run_setup(fake_github)
    writes = fake_github.writes()

    assert run_check(fake_github, notes=True) == [added_by_note("node-a"), added_by_note("node-b")]
    assert fake_github.writes() == writes


def test_check_reports_a_missing_repository(fake_github: FakeGithub) -> None:
    assert run_check(fake_github, notes=True) == [
        "repository acme/queues: does not exist (or the token cannot see it)"
    ]


def test_check_reports_each_problem_and_changes_nothing(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues", private=False, branches=("orders",))
    fake_github.add_key("acme/queues", "node-a", KEY_A, read_only=True)

    assert run_check(fake_github) == [
        "repository acme/queues: public, but the config asks private",
        "branch orders: not protected against force-push and deletion",
        "branch orders.dlq: does not exist",
        "deploy key node-a: read-only; nodes push with it",
        "deploy key node-b: missing",
    ]
    assert fake_github.writes() == []


def test_check_reports_each_weak_protection_rule(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues", branches=("orders",))
    fake_github.protect(
        "acme/queues",
        "orders",
        allow_force_pushes=True,
        allow_deletions=True,
        enforce_admins=False,
        required_pull_request_reviews={"required_approving_review_count": 1},
        required_status_checks={"strict": True, "checks": [{"context": "ci"}]},
        restrictions={"users": [], "teams": []},
        lock_branch=True,
    )

    problems = run_check(fake_github, branches=("orders",), deploy_keys=())

    assert problems == [
        "branch orders: allows force-pushes",
        "branch orders: allows deletion",
        "branch orders: protection does not apply to administrators",
        "branch orders: requires pull request reviews, which refuse node pushes",
        "branch orders: requires status checks, which refuse node pushes",
        "branch orders: restricts who may push, which refuses deploy keys",
        "branch orders: is locked read-only",
    ]
    run_setup(fake_github, branches=("orders",), deploy_keys=())
    assert run_check(fake_github, branches=("orders",), deploy_keys=()) == []


# --- errors --------------------------------------------------------------------


def test_bad_token(fake_github: FakeGithub) -> None:
    assert setup_error(fake_github, "wrong-token") == (
        "bad token: GitHub answered 401 (Bad credentials) while reading the token's user; "
        "check that the token is current and complete"
    )
    with pytest.raises(GithubError, match=r"^bad token: "):
        run_check(fake_github, "wrong-token")


def test_missing_organisation(fake_github: FakeGithub) -> None:
    assert setup_error(fake_github, repository="nosuch/queues") == (
        "cannot create repository nosuch/queues: there is no GitHub organisation or user "
        "named 'nosuch'"
    )
    assert "nosuch/queues" not in fake_github.repos


def test_repository_of_another_user_that_the_token_can_see(fake_github: FakeGithub) -> None:
    fake_github.add_repo("mallory/queues", private=False, branches=("orders",))

    assert setup_error(fake_github, repository="mallory/queues") == (
        "repository mallory/queues belongs to mallory and the token's user alice is not an "
        "admin of it: use a token of one of its admins, or choose another repository"
    )
    with pytest.raises(GithubError, match=r"^repository mallory/queues belongs to mallory"):
        run_check(fake_github, repository="mallory/queues")
    assert fake_github.writes() == []


def test_repository_of_another_user_that_the_token_cannot_see(fake_github: FakeGithub) -> None:
    fake_github.add_repo("mallory/queues", private=True)

    assert setup_error(fake_github, repository="mallory/queues") == (
        "cannot create repository mallory/queues: mallory is another user's account; a "
        "token can create repositories only for its own user (alice) or for an organisation"
    )
    assert fake_github.writes() == []


def test_existing_repository_hidden_from_an_organisation_member(fake_github: FakeGithub) -> None:
    fake_github.add_org("hidden", members={"alice"}, base_permission="none")
    fake_github.add_repo("hidden/queues", private=True)

    assert setup_error(fake_github, repository="hidden/queues") == (
        "repository hidden/queues already exists, but the token's user alice cannot see it: "
        "ask an owner of hidden for admin rights on it"
    )


def test_token_without_administration_permission(fake_github: FakeGithub) -> None:
    fake_github.add_user("alice", "limited-token", administration=False)
    fake_github.add_repo("acme/queues", branches=("orders", "orders.dlq"))

    assert setup_error(fake_github, "limited-token") == (
        "permission denied while protecting branch orders: GitHub answered 403 (Resource not "
        f"accessible by personal access token); {RIGHTS}"
    )
    with pytest.raises(GithubError, match=r"^permission denied while reading the protection of"):
        run_check(fake_github, "limited-token")


@pytest.mark.parametrize("status", [403, 429])
def test_rate_limit_says_when_it_resets(fake_github: FakeGithub, status: int) -> None:
    fake_github.add_user("alice", "spent-token", rate_limited=True, rate_limit_status=status)

    assert setup_error(fake_github, "spent-token") == (
        "GitHub API rate limit exceeded while reading the token's user; it resets at "
        "2030-01-01 00:00:00 UTC, then run again"
    )
    assert len(fake_github.requests) == 1, "no retry, no waiting"


def test_deploy_key_used_by_another_repository(fake_github: FakeGithub) -> None:
    fake_github.add_repo("alice/other", branches=("main",))
    fake_github.add_key("alice/other", "node-a", KEY_A, read_only=False)

    assert setup_error(fake_github) == (
        "deploy key node-a: GitHub refuses it, the key is already in use elsewhere; a deploy "
        "key serves one repository only, so give this node its own key"
    )


def test_empty_repository_whose_default_branch_is_a_queue(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues")

    assert setup_error(fake_github, branches=("orders", "main")) == (
        "repository acme/queues is empty and queue 'main' has the name of its default branch, "
        "which must hold a README before GitHub accepts any other commit: rename the queue, "
        "or push that queue from a node before running setup"
    )


def test_unreachable_github(fake_github: FakeGithub) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        unreachable = GithubTarget(
            "acme/queues", ("orders",), (), base_url=f"http://127.0.0.1:{port}"
        )
        with pytest.raises(GithubError, match=r"^cannot reach GitHub while reading the token's"):
            check(unreachable, "alice-token", throttle=False)


# --- rulesets --------------------------------------------------------------------


def key_setup(fake: FakeGithub, repository: str = "acme/queues") -> None:
    """Both deploy keys in place, as an App added them: no key lines in check."""
    for title, key in (("node-a", KEY_A), ("node-b", KEY_B)):
        fake.add_key(repository, title, key, read_only=False)


def test_a_branch_protected_only_by_a_ruleset_is_protected(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues", branches=("main", "orders", "orders.dlq"))
    key_setup(fake_github)
    fake_github.add_ruleset(
        "acme/queues",
        name="no rewrites",
        conditions={"ref_name": {"include": ["~ALL"], "exclude": ["~DEFAULT_BRANCH"]}},
        rules=[{"type": "non_fast_forward"}, {"type": "deletion"}],
    )

    assert run_check(fake_github, notes=True) == []
    assert run_setup(fake_github) == []
    repo = fake_github.repos["acme/queues"]
    assert repo.protections == {}, "the ruleset is enough: no classic protection added"


def test_a_ruleset_without_deletion_leaves_the_queue_deletable(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues", branches=("orders",))
    fake_github.add_ruleset(
        "acme/queues",
        name="linear",
        conditions={"ref_name": {"include": ["refs/heads/orders"]}},
        rules=[{"type": "non_fast_forward"}],
    )

    assert run_check(fake_github, branches=("orders",), deploy_keys=()) == [
        "branch orders: not protected against deletion"
    ]
    assert run_setup(fake_github, branches=("orders",), deploy_keys=()) == [
        "branch orders: protected against force-push and deletion"
    ]
    assert run_check(fake_github, branches=("orders",), deploy_keys=()) == []


def test_check_reports_ruleset_rules_that_refuse_node_pushes(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues", branches=("orders", "orders.dlq"))
    fake_github.protect("acme/queues", "orders", enforce_admins=True)
    fake_github.protect("acme/queues", "orders.dlq", enforce_admins=True)
    key_setup(fake_github)
    strict = fake_github.add_ruleset(
        "acme/queues",
        name="strict",
        conditions={"ref_name": {"include": ["refs/heads/orders"]}},
        rules=[
            {"type": "required_signatures"},
            {"type": "pull_request", "parameters": {"required_approving_review_count": 1}},
            {"type": "commit_message_pattern", "parameters": {"operator": "starts_with"}},
        ],
    )
    fake_github.add_ruleset(
        "acme/queues",
        name="not enforced",
        enforcement="evaluate",
        conditions={"ref_name": {"include": ["~ALL"]}},
        rules=[{"type": "update"}],
    )
    where = f"ruleset {strict['id']} of repository acme/queues"
    fix = (
        "which refuses node pushes: exclude refs/heads/orders from it, or let deploy keys bypass it"
    )

    assert run_check(fake_github) == [
        f"branch orders: {where} requires signed commits (required_signatures), {fix}",
        f"branch orders: {where} requires a pull request (pull_request), {fix}",
        f"branch orders: {where} restricts commit messages (commit_message_pattern), {fix}",
    ]


def test_check_reports_rules_that_stop_segments(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues", branches=("orders", "team/jobs"))
    for name in ("orders", "team/jobs"):
        fake_github.protect("acme/queues", name, enforce_admins=True)
    guard = fake_github.add_ruleset(
        "acme/queues",
        name="guard",
        conditions={"ref_name": {"include": ["refs/heads/**/*.seg.*"]}},
        rules=[{"type": "deletion"}, {"type": "creation"}, {"type": "non_fast_forward"}],
    )
    options: dict[str, object] = {"branches": ("orders", "team/jobs"), "deploy_keys": ()}
    where = f"ruleset {guard['id']} of repository acme/queues"

    assert run_check(fake_github, segmented=("orders", "team/jobs"), **options) == [
        f"segments of orders: {where} forbids the deletion of orders.seg.000001 (deletion), "
        "which stops retention from deleting old segments: exclude refs/heads/orders.seg.* "
        "from it",
        f"segments of orders: {where} forbids the creation of orders.seg.000001 (creation), "
        "which stops nodes from opening new segments: exclude refs/heads/orders.seg.* from it",
        f"segments of team/jobs: {where} forbids the deletion of team/jobs.seg.000001 "
        "(deletion), which stops retention from deleting old segments: exclude "
        "refs/heads/team/jobs.seg.* from it",
        f"segments of team/jobs: {where} forbids the creation of team/jobs.seg.000001 "
        "(creation), which stops nodes from opening new segments: exclude "
        "refs/heads/team/jobs.seg.* from it",
    ]
    assert run_check(fake_github, **options) == [], "no rotation: segments do not matter"


def test_setup_ruleset_blocks_force_pushes_on_queues_and_segments(
    fake_github: FakeGithub,
) -> None:
    options: dict[str, object] = {"branches": ("orders", "team/jobs"), "deploy_keys": ()}
    changes = run_setup(fake_github, ruleset=True, **options)

    assert changes[-1] == (
        "ruleset 'gitmq queues': created: force-pushes blocked on 2 queue branch(es) and all "
        "segments"
    )
    repo = fake_github.repos["acme/queues"]
    [ruleset] = repo.rulesets
    assert (ruleset["name"], ruleset["target"], ruleset["enforcement"]) == (
        "gitmq queues",
        "branch",
        "active",
    )
    assert ruleset["conditions"]["ref_name"]["include"] == [
        "refs/heads/orders",
        "refs/heads/team/jobs",
        "refs/heads/**/*.seg.*",
    ]
    assert ruleset["rules"] == [{"type": "non_fast_forward"}]
    before = len(fake_github.writes())
    assert run_setup(fake_github, ruleset=True, **options) == []
    assert len(fake_github.writes()) == before
    assert run_check(fake_github, segmented=("orders", "team/jobs"), **options) == []

    grown = {"branches": ("orders", "team/jobs", "audit"), "deploy_keys": ()}
    assert run_setup(fake_github, ruleset=True, **grown)[-1] == (
        "ruleset 'gitmq queues': updated: force-pushes blocked on 3 queue branch(es) and all "
        "segments"
    )
    assert len(repo.rulesets) == 1
    assert "refs/heads/audit" in repo.rulesets[0]["conditions"]["ref_name"]["include"]


@pytest.mark.parametrize(
    ("pattern", "ref", "matches"),
    [
        ("refs/heads/**/*.seg.*", "refs/heads/orders.seg.000001", True),
        ("refs/heads/**/*.seg.*", "refs/heads/team/jobs.seg.000001", True),
        ("refs/heads/**/*.seg.*", "refs/heads/orders", False),
        ("refs/heads/*", "refs/heads/team/jobs", False),
        ("refs/heads/**", "refs/heads/team/jobs", True),
        ("refs/heads/release-[0-9]", "refs/heads/release-7", True),
        ("~DEFAULT_BRANCH", "refs/heads/main", True),
        ("~DEFAULT_BRANCH", "refs/heads/orders", False),
        ("~ALL", "refs/heads/anything/at/all", True),
    ],
)
def test_fake_ref_patterns_match_like_github(
    fake_github: FakeGithub, pattern: str, ref: str, matches: bool
) -> None:
    fake_github.add_repo("acme/queues", branches=("main",))
    fake_github.add_ruleset(
        "acme/queues",
        name="p",
        conditions={"ref_name": {"include": [pattern]}},
        rules=[{"type": "deletion"}],
    )
    gh = Github(
        auth=Auth.Token("alice-token"),
        base_url=fake_github.base_url,
        retry=None,
        seconds_between_requests=0,
    )
    repo = gh.get_repo("acme/queues")
    branch = ref.removeprefix("refs/heads/")
    _, rules = repo._requester.requestJsonAndCheck("GET", f"{repo.url}/rules/branches/{branch}")
    assert bool(rules) is matches
    gh.close()


# --- rate limits and plans --------------------------------------------------------


@pytest.mark.parametrize("status", [403, 429])
def test_secondary_rate_limit_honours_retry_after(fake_github: FakeGithub, status: int) -> None:
    fake_github.secondary_rate_limit(retry_after=30, status=status)

    assert setup_error(fake_github) == (
        "GitHub API secondary rate limit exceeded while reading the token's user; GitHub asks "
        "to wait 30 seconds, then run again"
    )
    assert len(fake_github.requests) == 1, "no retry, no waiting"
    assert run_setup(fake_github) == CREATED, "only the next request was limited"


def test_private_repository_on_github_free(fake_github: FakeGithub) -> None:
    fake_github.free_plan("alice")
    fake_github.add_repo("alice/queues", branches=("orders", "orders.dlq"))
    key_setup(fake_github, "alice/queues")
    free = (
        "is private on GitHub Free, which offers no branch protection or rulesets for "
        "private repositories: upgrade its owner's plan to GitHub Pro, Team or Enterprise, "
        "or make it public (github.private: false)"
    )

    assert setup_error(fake_github, repository="alice/queues") == (
        "branch protection unavailable while protecting branch orders: GitHub answered 403 "
        "(Upgrade to GitHub Pro or make this repository public to enable this feature.); "
        f"the repository {free}"
    )
    assert run_check(fake_github, repository="alice/queues") == [f"repository alice/queues: {free}"]


# --- deploy keys and the budget ---------------------------------------------------


def test_deploy_keys_disabled_by_organisation_policy(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues", branches=("orders", "orders.dlq"))
    fake_github.add_key("acme/queues", "node-a", KEY_A, read_only=False)
    fake_github.orgs["acme"].deploy_keys_allowed = False

    assert setup_error(fake_github) == (
        "deploy key node-b: GitHub refuses it (Deploy keys are disabled for this repository): "
        "the deploy key policy of acme (or of its enterprise) forbids deploy keys; ask an owner "
        "to allow them, or let the nodes push over https as a GitHub App (github.app)"
    )
    assert run_check(fake_github)[-2:] == [
        "deploy key node-a: disabled by the deploy key policy of acme (or of its enterprise): "
        "ask an owner to allow deploy keys, or let the nodes push over https as a GitHub App "
        "(github.app)",
        "deploy key node-b: missing",
    ]


def test_check_notes_keys_that_a_user_added(fake_github: FakeGithub) -> None:
    fake_github.add_repo("acme/queues", branches=("orders", "orders.dlq"))
    for name in ("orders", "orders.dlq"):
        fake_github.protect("acme/queues", name, enforce_admins=True)
    fake_github.add_key("acme/queues", "node-a", KEY_A, read_only=False, added_by="bob")
    fake_github.add_key("acme/queues", "node-b", KEY_B, read_only=False, added_by="app[bot]")

    assert run_check(fake_github, notes=True) == [added_by_note("node-a", "bob")]


@pytest.mark.parametrize(
    ("budget", "poll", "line"),
    [
        (
            Budget(600, 120, default=True),
            None,
            "note: budget: 3 node(s) at 12 reads a minute each (sync.interval 5s, sync.poll "
            "off) = 36 reads a minute, within remote origin's budget of 600 (the default for "
            "github.com)",
        ),
        (
            Budget(120, 60),
            1.0,
            "budget: 3 node(s) at 72 reads a minute each (sync.interval 5s, sync.poll 1s) = "
            "216 reads a minute, over remote origin's budget of 120: the nodes will sync less "
            "often than configured; raise remotes.origin.budget.reads_per_minute, or lengthen "
            "sync.interval or sync.poll",
        ),
        (
            Budget(),
            None,
            "note: budget: 3 node(s) at 12 reads a minute each (sync.interval 5s, sync.poll "
            "off) = 36 reads a minute; remote origin has no read budget",
        ),
    ],
)
def test_check_sets_the_cluster_reads_against_the_budget(
    fake_github: FakeGithub, budget: Budget, poll: float | None, line: str
) -> None:
    load = ReadLoad("origin", budget, nodes=3, interval=5.0, poll=poll)
    fake_github.add_repo("acme/queues", branches=("orders", "orders.dlq"))
    for name in ("orders", "orders.dlq"):
        fake_github.protect("acme/queues", name, enforce_admins=True)
    key_setup(fake_github)

    assert run_check(fake_github, notes=True, load=load) == [line]


# --- GitHub App authentication ----------------------------------------------------


@pytest.fixture(scope="module")
def app_key() -> tuple[str, str, str]:
    """The app's private and public PEM, and another private key, made once (2048 bits)."""
    private, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab")
    private_pem, other_pem = (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        for key in (private, other)
    )
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem, other_pem


def app_auth(
    tmp_path: Path, private_pem: str, app_id: int = 1, installation_id: int = 99
) -> Auth.AppInstallationAuth:
    key_file = tmp_path / "app.pem"
    key_file.write_text(private_pem)
    return installation_auth(GithubAppConfig(app_id, key_file, installation_id))


def test_setup_and_check_as_a_github_app(
    fake_github: FakeGithub, tmp_path: Path, app_key: tuple[str, str, str]
) -> None:
    app = fake_github.add_app(1, app_key[1], 99, "acme")
    auth = app_auth(tmp_path, app_key[0])

    assert run_setup(fake_github, auth) == CREATED
    assert run_check(fake_github, auth, notes=True) == []
    assert ("GET", "/user") not in fake_github.requests
    assert len(app.issued) == 1 and app.issued[0].startswith("ghs_")
    assert [k.added_by for k in fake_github.repos["acme/queues"].keys] == ["app-1[bot]"] * 2


def test_github_app_errors(
    fake_github: FakeGithub, tmp_path: Path, app_key: tuple[str, str, str]
) -> None:
    wrong_pem = app_key[2]
    app = fake_github.add_app(1, app_key[1], 99, "acme")

    assert setup_error(fake_github, app_auth(tmp_path, wrong_pem)) == (
        "GitHub App 1: GitHub refused its signed request for a token (401: A JSON web token "
        "could not be decoded): check github.app.app_id and github.app.private_key_file "
        "against the app's settings page"
    )
    assert setup_error(fake_github, app_auth(tmp_path, app_key[0], installation_id=98)) == (
        "GitHub App 1 has no installation 98: check github.app.installation_id (the number at "
        "the end of the URL of the installation's settings page), and that the app is installed"
    )
    assert setup_error(fake_github, app_auth(tmp_path, app_key[0]), repository="alice/q") == (
        "cannot create repository alice/q: alice is a user account and GitHub App 1 "
        "(installation 99) can create repositories only in an organisation: create it by hand "
        "and add it to the installation, or run setup with a token of alice"
    )
    app.expires_in = 0  # every token it mints is expired when used
    assert setup_error(fake_github, app_auth(tmp_path, app_key[0])) == (
        "bad token: GitHub answered 401 (Bad credentials) while reading repository "
        "acme/queues; check that the token is current and complete"
    )


# --- reading the node config ---------------------------------------------------


NODE_CONFIG = """\
node: {{name: node-a, identity: {{name: "Node A", email: "node-a@example.com"}}}}
storage: {{path: /var/lib/gitmq/node-a.git}}
remotes:
  origin: {{url: "git@github.com:Acme/Queues.git", ssh_key: /etc/gitmq/id_ed25519}}
  mirror: {{url: "https://git.example.com/acme/mirror.git"}}
queues:
  orders: {{remote: origin}}
  audit: {{remote: mirror}}
  local-only: {{}}
consumers:
  billing: {{queue: orders, handler: {{command: [/bin/true]}}}}
  auditor: {{queue: audit, handler: {{python: "x:y"}}, dead_letter: audit.failed}}
github:
  repository: acme/queues
  base_url: {base_url}
  deploy_keys:
    - {{title: node-a, key: "{key_a}"}}
    - {{title: node-b, key_file: keys/node-b.pub}}
"""


def write_config(tmp_path: Path, base_url: str = "https://api.github.com") -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "node-b.pub").write_text(KEY_B + "\n")
    config = tmp_path / "node.yml"
    config.write_text(NODE_CONFIG.format(base_url=base_url, key_a=KEY_A))
    return config


def test_target_from_node_config(tmp_path: Path) -> None:
    assert github_target_from_config(write_config(tmp_path)) == GithubTarget(
        repository="acme/queues",
        branches=("orders", "orders.dlq"),
        deploy_keys=(DeployKey("node-a", KEY_A), DeployKey("node-b", KEY_B)),
        private=True,
        base_url="https://api.github.com",
        load=ReadLoad("origin", Budget(600, 120, default=True), nodes=2, interval=5.0),
    )


def test_target_from_node_config_with_rotation_schedule_and_budget(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text()
    text = text.replace(
        "orders: {remote: origin}", "orders: {remote: origin, rotate: {max_messages: 9}}"
    )
    text = text.replace(
        "ssh_key: /etc/gitmq/id_ed25519}",
        "ssh_key: /etc/gitmq/id_ed25519, budget: {reads_per_minute: 50}}",
    )
    config.write_text(text + "sync: {interval: 10s, poll: 2s}\n")

    found = github_target_from_config(config)
    assert found.segmented == ("orders",)
    assert found.load == ReadLoad("origin", Budget(50, 120), nodes=2, interval=10.0, poll=2.0)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("queues: {}\n", "node.yml: github: is required for 'gitmq github'"),
        (
            "github: {repository: queues}\n",
            "node.yml: github.repository: expected 'owner/name', found 'queues'",
        ),
        (
            "github: {repository: a/b, deploy_keys: [{title: k, key: nope}]}\n",
            "node.yml: github.deploy_keys[0]: expected 'key: \"ssh-ed25519 AAAA... comment\"' "
            "or 'key_file: FILE.pub', found 'nope'",
        ),
        (
            "github: {repository: a/b}\nqueues: {orders: {remote: origin}}\n"
            "remotes: {origin: {url: 'git@github.com:a/c.git'}}\n",
            "node.yml: no queue has a remote whose url names a/b: nothing to set up on GitHub",
        ),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "node.yml").write_text("node: {name: n}\nstorage: {path: s}\n" + text)
    with pytest.raises(ConfigError) as info:
        github_target_from_config(tmp_path / "node.yml")
    assert info.value.message == f"{tmp_path}/{error}"


# --- the command line ----------------------------------------------------------


def gitmq_github(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitmq.cli.github_cmd", "github", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def unthrottled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI paces its requests for real GitHub (a second per write): not here."""
    monkeypatch.setattr(gitmq.github, "setup", functools.partial(setup, throttle=False))
    monkeypatch.setattr(gitmq.github, "check", functools.partial(check, throttle=False))


def test_cli_check_setup_check(
    fake_github: FakeGithub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unthrottled: None,
) -> None:
    config = str(write_config(tmp_path, fake_github.base_url))
    monkeypatch.setenv("GITHUB_TOKEN", "alice-token")

    def gitmq(*args: str) -> tuple[int, list[str], str]:
        status = main(["github", *args, "--config", config])
        out, err = capsys.readouterr()
        return status, out.splitlines(), err

    assert gitmq("check") == (
        1,
        ["repository acme/queues: does not exist (or the token cannot see it)"],
        "",
    )
    assert gitmq("setup") == (0, CREATED, "")
    assert gitmq("setup") == (0, ["setup: nothing to change"], "")
    assert gitmq("check") == (
        0,
        [
            added_by_note("node-a"),
            added_by_note("node-b"),
            "note: budget: 2 node(s) at 12 reads a minute each (sync.interval 5s, sync.poll "
            "off) = 24 reads a minute, within remote origin's budget of 600 (the default for "
            "github.com)",
            "check: ok",
        ],
        "",
    )


def test_cli_reads_the_token_from_the_named_variable(
    fake_github: FakeGithub, tmp_path: Path
) -> None:
    config = str(write_config(tmp_path, fake_github.base_url))
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_TOKEN"}

    unset = gitmq_github("check", "--config", config, env=env)
    assert (unset.returncode, unset.stdout, unset.stderr) == (
        2,
        "",
        "error: environment variable GITHUB_TOKEN is not set: put a GitHub token with admin "
        "rights on the repository in it, or name another variable with --token-env\n",
    )
    secret = "ghp_not-a-valid-token-1234"
    bad = gitmq_github("check", "--config", config, "--token-env", "GH", env=env | {"GH": secret})
    assert (bad.returncode, bad.stdout) == (6, "")
    assert bad.stderr == (
        "error: bad token: GitHub answered 401 (Bad credentials) while reading the token's "
        "user; check that the token is current and complete\n"
    )
    assert secret not in bad.stderr


def test_cli_check_reports_an_old_git_client(fake_github: FakeGithub, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, fake_github.base_url))
    shim = tmp_path / "bin" / "git"
    shim.parent.mkdir()
    real = shutil.which("git")
    shim.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        '  [ "$arg" = --version ] && { echo "git version 2.20.1"; exit 0; }\n'
        "done\n"
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    env = os.environ | {
        "PATH": f"{shim.parent}:{os.environ['PATH']}",
        "GITHUB_TOKEN": "alice-token",
    }

    old = gitmq_github("check", "--config", config, env=env)
    assert (old.returncode, old.stderr) == (1, "")
    assert old.stdout.splitlines() == [
        "git: version 2.20.1 on this machine is older than 2.23, which atomic pushes over "
        "https need: upgrade git",
        "repository acme/queues: does not exist (or the token cannot see it)",
    ]
    current = gitmq_github("check", "--config", config, env=env | {"PATH": os.environ["PATH"]})
    assert "git:" not in current.stdout


def test_cli_secondary_rate_limit(fake_github: FakeGithub, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, fake_github.base_url))
    fake_github.secondary_rate_limit(retry_after=90)

    limited = gitmq_github("setup", "--config", config, env=os.environ | {"GITHUB_TOKEN": "t"})
    assert (limited.returncode, limited.stdout) == (6, "")
    assert limited.stderr == (
        "error: GitHub API secondary rate limit exceeded while reading the token's user; "
        "GitHub asks to wait 90 seconds, then run again\n"
    )


def test_cli_acts_as_the_github_app_of_the_config(
    fake_github: FakeGithub, tmp_path: Path, app_key: tuple[str, str, str]
) -> None:
    (tmp_path / "app.pem").write_text(app_key[0])
    config = write_config(tmp_path, fake_github.base_url)
    with config.open("a") as out:
        out.write("  app: {app_id: 7, private_key_file: app.pem, installation_id: 70}\n")
    app = fake_github.add_app(7, app_key[1], 70, "acme")
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_TOKEN"}

    missing = gitmq_github("check", "--config", str(config), env=env)
    assert (missing.returncode, missing.stdout, missing.stderr) == (
        1,
        "repository acme/queues: does not exist (or GitHub App 7 (installation 70) cannot "
        "see it)\n",
        "",
    )
    assert len(app.issued) == 1
    assert ("GET", "/user") not in fake_github.requests


def test_cli_setup_ruleset(
    fake_github: FakeGithub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unthrottled: None,
) -> None:
    config = str(write_config(tmp_path, fake_github.base_url))
    monkeypatch.setenv("GITHUB_TOKEN", "alice-token")

    assert main(["github", "setup", "--ruleset", "--config", config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3] == (
        "ruleset 'gitmq queues': created: force-pushes blocked on 2 queue branch(es) and all "
        "segments"
    )
    assert main(["github", "setup", "--ruleset", "--config", config]) == 0
    assert capsys.readouterr().out == "setup: nothing to change\n"
