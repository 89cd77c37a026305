"""One ``gitmq node`` process against a real remote: --once, the daemon, signals, logs.

Each node is a real OS process with a YAML config (tests/nodes.py); its consumers
are shell commands that log what they receive.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_github import FakeGithub
from nodes import Cluster, TestNode, assert_landed_once, landed_ids, remote_messages
from servers import GitDaemon, SmartHttp, SshServer, make_bare
from util import fails, git, ok, rev_parse, wait_for

from gitmq import Identity, Producer, Storage
from gitmq.storage.remote import Credentials


def local_count(node: TestNode, queue: str = "orders") -> int:
    return len(git(node.storage, "rev-list", f"refs/heads/{queue}").split())


def wait_for_syncs(node: TestNode, count: int) -> list[dict[str, object]]:
    assert node.proc is not None
    return wait_for(
        lambda: (r := node.sync_records()) and len(r) >= count and r,
        what=f"{count} sync cycles of {node.name}",
        procs=[node.proc],
    )


# ------------------------------------------------------------------ --once


def test_once_syncs_delivers_pushes_the_tags_and_exits_0(cluster: Cluster, central: Path) -> None:
    node = cluster.node("a", ["billing", "audit"])
    node.publish("orders", "o1", "o2", "o3")
    result = ok(node.once())
    landed = assert_landed_once(central, "orders", ["o1", "o2", "o3"])
    assert [m.payload for m in landed] == ["o1", "o2", "o3"]
    for name in ("billing", "audit"):
        assert node.payloads(name) == ["o1", "o2", "o3"]
        assert node.received(name) == [m.id for m in landed]
        assert rev_parse(central, f"refs/tags/{name}") == landed[-1].sha
    lines = result.err.splitlines()
    assert any(
        "sync central: ok; fetched 0, pushed 3 messages and 0 tags in 1 push(es)" in ln
        for ln in lines
    ), result.err
    assert any(
        "sync central: ok; fetched 0, pushed 0 messages and 2 tags in 1 push(es)" in ln
        for ln in lines
    ), result.err


def test_once_against_an_empty_remote_creates_the_storage(cluster: Cluster, central: Path) -> None:
    node = cluster.node("a", ["billing"])
    assert not node.storage.exists()
    ok(node.once())
    assert (node.storage / "HEAD").is_file()
    assert git(central, "for-each-ref") == b""


def test_once_with_the_remote_down_exits_6_and_keeps_the_messages(
    cluster: Cluster, central: Path, git_daemon: GitDaemon
) -> None:
    node = cluster.node("a", ["billing"])
    node.publish("orders", "p:0", "p:1")
    git_daemon.stop()
    result = node.once()
    assert result.status == 6, str(result)
    url = git_daemon.url("central.git")
    last = result.err.splitlines()[-1]
    assert last.startswith(f"error: remote {url}: listing refs failed: fatal: unable to connect")
    assert local_count(node) == 2 and node.received("billing") == []

    git_daemon.start()
    ok(node.once())
    assert [m.payload for m in assert_landed_once(central, "orders", ["p:0", "p:1"])] == [
        "p:0",
        "p:1",
    ]
    assert node.payloads("billing") == ["p:0", "p:1"]


def test_log_format_json_gives_one_object_per_line_with_a_sync_line(cluster: Cluster) -> None:
    node = cluster.node("a", ["billing"])
    node.publish("orders", "hello")
    result = ok(node.once("--log-format", "json"))
    records = [json.loads(line) for line in result.err.splitlines()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    syncs = [r for r in records if "sync" in r]
    assert len(syncs) == 2
    first = syncs[0]
    assert first["logger"] == "gitmq.node" and first["level"] == "info"
    assert first["message"].startswith("sync central: ok; fetched 0, pushed 1 messages")
    assert first["sync"]["remote"] == "central"
    assert (first["sync"]["pushes"], first["sync"]["pushed_messages"]) == (1, 1)
    assert first["sync"]["error"] is None and first["sync"]["conflicts"] == []
    assert syncs[1]["sync"]["pushed_tags"] == 1


def test_a_failing_handler_dead_letters_and_the_dead_letter_queue_is_synced(
    cluster: Cluster, central: Path
) -> None:
    node = cluster.node(
        "a",
        extra={
            "consumers": {
                "billing": {
                    "queue": "orders",
                    "handler": {"command": ["/bin/sh", "-c", "echo no stock >&2; exit 3"]},
                    "retry": {"max_attempts": 2, "initial_delay": "10ms", "max_delay": "10ms"},
                }
            }
        },
    )
    node.publish("orders", "broken")
    ok(node.once())
    [original] = remote_messages(central, "orders")
    [dead] = remote_messages(central, "orders.dlq")
    assert dead.payload == "broken"
    body = git(central, "cat-file", "commit", dead.sha).decode()
    assert f"gitmq-header dead-letter-original-id {original.id}\n" in body
    assert (
        "gitmq-header dead-letter-error HandlerFailed: handler command exited 3: no stock\n" in body
    )
    assert rev_parse(central, "refs/tags/billing") == original.sha


# ------------------------------------------------------------------ tokens


def test_a_token_comes_from_the_environment_and_a_wrong_one_loses_nothing(
    tmp_path: Path, smart_http: SmartHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    central = make_bare(smart_http.root, "central.git")
    url = smart_http.url("central.git")
    with Cluster(tmp_path / "nodes", url) as cluster:
        node = cluster.node("a", ["billing"], remote={"token_env": "GITMQ_TEST_TOKEN"})
        node.publish("orders", "secret order")

        fails(
            node.once(),
            5,
            "remote 'central' needs a token in the environment variable GITMQ_TEST_TOKEN, "
            "which is not set",
        )

        monkeypatch.setenv("GITMQ_TEST_TOKEN", "gmq_not_the_token")
        result = node.once()
        assert result.status == 6, str(result)
        assert result.err.splitlines()[-1] == (
            f"error: remote {url}: listing refs was refused: authentication failed (fatal: could "
            f"not read Username for 'http://127.0.0.1:{smart_http.port}': terminal prompts "
            f"disabled); check the token variable or the ssh key and known_hosts of this remote"
        )
        assert "gmq_not_the_token" not in result.err
        assert local_count(node) == 1 and git(central, "for-each-ref") == b""

        monkeypatch.setenv("GITMQ_TEST_TOKEN", smart_http.token)
        ok(node.once())
        assert_landed_once(central, "orders", ["secret order"])
        assert node.payloads("billing") == ["secret order"]
        assert smart_http.token not in (node.storage / "config").read_text()


def test_a_token_file_rotated_mid_run_fails_no_cycle_after_the_change(
    tmp_path: Path, smart_http: SmartHttp
) -> None:
    make_bare(smart_http.root, "central.git")
    token_file = tmp_path / "token"
    token_file.write_text(smart_http.token + "\n")
    with Cluster(tmp_path / "nodes", smart_http.url("central.git")) as cluster:
        node = cluster.node("a", ["billing"], remote={"token_file": str(token_file)})
        node.start("--log-format", "json")
        node.publish("orders", "before")
        wait_for(lambda: node.payloads("billing") == ["before"], timeout=30)

        new = "gmq_" + secrets.token_hex(16)
        (tmp_path / "token.new").write_text(new + "\n")
        os.replace(tmp_path / "token.new", token_file)  # the sidecar's step
        smart_http.rotate(new)  # the old token is refused from now on
        changed = datetime.now(UTC) + timedelta(seconds=1)  # a cycle already under way may fail
        node.publish("orders", "after")
        wait_for(lambda: node.payloads("billing") == ["before", "after"], timeout=30)
        wait_for(lambda: len(cycles_since(node, changed)) >= 5, timeout=30)
        assert [r["error"] for r in cycles_since(node, changed)] == [None] * len(
            cycles_since(node, changed)
        )
        assert node.stop() == 0
    assert new not in node.log_text() and new not in (node.storage / "config").read_text()


def test_a_github_app_remote_pushes_with_installation_tokens_renewed_before_expiry(
    tmp_path: Path, smart_http: SmartHttp
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "app.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fake = FakeGithub()
    app = fake.add_app(4242, public, 77, "acme")
    app.expires_in = 25  # PyGithub renews 20 s before expiry: a new token every ~5 s
    app.on_issue = smart_http.rotate  # the git server accepts only the newest token
    fake.start()
    make_bare(smart_http.root, "central.git")
    github = {
        "repository": "acme/central",
        "base_url": fake.base_url,
        "app": {"app_id": 4242, "installation_id": 77, "private_key_file": str(key_file)},
    }
    try:
        with Cluster(tmp_path / "nodes", smart_http.url("central.git")) as cluster:
            node = cluster.node(
                "a", ["billing"], remote={"github_app": True}, extra={"github": github}
            )
            node.start("--log-format", "json")
            node.publish("orders", "one")
            wait_for(lambda: node.payloads("billing") == ["one"], timeout=30)
            wait_for(lambda: len(app.issued) >= 3, timeout=40)  # renewed, twice
            node.publish("orders", "two")
            wait_for(lambda: node.payloads("billing") == ["one", "two"], timeout=30)
            assert node.stop() == 0
    finally:
        fake.stop()
    errors = [r["error"] for r in node.sync_records() if r["error"]]
    assert errors == [], errors
    assert not any(token in node.log_text() for token in app.issued)


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://git.example.com/acme/other.git", True),
        ("https://git.example.com:8443/acme/queues.git", False),
        ("https://evil.example.org/acme/queues.git", False),
        ("http://git.example.com/acme/queues.git", False),
    ],
)
def test_the_token_header_goes_to_the_remotes_own_host_only(url: str, sent: bool) -> None:
    """git itself decides which requests get the header (``http.<url>.extraHeader``)."""
    env = {**os.environ, **Credentials(token="s3cret").env("https://git.example.com/acme/q.git")}
    found = subprocess.run(
        ["git", "config", "--get-urlmatch", "http.extraHeader", url],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (found.returncode == 0 and "Authorization: Basic " in found.stdout) is sent


def cycles_since(node: TestNode, when: datetime) -> list[dict[str, object]]:
    """The sync records ``node`` logged after ``when``."""
    return [
        r["sync"]
        for r in node.json_log()
        if "sync" in r and datetime.fromisoformat(r["time"]) > when
    ]


@pytest.mark.parametrize("form", ["ssh-url-key", "scp-alias-config"])
def test_a_node_syncs_over_ssh_with_the_keys_its_config_names(
    tmp_path: Path, ssh_server: SshServer, form: str
) -> None:
    central = make_bare(ssh_server.root, "central.git")
    if form == "ssh-url-key":
        url = ssh_server.url("central.git")
        remote = {"ssh_key": str(ssh_server.client_key), "known_hosts": str(ssh_server.known_hosts)}
    else:
        url = ssh_server.scp_url("central.git")
        remote = {"ssh_config": str(ssh_server.ssh_config)}
    with Cluster(tmp_path / "nodes", url) as cluster:
        node = cluster.node("a", ["billing"], remote=remote)
        node.publish("orders", "over ssh")
        ok(node.once())
        assert_landed_once(central, "orders", ["over ssh"])
        assert node.payloads("billing") == ["over ssh"]
        assert rev_parse(central, "refs/tags/billing") == rev_parse(central, "refs/heads/orders")


@pytest.mark.parametrize("reuse", [True, False])
def test_ssh_connections_are_shared_between_git_calls(
    tmp_path: Path, ssh_server: SshServer, reuse: bool
) -> None:
    """Three runs of a node, each a listing, a fetch and a push or two: one ssh
    handshake in all when connections are shared (the master outlives each run for
    60 s), one per git call when not."""
    make_bare(ssh_server.root, "central.git")
    remote = {
        "ssh_key": str(ssh_server.client_key),
        "known_hosts": str(ssh_server.known_hosts),
        "ssh_reuse": reuse,
    }
    with Cluster(tmp_path / "nodes", ssh_server.url("central.git")) as cluster:
        node = cluster.node("a", ["billing"], remote=remote)
        for n in range(3):
            node.publish("orders", f"m{n}")
            ok(node.once())
        assert node.payloads("billing") == ["m0", "m1", "m2"]
    handshakes = ssh_server.log_text().count("Accepted publickey for ")
    if reuse:
        assert handshakes == 1, ssh_server.log_text()[-2000:]
    else:
        assert handshakes >= 3 * 3, handshakes  # at least a list, a fetch, a push per run


def test_each_queue_syncs_with_its_own_remote(
    cluster: Cluster, central: Path, git_daemon: GitDaemon
) -> None:
    mirror = make_bare(git_daemon.root, "mirror.git")
    node = cluster.node(
        "a",
        {"billing": "orders", "auditor": "audit"},
        queues=["orders", "audit"],
        extra={
            "remotes": {
                "central": {"url": git_daemon.url("central.git")},
                "mirror": {"url": git_daemon.url("mirror.git")},
            },
            "queues": {"orders": {"remote": "central"}, "audit": {"remote": "mirror"}},
        },
    )
    node.publish("orders", "order")
    node.publish("audit", "entry")
    ok(node.once())
    assert_landed_once(central, "orders", ["order"])
    assert_landed_once(mirror, "audit", ["entry"])
    assert git(central, "for-each-ref", "--format=%(refname)").split() == [
        b"refs/heads/orders",
        b"refs/tags/billing",
    ]
    assert git(mirror, "for-each-ref", "--format=%(refname)").split() == [
        b"refs/heads/audit",
        b"refs/tags/auditor",
    ]
    assert node.payloads("billing") == ["order"] and node.payloads("auditor") == ["entry"]


# ------------------------------------------------------------------ the daemon


def test_local_producers_publish_while_the_node_runs(cluster: Cluster, central: Path) -> None:
    node = cluster.node("a", ["billing"])
    node.start("--log-format", "json")
    wait_for_syncs(node, 1)
    node.publish("orders", "cli:0", "cli:1")
    with Storage(node.storage) as storage:
        api = Producer(storage, "orders", author=Identity("API", "api@test"))
        for i in range(3):
            api.publish(f"api:{i}")
    node.publish("orders", "cli:2")
    expected = ["cli:0", "cli:1", "api:0", "api:1", "api:2", "cli:2"]
    wait_for(
        lambda: len(node.received("billing")) == len(expected),
        what="all messages delivered",
        procs=[node.proc] if node.proc else [],
    )
    assert node.stop() == 0
    landed = assert_landed_once(central, "orders", expected)
    assert [m.payload for m in landed] == expected
    assert node.received("billing") == [m.id for m in landed]
    assert rev_parse(central, "refs/tags/billing") == landed[-1].sha


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_pushes_what_is_pending_and_exits_0(
    cluster: Cluster, central: Path, sig: signal.Signals
) -> None:
    node = cluster.node("a", ["billing"], interval="1h")  # only the start and the stop sync
    node.start("--log-format", "json")
    wait_for_syncs(node, 1)
    node.publish("orders", "late:0", "late:1")
    assert node.stop(sig) == 0
    assert [m.payload for m in assert_landed_once(central, "orders", ["late:0", "late:1"])] == [
        "late:0",
        "late:1",
    ]
    messages = [r["message"] for r in node.json_log()]
    assert messages[-1] == "node a stopped"
    assert "node a stopping: finishing handlers, pushing the rest" in messages


def test_an_idle_node_neither_pushes_nor_fetches(cluster: Cluster, central: Path) -> None:
    node = cluster.node("a", ["billing"], interval="50ms", jitter="0s")
    node.publish("orders", "one", "two")
    node.start("--log-format", "json")
    tip = wait_for(lambda: (ids := landed_ids(central)) and len(ids) == 2, what="messages pushed")
    assert tip
    wait_for(
        lambda: rev_parse(central, "refs/tags/billing") == rev_parse(central, "refs/heads/orders"),
        what="the consumer tag pushed",
    )
    settled = len(node.sync_records()) + 1  # the cycle that pushed the tag may log late
    records = wait_for_syncs(node, settled + 10)[settled:]
    busy = [r for r in records if r["pushes"] or r["fetched"] or r["error"]]
    assert busy == []
    assert node.stop() == 0


# ------------------------------------------------------------------ redeploy, conflicts


def test_a_node_redeployed_on_an_empty_disk_resumes_its_consumers(
    cluster: Cluster, central: Path
) -> None:
    a, b = cluster.node("a", ["billing"]), cluster.node("b")
    a.publish("orders", "m0", "m1", "m2")
    ok(a.once())
    shutil.rmtree(a.storage)
    b.publish("orders", "m3", "m4")
    ok(b.once())

    ok(a.once())
    landed = assert_landed_once(central, "orders", ["m0", "m1", "m2", "m3", "m4"])
    assert a.received("billing") == [m.id for m in landed]
    assert rev_parse(a.storage, "refs/heads/orders") == landed[-1].sha
    assert rev_parse(central, "refs/tags/billing") == landed[-1].sha


def test_diverged_consumer_tags_are_reported_in_the_node_log(
    cluster: Cluster, central: Path, git_daemon: GitDaemon
) -> None:
    """A partition: two nodes each ran a consumer named 'shared' (on different queues)."""
    both = ["orders", "invoices"]
    cluster.node("a", queues=both)
    cluster.node("b", queues=both)
    a_plain, b_plain = cluster.nodes
    a_plain.publish("orders", "order")
    b_plain.publish("invoices", "invoice")
    ok(a_plain.once())
    ok(b_plain.once())

    a = cluster.node("a", {"shared": "orders"}, queues=both)
    b = cluster.node("b", {"shared": "invoices"}, queues=both)
    git_daemon.stop()
    assert a.once().status == 6 and b.once().status == 6  # delivered, could not push the tag
    tag_a, tag_b = (
        rev_parse(a.storage, "refs/tags/shared"),
        rev_parse(b.storage, "refs/tags/shared"),
    )
    assert tag_a and tag_b and tag_a != tag_b
    git_daemon.start()
    ok(a.once())
    assert rev_parse(central, "refs/tags/shared") == tag_a

    result = ok(b.once("--log-format", "json"))
    text = (
        f"consumer 'shared': local tag {tag_b[:12]} and the tag on central {tag_a[:12]} "
        f"have diverged (two nodes run a consumer of that name?); neither was moved"
    )
    records = [json.loads(line) for line in result.err.splitlines()]
    errors = [r["message"] for r in records if r["level"] == "error"]
    assert errors == [text, text]  # both syncs of --once
    assert [r["sync"]["conflicts"] for r in records if "sync" in r] == [[text], [text]]
    assert rev_parse(b.storage, "refs/tags/shared") == tag_b
    assert rev_parse(a.storage, "refs/tags/shared") == tag_a
    assert rev_parse(central, "refs/tags/shared") == tag_a


@pytest.mark.slow
def test_sigterm_always_stops_a_busy_node(cluster: Cluster) -> None:
    """A signal may land on any thread of the node (the sync thread starts git all the
    time); the main thread must still notice it, every time."""
    node = cluster.node("a", ["billing"], interval="20ms", jitter="0s")
    for _ in range(20):
        node.start("--log-format", "json")
        before = len(node.sync_records())
        wait_for_syncs(node, before + 3)
        assert node.stop(timeout=15) == 0
