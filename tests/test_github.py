"""GitHub bootstrap: PyGithub, unpatched, against a stateful fake of GitHub's REST API."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_github import EMPTY_TREE, FakeGithub

import gitmq.github
from gitmq.cli.github_cmd import github_target_from_config, main
from gitmq.errors import ConfigError, GitMQError
from gitmq.github import DeployKey, GithubError, GithubTarget, check, setup

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


def run_setup(fake: FakeGithub, token: str = "alice-token", **options: object) -> list[str]:
    return lines(setup(target(fake, **options), token, throttle=False))  # type: ignore[arg-type]


def run_check(fake: FakeGithub, token: str = "alice-token", **options: object) -> list[str]:
    return lines(check(target(fake, **options), token, throttle=False))  # type: ignore[arg-type]


def setup_error(fake: FakeGithub, token: str = "alice-token", **options: object) -> str:
    with pytest.raises(GithubError) as info:
        run_setup(fake, token, **options)
    assert isinstance(info.value, GitMQError)
    return info.value.message


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

    assert run_check(fake_github) == []
    assert fake_github.writes() == writes


def test_check_reports_a_missing_repository(fake_github: FakeGithub) -> None:
    assert run_check(fake_github) == [
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
    with pytest.raises(GithubError, match=r"^permission denied while reading the deploy keys"):
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
    )


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
    assert gitmq("check") == (0, ["check: ok"], "")


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
