"""The test servers work with plain git: clone, push and fetch a bare repository."""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import servers
from servers import (
    GitDaemon,
    ServerError,
    ServerProcess,
    SmartHttp,
    SshServer,
    git,
    make_bare,
)

# A server that ignores SIGTERM and starts a child in its own session that ignores it too.
_STUBBORN = """
import signal, socket, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
print(child.pid, flush=True)
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
time.sleep(60)
"""


class _Stubborn(ServerProcess):
    kind = "stubborn"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-c", _STUBBORN, str(port)]


def _commit(work: Path, text: str) -> str:
    (work / "message.txt").write_text(text)
    git("add", "message.txt", cwd=work)
    git("commit", "--quiet", "-m", text, cwd=work)
    return git("rev-parse", "HEAD", cwd=work).stdout.strip()


def _server_ref(bare: Path, ref: str = "refs/heads/main") -> str | None:
    proc = git("--git-dir", bare, "rev-parse", "--verify", "--quiet", ref, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _round_trip(
    push_url: str, fetch_url: str, env: Mapping[str, str], bare: Path, tmp_path: Path
) -> None:
    """Clone the empty repo twice, commit and push from one clone, fetch it from the other."""
    pusher, fetcher = tmp_path / "pusher", tmp_path / "fetcher"
    git("clone", "--quiet", push_url, pusher, env=env)
    git("clone", "--quiet", fetch_url, fetcher, env=env)
    # The unborn HEAD came from the server: protocol v2 works over this transport.
    assert git("symbolic-ref", "HEAD", cwd=pusher).stdout.strip() == "refs/heads/main"
    sha = _commit(pusher, "hello")
    git("push", "--quiet", "origin", "main", cwd=pusher, env=env)
    git("fetch", "--quiet", "origin", cwd=fetcher, env=env)
    assert git("rev-parse", "origin/main", cwd=fetcher).stdout.strip() == sha
    assert _server_ref(bare) == sha


def test_git_daemon_round_trip(git_daemon: GitDaemon, tmp_path: Path) -> None:
    bare = make_bare(git_daemon.root, "queue.git")
    url = git_daemon.url("queue.git")
    assert url == f"git://127.0.0.1:{git_daemon.port}/queue.git"
    _round_trip(url, url, git_daemon.client_env(), bare, tmp_path)


@pytest.mark.parametrize("fixture", ["git_daemon", "smart_http", "ssh_server"])
def test_stop_then_start_is_an_outage_of_the_same_remote(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    server: GitDaemon | SmartHttp | SshServer = request.getfixturevalue(fixture)
    make_bare(server.root, "queue.git")
    url, port, env = server.url("queue.git"), server.port, server.client_env()
    server.stop()
    assert not server.running
    assert git("ls-remote", url, env=env, check=False, timeout=10).returncode != 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port or 0), timeout=1).close()
    server.start()
    assert server.port == port
    assert server.url("queue.git") == url
    assert git("ls-remote", url, env=env, timeout=10).returncode == 0


def test_start_fails_when_a_fixed_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        daemon = GitDaemon(tmp_path, port=port, start_timeout=0.3)
        with pytest.raises(ServerError, match="did not start"):
            daemon.start()
        assert not daemon.running


def test_start_moves_to_a_new_port_when_the_free_one_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real_free_port())
        with GitDaemon(tmp_path) as daemon:
            assert daemon.port not in (None, taken)
            assert git("ls-remote", daemon.url("none.git"), check=False).returncode != 0


def test_smart_http_round_trip_with_token(smart_http: SmartHttp, tmp_path: Path) -> None:
    bare = make_bare(smart_http.root, "queue.git")
    url = smart_http.url("queue.git")
    assert url == f"http://127.0.0.1:{smart_http.port}/queue.git"
    _round_trip(url, url, smart_http.client_env(), bare, tmp_path)
    assert smart_http.token not in (tmp_path / "pusher" / ".git" / "config").read_text()


def test_smart_http_refuses_a_wrong_or_missing_token(smart_http: SmartHttp, tmp_path: Path) -> None:
    bare = make_bare(smart_http.root, "queue.git")
    url, work = smart_http.url("queue.git"), tmp_path / "work"
    git("clone", "--quiet", url, work, env=smart_http.client_env())
    _commit(work, "hello")

    wrong = git("push", "origin", "main", cwd=work, env=smart_http.client_env("wrong"), check=False)
    assert wrong.returncode != 0
    assert "terminal prompts disabled" in wrong.stderr
    assert _server_ref(bare) is None
    # Private like a GitHub repo: reading needs the token too.
    assert git("ls-remote", url, check=False).returncode != 0
    assert git("ls-remote", url, env=smart_http.client_env("wrong"), check=False).returncode != 0

    git("push", "--quiet", "origin", "main", cwd=work, env=smart_http.client_env())
    assert _server_ref(bare) == git("rev-parse", "HEAD", cwd=work).stdout.strip()


def test_ssh_round_trip_with_both_url_shapes(ssh_server: SshServer, tmp_path: Path) -> None:
    bare = make_bare(ssh_server.root, "queue.git")
    url, scp_url = ssh_server.url("queue.git"), ssh_server.scp_url("queue.git")
    assert url == f"ssh://{ssh_server.user}@127.0.0.1:{ssh_server.port}{ssh_server.root}/queue.git"
    assert scp_url == f"gitmq-test:{ssh_server.root}/queue.git"
    _round_trip(url, scp_url, ssh_server.client_env(), bare, tmp_path)


def test_ssh_refuses_an_unknown_key(ssh_server: SshServer, tmp_path: Path) -> None:
    make_bare(ssh_server.root, "queue.git")
    ssh_server.authorized_keys.write_text("")
    proc = git(
        "ls-remote", ssh_server.scp_url("queue.git"), env=ssh_server.client_env(), check=False
    )
    assert proc.returncode != 0
    assert "Permission denied (publickey)" in proc.stderr


def test_stop_kills_what_ignores_sigterm_and_what_left_the_group() -> None:
    server = _Stubborn(None, stop_timeout=0.3).start()
    child = int(server.log_text().split()[0])
    assert servers._alive(child)
    server.stop()
    assert not server.running
    assert not servers._alive(child)
