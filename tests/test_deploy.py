"""The Ansible role: lint, syntax, and a real run that installs a node into a tmp root.

The run installs GitMQ from wheels built here (the package and all its
dependencies, with --no-index), renders the config and the systemd unit, and
must report changed=0 the second time. systemd does not run here (PID 1 is not
systemd), so the role's service management is off and `systemd-analyze verify`
checks the unit instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import GitDaemon, make_bare
from util import git_text, kill_all, start, stop, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----"
)
PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvDP3oUCiyx3zCuXvV9Ydf4Jdo1dj1LjbZ+3V4vq7pu node-a"
)
KNOWN_HOST = (
    "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
)
PRUNE = {"max_messages": 100000, "max_age": "7d", "keep_unconsumed": True, "schedule": "1h"}
BILLING = {
    "queue": "orders",
    "handler": {"command": ["/usr/local/bin/bill", "--flag"]},
    "retry": {"max_attempts": 5, "initial_delay": "100ms", "max_delay": "30s"},
    "dead_letter": "orders.dlq",
}


@dataclass(frozen=True)
class Install:
    root: Path  # gitmq_root: everything the role wrote is below it
    inventory: Path
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]


def run(argv: list[Any], **options: Any) -> subprocess.CompletedProcess[str]:
    options.setdefault("timeout", 600)
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, **options
    )


def ansible_env(home: Path) -> dict[str, str]:
    """The environment of the ansible tools: their state in ``home``, pip without config.

    This machine configures pip with extra indexes and find-links; the role's
    pip must see only the wheels the test built. No GIT_* variable leaks in.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "ANSIBLE_", "GIT_"))}
    return env | {
        "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "ANSIBLE_HOME": str(home / "ansible"),
        "ANSIBLE_LOCAL_TEMP": str(home / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The PLAY RECAP counters of localhost, e.g. {"ok": 9, "changed": 0, "failed": 0, ...}."""
    line = re.search(r"^localhost\s+:(.*)$", result.stdout, re.MULTILINE)
    assert line, result.stdout + result.stderr
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line.group(1))}


def load_rendered_config(root: Path) -> dict[str, Any]:
    """Test hook: the node config the role rendered, as YAML data."""
    data = yaml.safe_load((root / "etc/gitmq/node.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gitmq wheel and the wheels of every dependency, built once per session."""
    out = tmp_path_factory.mktemp("wheelhouse")
    built = run([VENV_BIN / "python", "-m", "pip", "wheel", "--quiet", "-w", out, ROOT])
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Install:
    """One real run of deploy/site.yml into a tmp root, as root, without systemd."""
    base = tmp_path_factory.mktemp("deploy")
    root = base / "root"
    version = next(wheelhouse.glob("gitmq-*.whl")).name.split("-")[1]
    inventory = base / "inventory.yml"
    node = {
        "gitmq_node_name": "node-a",
        "gitmq_identity_name": "Node A",
        "gitmq_identity_email": "node-a@example.com",
        "gitmq_ssh_public_key": PUBLIC_KEY,
        "gitmq_ssh_private_key": PRIVATE_KEY,
        "gitmq_consumers": {"billing": BILLING},
    }
    group = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "gitmq_root": str(root),
        "gitmq_manage_service": False,
        "gitmq_create_user": False,
        "gitmq_install_packages": False,
        "gitmq_user": "root",
        "gitmq_group": "root",
        "gitmq_version": version,
        "gitmq_wheel_dir": str(wheelhouse),
        "gitmq_known_hosts": [KNOWN_HOST],
        "gitmq_remotes": {
            "origin": {"url": "git@github.com:acme/queues.git"},
            "mirror": {"url": "https://git.example.com/acme/m.git", "token_env": "MIRROR_TOKEN"},
        },
        "gitmq_environment": {"MIRROR_TOKEN": "s3cret token"},
        "gitmq_sync_interval": "7s",
        "gitmq_prune": PRUNE,
        "gitmq_queues": {
            "orders": {"remote": "origin"},
            "audit": {"remote": "mirror", "prune": {"max_age": "30d", "schedule": "0 3 * * *"}},
        },
        "gitmq_github_repository": "acme/queues",
    }
    inventory.write_text(
        yaml.safe_dump({"gitmq_nodes": {"vars": group, "hosts": {"localhost": node}}})
    )
    env = ansible_env(base / "home")
    first = playbook(inventory, env)
    assert first.returncode == 0, first.stdout + first.stderr
    return Install(root, inventory, env, first)


def playbook(inventory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [VENV_BIN / "ansible-playbook", "-i", inventory, "-c", "local", "site.yml"]
    return run(argv, cwd=DEPLOY, env=env)


def test_ansible_lint_passes(tmp_path: Path) -> None:
    linted = run([VENV_BIN / "ansible-lint"], cwd=DEPLOY, env=ansible_env(tmp_path))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "Profile 'production' was required, and it passed." in linted.stdout + linted.stderr


def test_syntax_check_passes(tmp_path: Path) -> None:
    argv = [VENV_BIN / "ansible-playbook", "--syntax-check", "-i", "inventory.example.yml"]
    checked = run([*argv, "site.yml"], cwd=DEPLOY, env=ansible_env(tmp_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_first_run_installs_gitmq_from_the_wheels(install: Install) -> None:
    counts = recap(install.first)
    assert counts["failed"] == 0 and counts["changed"] > 0
    gitmq = install.root / "opt/gitmq/venv/bin/gitmq"
    version = run([gitmq, "--version"])
    assert version.stdout.startswith("gitmq "), version.stderr


def test_rendered_config_is_what_the_inventory_said(install: Install) -> None:
    root = install.root
    assert load_rendered_config(root) == {
        "node": {"name": "node-a", "identity": {"name": "Node A", "email": "node-a@example.com"}},
        "storage": {"path": f"{root}/var/lib/gitmq/node-a.git", "fsync": False},
        "remotes": {
            "origin": {
                "url": "git@github.com:acme/queues.git",
                "ssh_key": f"{root}/etc/gitmq/id_ed25519",
                "known_hosts": f"{root}/etc/gitmq/known_hosts",
            },
            "mirror": {"url": "https://git.example.com/acme/m.git", "token_env": "MIRROR_TOKEN"},
        },
        "sync": {"interval": "7s", "jitter": "1s"},
        "queues": {
            "orders": {"remote": "origin", "prune": PRUNE},
            "audit": {"remote": "mirror", "prune": {"max_age": "30d", "schedule": "0 3 * * *"}},
        },
        "consumers": {"billing": BILLING},
        "github": {
            "repository": "acme/queues",
            "private": True,
            "base_url": "https://api.github.com",
            "deploy_keys": [{"title": "node-a", "key": PUBLIC_KEY}],
        },
    }
    config = root / "etc/gitmq/node.yml"
    gitmq = root / "opt/gitmq/venv/bin/gitmq"
    checked = run([gitmq, "config", "check", "--skip-handlers", config])  # as the role does
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{config}: ok (node node-a: 2 queues, 1 consumers")
    # The inventory's handler is not installed here: the node would refuse to start.
    full = run([gitmq, "config", "check", config])
    assert full.returncode == 5 and "'/usr/local/bin/bill' is not an executable" in full.stderr


def test_key_and_secrets_are_private_to_the_node(install: Install) -> None:
    etc = install.root / "etc/gitmq"
    assert (etc / "id_ed25519").read_text() == PRIVATE_KEY + "\n"
    assert (etc / "known_hosts").read_text() == KNOWN_HOST + "\n"
    assert 'MIRROR_TOKEN="s3cret token"\n' in (etc / "node.env").read_text()
    modes = {name: (etc / name).stat().st_mode & 0o777 for name in os.listdir(etc)}
    assert modes == {
        "id_ed25519": 0o600,
        "known_hosts": 0o644,
        "node.env": 0o600,
        "node.yml": 0o640,
    }
    assert (etc / "id_ed25519").stat().st_uid == 0  # gitmq_user, root in this test
    assert "s3cret" not in install.first.stdout + install.first.stderr


def test_systemd_accepts_the_unit(install: Install) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: install the Debian package systemd (.ci/setup)")
    root = install.root
    unit = root / "etc/systemd/system/gitmq-node.service"
    text = unit.read_text()
    exec_start = f"{root}/opt/gitmq/venv/bin/gitmq node --config {root}/etc/gitmq/node.yml"
    for line in (
        f"ExecStart={exec_start}",
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=60",
        "User=root",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={root}/var/lib/gitmq",
        "PrivateTmp=yes",
        "ProtectHome=yes",
    ):
        assert f"\n{line}\n" in text
    # verify exits 0 on unknown keys and bad values, but prints them: demand silence.
    verified = run(["systemd-analyze", "verify", unit])
    assert (verified.returncode, verified.stdout, verified.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("shell", "path"),
    [
        ("bash", "etc/bash_completion.d/gitmq"),
        ("zsh", "usr/share/zsh/vendor-completions/_gitmq"),
        ("fish", "usr/share/fish/vendor_completions.d/gitmq.fish"),
    ],
)
def test_shell_completion_is_what_the_installed_gitmq_prints(
    install: Install, shell: str, path: str
) -> None:
    gitmq = install.root / "opt/gitmq/venv/bin/gitmq"
    printed = run([gitmq, "completion", shell])
    assert printed.returncode == 0 and printed.stdout.strip(), printed.stderr
    installed = install.root / path
    assert installed.read_text() == printed.stdout.rstrip("\n") + "\n"
    assert installed.stat().st_mode & 0o777 == 0o644


def test_second_run_changes_nothing(install: Install) -> None:
    second = playbook(install.inventory, install.env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second)["changed"] == 0, second.stdout


def test_the_rendered_node_runs_and_delivers(
    tmp_path: Path, wheelhouse: Path, git_daemon: GitDaemon
) -> None:
    """Install a node whose remote is a real git daemon, start the installed
    `gitmq node` on the rendered config, and see a message go through."""
    root = tmp_path / "root"
    make_bare(git_daemon.root, "central.git")
    delivered = tmp_path / "delivered.txt"
    python = root / "opt/gitmq/venv/bin/python"
    sink = f"import sys; open({str(delivered)!r}, 'ab').write(sys.stdin.buffer.read() + b'\\n')"
    group = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "gitmq_root": str(root),
        "gitmq_manage_service": False,
        "gitmq_create_user": False,
        "gitmq_install_packages": False,
        "gitmq_user": "root",
        "gitmq_group": "root",
        "gitmq_version": next(wheelhouse.glob("gitmq-*.whl")).name.split("-")[1],
        "gitmq_wheel_dir": str(wheelhouse),
        "gitmq_remotes": {"central": {"url": git_daemon.url("central.git")}},
        "gitmq_sync_interval": "500ms",
        "gitmq_sync_jitter": "0s",
        "gitmq_queues": {"orders": {"remote": "central"}},
        "gitmq_consumers": {
            "shipping": {"queue": "orders", "handler": {"command": [str(python), "-c", sink]}}
        },
    }
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump({"gitmq_nodes": {"vars": group, "hosts": {"localhost": {}}}})
    )
    installed = playbook(inventory, ansible_env(tmp_path / "home"))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    gitmq = root / "opt/gitmq/venv/bin/gitmq"
    config = root / "etc/gitmq/node.yml"
    node = start([gitmq, "node", "--config", config])
    try:
        storage = load_rendered_config(root)["storage"]["path"]
        published = run([gitmq, "publish", storage, "orders", "hello from ansible"])
        assert published.returncode == 0, published.stderr
        wait_for(
            lambda: delivered.exists() and delivered.read_bytes() == b"hello from ansible\n",
            timeout=60,
            what="the installed node to deliver the message",
            procs=[node],
        )
        on_remote = git_text(git_daemon.root / "central.git", "log", "--format=%B", "orders")
        assert on_remote.strip() == "hello from ansible"
        assert stop(node) == 0
    finally:
        kill_all([node])
