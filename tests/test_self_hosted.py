"""docs/self-hosted.md, run: its marked blocks set up each server, and a real node syncs
through it.

A block preceded by ``<!-- tested: SECTION/STEP -->`` is run here exactly as
written: shell blocks with bash (``*/serve`` ones as a server in the
background, until the test ends), the ``*/config`` YAML block as the node's
``remotes:``, with the page's example host, port and paths replaced by the
test's. The page's variables (``$GITMQ_HOME``, ``$LISTEN``, ``$PORT``, ...) point
into the test's directory and 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodes import Cluster, remote_messages
from servers import LOCALHOST, Gitolite, ServerProcess, SshServer, free_port, git, server_env

DOC = Path(__file__).resolve().parent.parent / "docs" / "self-hosted.md"
_BLOCK = re.compile(r"<!-- tested: (\S+) -->\n```(\w+)\n(.*?)```\n", re.S)
SECTIONS = {
    "git-daemon": ["setup", "serve", "unit", "config"],
    "http": ["setup", "users", "lighttpd", "serve", "config"],
    "ssh": ["node-key", "server", "known-hosts", "config"],
    "gitolite": ["rules", "config"],
}


def doc_blocks() -> dict[str, str]:
    found = _BLOCK.findall(DOC.read_text())
    blocks = {name: code for name, _, code in found}
    assert len(blocks) == len(found), "two blocks are marked with one name"
    return blocks


BLOCKS = doc_blocks()


def test_the_page_marks_the_blocks_these_tests_run() -> None:
    assert sorted(BLOCKS) == sorted(
        f"{s}/{step}" for s, steps in SECTIONS.items() for step in steps
    )


class Page:
    """The page's variables for one test, and its blocks run with them."""

    def __init__(self, tmp_path: Path, **extra: str) -> None:
        self.home = tmp_path / "srv"
        self.home.mkdir()
        self.vars = {
            "GITMQ_HOME": str(self.home),
            "LISTEN": LOCALHOST,
            "CONF": str(tmp_path / "conf"),
            "SERVER": LOCALHOST,
            **extra,
        }
        self.cwd = tmp_path

    def env(self) -> dict[str, str]:
        return {**server_env(), "HOME": os.environ["HOME"], **self.vars}

    def run(self, name: str) -> None:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", BLOCKS[name]],
            cwd=self.cwd,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr}"

    def server(self, name: str, workdir: Path) -> ServerProcess:
        """The block as a server on $PORT, or on a free port when the page sets none."""
        port = int(self.vars["PORT"]) if "PORT" in self.vars else None
        return _Block(self, name, workdir, port)


class _Block(ServerProcess):
    """A page's ``*/serve`` block as a server on the port ServerProcess picks."""

    def __init__(self, page: Page, name: str, workdir: Path, port: int | None) -> None:
        super().__init__(workdir, port=port)
        self.page, self.block, self.kind = page, BLOCKS[name], name.replace("/", "-")

    def command(self, port: int) -> list[str]:
        assigned = [f"{k}={v}" for k, v in {**self.page.vars, "PORT": str(port)}.items()]
        return ["env", *assigned, "bash", "-euc", self.block]


def page_remote(name: str, replace: dict[str, str]) -> dict[str, Any]:
    """The block's ``remotes.central``, with the page's example host and paths replaced."""
    text = BLOCKS[name]
    for old, new in replace.items():
        assert old in text, f"{name} no longer holds {old!r}"
        text = text.replace(old, new)
    return dict(yaml.safe_load(text)["remotes"]["central"])


def sync_one_message(root: Path, remote: dict[str, Any], repo: Path) -> None:
    """A real node publishes one message and syncs it; the server's repository has it."""
    with Cluster(root, remote.pop("url")) as cluster:
        node = cluster.node("a", remote=remote)
        node.publish("orders", "hello from a")
        result = node.once()
        assert result.status == 0, str(result)
    assert [m.payload for m in remote_messages(repo, "orders")] == ["hello from a"]


# -- 1. git daemon -----------------------------------------------------------------------


def test_git_daemon(tmp_path: Path) -> None:
    page = Page(tmp_path)
    page.run("git-daemon/setup")
    with page.server("git-daemon/serve", tmp_path / "daemon") as daemon:
        port = daemon.require_port()
        remote = page_remote("git-daemon/config", {"git.example.com": f"{LOCALHOST}:{port}"})
        sync_one_message(tmp_path / "nodes", remote, page.home / "queues.git")


def test_the_git_daemon_unit_is_a_valid_systemd_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "gitmq-daemon.service"
    unit.write_text(BLOCKS["git-daemon/unit"])
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert str(unit) not in proc.stderr, proc.stderr  # a bad line is only a warning


# -- 2. smart HTTP -----------------------------------------------------------------------


def test_smart_http_behind_lighttpd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(20)
    page = Page(tmp_path, GITMQ_TOKEN=token, PORT=str(free_port()))  # in lighttpd.conf
    for step in ("setup", "users", "lighttpd"):
        page.run(f"http/{step}")
    with page.server("http/serve", tmp_path / "lighttpd") as server:
        base = f"http://{LOCALHOST}:{server.require_port()}"
        anonymous = git("ls-remote", f"{base}/queues.git", check=False, timeout=30)
        assert anonymous.returncode != 0, anonymous.stdout  # every request needs the user
        monkeypatch.setenv("GITMQ_TOKEN", token)
        remote = page_remote("http/config", {"https://git.example.com": base})
        sync_one_message(tmp_path / "nodes", remote, page.home / "queues.git")


# -- 3. ssh and git-shell ----------------------------------------------------------------


class _GitShellSshd(SshServer):
    """The tests' sshd, reading the page's authorized_keys, with git-shell as the shell."""

    def __init__(self, page: Page, workdir: Path) -> None:
        super().__init__(page.home, workdir)
        self.page = page

    def _sshd_config_text(self, port: int) -> str:
        keys = self.page.home / ".ssh" / "authorized_keys"
        text = super()._sshd_config_text(port)
        text = text.replace(
            f'AuthorizedKeysFile "{self.authorized_keys}"', f'AuthorizedKeysFile "{keys}"'
        )
        return text + 'ForceCommand git-shell -c "$SSH_ORIGINAL_COMMAND"\n'


def test_ssh_with_a_git_shell_user(tmp_path: Path) -> None:
    node_dir = tmp_path / "node-keys"
    node_dir.mkdir()
    key, known_hosts = node_dir / "id_ed25519", node_dir / "known_hosts"
    page = Page(tmp_path, NODE_KEY=str(key), KNOWN_HOSTS=str(known_hosts))
    page.run("ssh/node-key")
    page.run("ssh/server")
    with _GitShellSshd(page, tmp_path / "sshd") as sshd:
        port = sshd.require_port()
        page.vars["PORT"] = str(port)
        page.run("ssh/known-hosts")
        login = subprocess.run(
            ["ssh", "-F", os.devnull, "-p", str(port), "-i", str(key), "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={known_hosts}", f"{sshd.user}@{LOCALHOST}", "ls", "/"],
            env=server_env(), capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert (login.returncode, login.stderr) == (128, "fatal: unrecognized command 'ls /'\n")
        remote = page_remote(
            "ssh/config",
            {
                "gitmq@git.example.com": f"{sshd.user}@{LOCALHOST}:{port}",
                "/srv/git": str(page.home),
                "/etc/gitmq/id_ed25519": str(key),
                "/etc/gitmq/known_hosts": str(known_hosts),
            },
        )
        sync_one_message(tmp_path / "nodes", remote, page.home / "queues.git")


# -- 4. gitolite -------------------------------------------------------------------------


@pytest.mark.slow
def test_gitolite_protects_the_queue_branches_as_the_page_says(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("gitolite runs as its own system user: the test needs root")
    if shutil.which("gitolite") is None:
        pytest.skip("gitolite3 is not installed (.ci/setup installs it)")
    rules = BLOCKS["gitolite/rules"]
    assert "@nodes = node-a node-b node-c\n" in rules
    rules = rules.replace("@nodes = node-a node-b node-c\n", "@nodes = node\n")  # the test's key
    with Gitolite(tmp_path / "gitolite", rules) as server:
        port = server.require_port()
        remote = page_remote(
            "gitolite/config",
            {
                "gitolite3@git.example.com": f"{Gitolite.USER}@{LOCALHOST}:{port}",
                "/etc/gitmq/id_ed25519": str(server.client_key),
                "/etc/gitmq/known_hosts": str(server.known_hosts),
            },
        )
        repo = server.home / "repositories" / "queues.git"
        sync_one_message(tmp_path / "nodes", remote, repo)

        scratch = tmp_path / "scratch.git"
        git("init", "--quiet", "--bare", scratch)
        body = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
        body += "author E <e@x> 1700000000 +0000\ncommitter E <e@x> 1700000000 +0000\n\nx\n"
        foreign = subprocess.run(
            ["git", "--git-dir", str(scratch), "hash-object", "-t", "commit", "-w", "--stdin"],
            input=body, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        before = git("--git-dir", repo, "rev-parse", "refs/heads/orders").stdout.strip()
        forced = git(
            "--git-dir", scratch, "push", server.url("queues"), f"+{foreign}:refs/heads/orders",
            env=server.client_env(), check=False,
        )  # fmt: skip
        assert forced.returncode != 0
        assert "+ refs/heads/orders queues node DENIED by fallthru" in forced.stderr, forced.stderr
        assert git("--git-dir", repo, "rev-parse", "refs/heads/orders").stdout.strip() == before
