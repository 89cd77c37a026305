"""``gitmq doctor``: each check against real servers, real storages, real processes."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from nodes import write_config
from servers import GitDaemon, SmartHttp, make_bare
from util import EMPTY_TREE, Result, git, gitmq, ok

from gitmq import Consumer, Storage

HEALTHY = "reachable, authenticated, protocol v2, atomic push, scratch push and delete"


def node_config(tmp_path: Path, url: str | None = None, **extra: Any) -> Path:
    remote: dict[str, Any] = {"url": url, "timeout": "10s", **extra.pop("remote", {})}
    data: dict[str, Any] = {
        "node": {"name": "n1"},
        "storage": {"path": "storage.git"},
        "queues": {"orders": {"remote": "central"} if url else {}},
        "consumers": {"c": {"queue": "orders", "handler": {"command": ["/bin/true"]}}},
        **extra,
    }
    if url:
        data["remotes"] = {"central": remote}
    return write_config(tmp_path / "node.yml", data)


def doctor(config: Path, env: dict[str, str] | None = None) -> tuple[Result, list[str]]:
    result = gitmq("doctor", "--config", config, env=env)
    assert result.err == "", str(result)
    return result, result.out.splitlines()


def with_level(lines: list[str], level: str) -> list[str]:
    return [line for line in lines if line.startswith(f"{level:<4} ")]


def scratch_refs(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)", "refs/gitmq/doctor/").decode().split()


def test_a_healthy_git_daemon_remote_is_all_ok(
    tmp_path: Path, git_daemon: GitDaemon, central: Path
) -> None:
    config = node_config(tmp_path, git_daemon.url("central.git"))
    ok(gitmq("publish", tmp_path / "storage.git", "orders", "first"))
    ok(gitmq("sync", "--config", config))
    result, lines = doctor(config)
    assert result.status == 0, str(result)
    assert with_level(lines, "ok") == lines, lines  # nothing but ok
    assert f"ok   remote central: {HEALTHY}" in lines
    assert "ok   handlers: every handler can run (1)" in lines
    assert "ok   consumers: none in conflict (1)" in lines
    assert "ok   locks: no stale lock files" in lines
    assert "ok   budget central: no budget" in lines
    [clock] = [line for line in lines if line.startswith("ok   clock: ")]
    assert re.fullmatch(r"ok   clock: the newest commit on remote central is \d+s old; .*", clock)
    assert scratch_refs(central) == []  # pushed and deleted again

    findings = json.loads(ok(gitmq("doctor", "--json", "--config", config)).out)["findings"]
    assert {f["level"] for f in findings} == {"ok"}
    assert len(findings) == len(lines)  # one line each
    assert {"subject": "remote central", "level": "ok", "text": HEALTHY} in [
        {k: f[k] for k in ("subject", "level", "text")} for f in findings
    ]


def test_a_stopped_remote_fails_as_unreachable(
    tmp_path: Path, git_daemon: GitDaemon, central: Path
) -> None:
    url = git_daemon.url("central.git")
    config = node_config(tmp_path, url)
    git_daemon.stop()
    result, lines = doctor(config)
    assert result.status == 1, str(result)
    [failed] = with_level(lines, "FAIL")
    assert failed.startswith(f"FAIL remote central: unreachable: remote {url}: listing refs ")
    assert "unable to connect" in failed
    assert failed.endswith("; check the url, the network and that the server runs")


class ReadOnlyDaemon(GitDaemon):
    """git daemon without ``--enable=receive-pack``: fetches work, pushes are refused."""

    def command(self, port: int) -> list[str]:
        return [a for a in super().command(port) if a != "--enable=receive-pack"]


def test_a_read_only_remote_fails_the_scratch_push(tmp_path: Path) -> None:
    root = tmp_path / "ro" / "repos"
    root.mkdir(parents=True)
    central = make_bare(root, "central.git")
    with ReadOnlyDaemon(root, tmp_path / "ro") as server:
        config = node_config(tmp_path, server.url("central.git"))
        result, lines = doctor(config)
    assert result.status == 1, str(result)
    assert "ok   remote central: reachable, authenticated, protocol v2" in lines
    [failed] = with_level(lines, "FAIL")
    assert re.fullmatch(
        r"FAIL remote central: cannot push \(a scratch ref refs/gitmq/doctor/n1-[0-9a-f]{8}\): "
        r"remote git://\S+: push failed: fatal: remote error: service not enabled: "
        r"/central.git; give this node write access \(a deploy key or token that "
        r"may write\)",
        failed,
    ), failed
    assert scratch_refs(central) == []


def test_smart_http_with_its_token_and_with_a_wrong_or_missing_one(
    tmp_path: Path, smart_http: SmartHttp
) -> None:
    make_bare(smart_http.root, "central.git")
    url = smart_http.url("central.git")
    config = node_config(tmp_path, url, remote={"token_env": "CENTRAL_TOKEN"})
    result, lines = doctor(config, env={"CENTRAL_TOKEN": smart_http.token})
    assert result.status == 0, str(result)
    assert f"ok   remote central: {HEALTHY}" in lines

    result, lines = doctor(config, env={"CENTRAL_TOKEN": "wrong"})
    assert result.status == 1, str(result)
    [failed] = with_level(lines, "FAIL")
    assert failed.startswith(
        f"FAIL remote central: remote {url}: listing refs was refused: authentication failed ("
    )
    assert failed.endswith("check the token variable or the ssh key and known_hosts of this remote")
    assert "wrong" not in result.out

    result, lines = doctor(config, env={"CENTRAL_TOKEN": ""})
    assert result.status == 1
    assert with_level(lines, "FAIL") == [
        "FAIL remote central: remote 'central' needs a token in the environment variable "
        "CENTRAL_TOKEN, which is not set"
    ]


def test_a_missing_handler_fails(tmp_path: Path) -> None:
    config = node_config(
        tmp_path,
        consumers={
            "c": {"queue": "orders", "handler": {"command": ["/bin/true"]}},
            "d": {"queue": "orders", "handler": {"command": ["/nonexistent/handler"]}},
            "e": {"queue": "orders", "handler": {"python": "no_such_module:handle"}},
        },
    )
    result, lines = doctor(config)
    assert result.status == 1, str(result)
    failed = with_level(lines, "FAIL")
    assert [line.split(":")[0] for line in failed] == ["FAIL handler of d", "FAIL handler of e"]
    assert failed[0].startswith(f"FAIL handler of d: {config}: consumers.d.handler.command: ")
    assert "/nonexistent/handler" in failed[0]
    assert f"ok   storage: {tmp_path / 'storage.git'} does not exist yet; " in lines[-1]


def test_a_stale_lock_file_is_a_warning_a_fresh_one_is_not(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    storage = tmp_path / "storage.git"
    ok(gitmq("publish", storage, "orders", "x"))
    stale = storage / "refs" / "heads" / "orders.lock"
    stale.write_text("0" * 40 + "\n")
    old = time.time() - 20 * 60
    os.utime(stale, (old, old))
    (storage / "refs" / "tags").mkdir(exist_ok=True)
    (storage / "refs" / "tags" / "c.lock").write_text("fresh\n")  # someone is at work
    result, lines = doctor(config)
    assert result.status == 0, str(result)
    assert with_level(lines, "warn") == [
        f"warn lock: {stale} is 20 minutes old and no node runs here: a process died holding "
        f"it; remove it (rm {stale})"
    ]


def test_a_schedule_beyond_the_budget_is_a_warning(
    tmp_path: Path, git_daemon: GitDaemon, central: Path
) -> None:
    config = node_config(
        tmp_path,
        git_daemon.url("central.git"),
        remote={"budget": {"reads_per_minute": 6, "pushes_per_minute": 6}},
        sync={"interval": "1s"},
    )
    result, lines = doctor(config)
    assert result.status == 0, str(result)
    assert with_level(lines, "warn") == [
        "warn budget central: the sync schedule asks for 60 reads a minute, but this node's "
        "share of the budget is 6.0 (6 for 1 node(s)): cycles are spaced to fit (raise the "
        "budget, or lengthen sync.interval and sync.poll)"
    ]


def test_a_remote_commit_from_the_future_is_clock_skew(
    tmp_path: Path, git_daemon: GitDaemon, central: Path
) -> None:
    config = node_config(tmp_path, git_daemon.url("central.git"))
    future = int(time.time()) + 3600
    body = (
        f"tree {EMPTY_TREE}\nauthor a <a@example.invalid> {future} +0000\n"
        f"committer a <a@example.invalid> {future} +0000\n\nfrom the future\n"
    ).encode()
    sha = git(central, "hash-object", "-t", "commit", "-w", "--stdin", input=body).decode().strip()
    git(central, "update-ref", "refs/heads/orders", sha)
    ok(gitmq("sync", "--config", config))
    result, lines = doctor(config)
    assert result.status == 0, str(result)
    [skew] = with_level(lines, "warn")
    assert re.fullmatch(
        r"warn clock: the newest commit on remote central was made 3[56]\d\ds in this clock's "
        r"future: this machine's clock is behind \(or that node's is ahead\); check NTP on "
        r"both \(timedatectl, chronyc tracking\)",
        skew,
    ), skew


def test_a_consumer_whose_tag_is_not_on_its_queue_fails(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    storage = tmp_path / "storage.git"
    ok(gitmq("publish", storage, "orders", "x"))
    ok(gitmq("publish", storage, "audit", "y"))
    with Storage(storage) as opened:
        Consumer(opened, "c", "audit").ack_through(opened.read(opened.read_ref("refs/heads/audit")))
    result, lines = doctor(config)
    assert result.status == 1, str(result)
    [failed] = with_level(lines, "FAIL")
    assert failed.startswith("FAIL consumer c: ")


def test_a_config_that_does_not_load_is_one_error_line(tmp_path: Path) -> None:
    result = gitmq("doctor", "--config", tmp_path / "missing.yml")
    assert result.status == 5
    assert result.err == f"error: config file {tmp_path / 'missing.yml'} does not exist\n"
