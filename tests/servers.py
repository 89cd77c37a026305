"""Real git servers on 127.0.0.1 for tests: git daemon, smart HTTP with a token, and SSH.

Each server is a context manager that runs one foreground process in its own
process group on a free port, and stops that group, plus any process that left
it (sshd's per-connection children call setsid), by pid: SIGTERM, then SIGKILL
after a timeout. Readiness is a condition polled against a deadline, never a
sleep: the port must accept and the listening socket must belong to the process
we started, so a port taken by someone else between probe and bind is noticed.
A process that exits while starting lost its port: we retry on a new free port.
Once started, a server keeps its port, so `stop()` then `start()` simulates an
outage of the same remote.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import itertools
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

LOCALHOST = "127.0.0.1"
_POLL_INTERVAL = 0.01
_MAX_PORT_ATTEMPTS = 5


class ServerError(RuntimeError):
    """A test server could not start; the message carries its log."""


class GitCommandError(RuntimeError):
    """A git command failed: shows the command, its exit status, stdout and stderr."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.proc = proc
        super().__init__(
            f"{shlex.join(proc.args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )


def server_env() -> dict[str, str]:
    """os.environ without GIT_* variables, ignoring system and global git config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")
    return env


def _run(
    args: Sequence[str | Path],
    env: Mapping[str, str],
    cwd: Path | None,
    check: bool,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise GitCommandError(proc)
    return proc


def git(
    *args: str | Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run git with os.environ updated by `env`.

    Always with a timeout: a network git call can hang when the remote is gone.
    """
    return _run(["git", *args], {**os.environ, **(env or {})}, cwd, check, timeout)


def make_bare(root: Path, name: str, initial_branch: str = "main") -> Path:
    """Create the bare repository root/name, independent of any user or test git config."""
    path = root / name
    args: list[str | Path] = [
        "git",
        "init",
        "--quiet",
        "--bare",
        f"--initial-branch={initial_branch}",
        path,
    ]
    _run(args, server_env(), None, True, 30.0)
    return path


def free_port() -> int:
    """A port that was free a moment ago (the server may still lose it: see start())."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


# --- processes, read from /proc (Linux) -------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgrp: int
    state: str


def proc_table() -> list[Proc]:
    """Every process on the machine, from /proc/*/stat."""
    table = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table.append(Proc(int(entry.name), int(fields[1]), int(fields[2]), fields[0]))
    return table


def _family(leader: int) -> set[int]:
    """Live processes in the leader's process group or descending from it, leader excluded."""
    table = proc_table()
    children: defaultdict[int, list[int]] = defaultdict(list)
    for proc in table:
        children[proc.ppid].append(proc.pid)
    found = {p.pid for p in table if p.pgrp == leader}
    todo = [leader]
    while todo:
        for child in children[todo.pop()]:
            if child not in found:
                found.add(child)
                todo.append(child)
    live = {p.pid for p in table if p.state != "Z"}
    return (found & live) - {leader}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(leader: int, pids: set[int], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(proc: subprocess.Popen[bytes], pids: set[int], deadline: float) -> bool:
    """Reap the leader and wait until every other pid is gone (not our children: poll)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(max(0.0, deadline - time.monotonic()))
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL)
    return proc.poll() is not None and not any(_alive(pid) for pid in pids)


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def _serves(leader: int, port: int) -> bool:
    """The leader or a descendant holds the socket listening on port, and the port accepts.

    A descendant: `git daemon` runs the git-daemon executable as a child.
    """
    wanted = _listening_inodes(port)
    if not wanted or not any(wanted & _socket_inodes(p) for p in {leader, *_family(leader)}):
        return False
    try:
        with socket.create_connection((LOCALHOST, port), timeout=1.0):
            return True
    except OSError:
        return False


# --- the common lifecycle --------------------------------------------------------------


class ServerProcess:
    """One foreground server process with start()/stop() by pid; subclasses say what to run."""

    kind = "server"

    def __init__(
        self,
        workdir: Path | None,
        *,
        port: int | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._old_logs = ""

    def prepare(self, port: int) -> None:
        """Write whatever the command needs (config files, keys) for this port."""

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def workdir_path(self) -> Path:
        if self.workdir is None:
            raise ServerError(f"{self.kind} needs a workdir")
        return self.workdir

    def require_port(self) -> int:
        if self.port is None:
            raise ServerError(f"{self.kind} has no port yet: start() it first")
        return self.port

    def log_text(self) -> str:
        """Everything the server wrote to stdout/stderr so far, across restarts."""
        current = ""
        if self._log is not None:
            size = os.fstat(self._log.fileno()).st_size
            current = os.pread(self._log.fileno(), size, 0).decode(errors="replace")
        return self._old_logs + current

    def start(self) -> Self:
        """Start on self.port, or on a free port the first time; keep that port for restarts."""
        if self._proc is not None:
            raise ServerError(f"{self.kind} is already started (pid {self._proc.pid})")
        deadline = time.monotonic() + self.start_timeout
        fixed = self.port is not None
        for attempt in itertools.count(1):
            port = self.port if self.port is not None else free_port()
            if self._start_once(port, deadline):
                self.port = port
                return self
            if time.monotonic() >= deadline or (not fixed and attempt >= _MAX_PORT_ATTEMPTS):
                raise ServerError(
                    f"{self.kind} did not start on {LOCALHOST}:{port} "
                    f"(attempt {attempt}); its log:\n{self.log_text()}"
                )
            if fixed:  # someone holds our port: back off a little before trying it again
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def _start_once(self, port: int, deadline: float) -> bool:
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare(port)
        command = self.command(port)
        self._log = self._open_log()
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=server_env(),
                cwd=self.workdir,
                start_new_session=True,
            )
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _serves(self._proc.pid, port):
                    return True
                time.sleep(_POLL_INTERVAL)
        except BaseException:
            self.stop()
            raise
        self.stop()
        return False

    def _open_log(self) -> IO[bytes]:
        """Held open while the process runs, closed by stop()."""
        if self.workdir is None:
            return tempfile.TemporaryFile()
        return (self.workdir / f"{self.kind.replace(' ', '-')}.log").open("a+b")

    def stop(self) -> None:
        """Stop the whole process group and every descendant; a no-op when stopped."""
        proc, self._proc = self._proc, None
        if proc is None:
            self._close_log()
            return
        try:
            family = _family(proc.pid)
            _signal(proc.pid, family, signal.SIGTERM)
            if not _wait_gone(proc, family, time.monotonic() + self.stop_timeout):
                family |= _family(proc.pid)
                _signal(proc.pid, family, signal.SIGKILL)
                _wait_gone(proc, family, time.monotonic() + self.stop_timeout)
        finally:
            self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._old_logs = self.log_text()
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- the servers -----------------------------------------------------------------------


class GitDaemon(ServerProcess):
    """`git daemon` serving every repository under root, push enabled, no auth."""

    kind = "git daemon"

    def __init__(
        self,
        root: Path,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        verbose: bool = False,
    ) -> None:
        super().__init__(workdir, port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.root = root.resolve()
        self.verbose = verbose  # log each request, for requests()

    def command(self, port: int) -> list[str]:
        logging = ["--verbose", "--log-destination=stderr"] if self.verbose else []
        return [
            "git",
            "daemon",
            *logging,
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--informative-errors",
            f"--base-path={self.root}",
            f"--listen={LOCALHOST}",
            f"--port={port}",
            str(self.root),
        ]

    def url(self, name: str) -> str:
        return f"git://{LOCALHOST}:{self.require_port()}/{name}"

    def client_env(self) -> dict[str, str]:
        return {}

    def requests(self) -> tuple[int, int]:
        """(reads, pushes) served so far: upload-pack and receive-pack requests (needs
        ``verbose``). A ref listing and a fetch are one read each."""
        text = self.log_text()
        return text.count("Request upload-pack for "), text.count("Request receive-pack for ")


class SmartHttp(ServerProcess):
    """lighttpd + git-http-backend; every request needs basic auth, like a private GitHub repo."""

    kind = "lighttpd"

    def __init__(
        self,
        root: Path,
        workdir: Path,
        user: str = "x-access-token",
        token: str | None = None,
        *,
        port: int | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(workdir, port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.root = root.resolve()
        self.user = user
        self.token = token if token is not None else "gmq_" + secrets.token_hex(16)
        self.config = workdir / "lighttpd.conf"
        self.htpasswd = workdir / "htpasswd"

    def prepare(self, port: int) -> None:
        self.rotate(self.token)
        for sub in ("htdocs", "uploads"):
            (self.workdir_path / sub).mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._config_text(port))

    def _config_text(self, port: int) -> str:
        exec_path = _run(["git", "--exec-path"], server_env(), None, True, 30.0).stdout.strip()
        backend = Path(exec_path) / "git-http-backend"
        return f"""\
server.modules = ("mod_alias", "mod_auth", "mod_authn_file", "mod_setenv", "mod_cgi")
server.bind = "{LOCALHOST}"
server.port = {port}
server.document-root = "{self.workdir_path / "htdocs"}"
server.upload-dirs = ("{self.workdir_path / "uploads"}")
alias.url = ("/" => "{backend}/")
cgi.assign = ("" => "")
setenv.add-environment = (
    "GIT_PROJECT_ROOT" => "{self.root}",
    "GIT_HTTP_EXPORT_ALL" => "1",
    "GIT_CONFIG_NOSYSTEM" => "1",
    "GIT_CONFIG_GLOBAL" => "{os.devnull}",
)
auth.backend = "htpasswd"
auth.backend.htpasswd.userfile = "{self.htpasswd}"
auth.require = ("/" => ("method" => "basic", "realm" => "gitmq", "require" => "valid-user"))
# lighttpd waits a second before each 401 against brute force; tests want it fast.
server.feature-flags = ("auth.delay-invalid-creds" => "disable")
"""

    def rotate(self, token: str) -> None:
        """Accept ``token`` from now on, and no other (lighttpd reads the file anew)."""
        self.token = token
        digest = base64.b64encode(hashlib.sha1(token.encode()).digest()).decode()
        tmp = self.htpasswd.with_suffix(".tmp")
        tmp.write_text(f"{self.user}:{{SHA}}{digest}\n")
        os.replace(tmp, self.htpasswd)

    def command(self, port: int) -> list[str]:
        return [_find_binary("lighttpd"), "-D", "-f", str(self.config)]

    def url(self, name: str) -> str:
        return f"http://{LOCALHOST}:{self.require_port()}/{name}"

    def client_env(self, token: str | None = None) -> dict[str, str]:
        """Pass the token as an HTTP header through the environment: not in argv, not in config."""
        secret = self.token if token is None else token
        basic = base64.b64encode(f"{self.user}:{secret}".encode()).decode()
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }


class SshServer(ServerProcess):
    """sshd with its own host key and one authorized client key, for the current user."""

    kind = "sshd"

    def __init__(
        self,
        root: Path,
        workdir: Path,
        host_alias: str = "gitmq-test",
        *,
        port: int | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(workdir, port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.root = root.resolve()
        self.host_alias = host_alias
        self.user = getpass.getuser()
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.client_key = workdir / "client_ed25519"
        self.authorized_keys = workdir / "authorized_keys"
        self.known_hosts = workdir / "known_hosts"
        self.ssh_config = workdir / "ssh_config"
        self.sshd_config = workdir / "sshd_config"

    def prepare(self, port: int) -> None:
        if os.geteuid() == 0:  # sshd's privilege separation directory
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                keygen: list[str | Path] = [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-f",
                    key,
                ]
                _run(keygen, server_env(), None, True, 30.0)
        client_pub = self.client_key.with_suffix(".pub").read_text().strip()
        self.authorized_keys.write_text(f"restrict {client_pub}\n")
        host_pub = " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[{LOCALHOST}]:{port},{self.host_alias} {host_pub}\n")
        self.sshd_config.write_text(self._sshd_config_text(port))
        self.ssh_config.write_text(self._ssh_config_text(port))

    def _sshd_config_text(self, port: int) -> str:
        return f"""\
ListenAddress {LOCALHOST}
Port {port}
HostKey "{self.host_key}"
PidFile "{self.workdir_path / "sshd.pid"}"
AuthorizedKeysFile "{self.authorized_keys}"
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100
MaxSessions 100
AcceptEnv GIT_PROTOCOL
SetEnv GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL={os.devnull}
"""

    def _ssh_config_text(self, port: int) -> str:
        return f"""\
Host {self.host_alias}
    HostName {LOCALHOST}
    HostKeyAlias {self.host_alias}
    User {self.user}
Host {self.host_alias} {LOCALHOST}
    Port {port}
    IdentityFile "{self.client_key}"
    IdentitiesOnly yes
    IdentityAgent none
    BatchMode yes
    UserKnownHostsFile "{self.known_hosts}"
    GlobalKnownHostsFile {os.devnull}
    StrictHostKeyChecking yes
    UpdateHostKeys no
    ConnectTimeout 10
    LogLevel ERROR
"""

    def command(self, port: int) -> list[str]:
        return [_find_binary("sshd"), "-D", "-e", "-f", str(self.sshd_config)]

    def url(self, name: str) -> str:
        return f"ssh://{self.user}@{LOCALHOST}:{self.require_port()}{self.root}/{name}"

    def scp_url(self, name: str) -> str:
        """The git@host:org/repo shape, through the Host alias in ssh_config."""
        return f"{self.host_alias}:{self.root}/{name}"

    def client_env(self) -> dict[str, str]:
        return {"GIT_SSH_COMMAND": f"ssh -F {shlex.quote(str(self.ssh_config))}"}


class Gitolite(SshServer):
    """gitolite3 (Debian's) behind the tests' sshd: a real access-controlled git server
    whose per-ref rules refuse updates as GitHub's protection does (TESTING.md).

    It runs as the system user ``USER`` (one fixed name, made once, reused), whose home
    is ``workdir/home``; the client key is the user ``node`` in ``rules``, the one
    repository ``queues``. Needs root (useradd, sshd switching users)."""

    kind = "gitolite"
    USER = "gitmq-gitolite"

    def __init__(self, workdir: Path, rules: str) -> None:
        # Its home must be reachable by its user: pytest's folders are root's alone.
        self.home = Path(tempfile.mkdtemp(prefix="gitmq-gitolite-", dir="/tmp"))
        self.home.chmod(0o755)
        super().__init__(self.home / "repositories", workdir)
        self.rules = rules
        self.user = self.USER
        self.admin_key = workdir / "admin_ed25519"

    def prepare(self, port: int) -> None:
        super().prepare(port)
        if not self.admin_key.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.admin_key],
                 server_env(), None, True, 30.0)  # fmt: skip
        if subprocess.run(["id", self.USER], capture_output=True, check=False).returncode:
            _run(["useradd", "--system", "--shell", "/bin/sh", "--home-dir", "/nonexistent",
                  self.USER], server_env(), None, True, 30.0)  # fmt: skip
            _run(["usermod", "-p", "*", self.USER], server_env(), None, True, 30.0)
        _run(["usermod", "--home", self.home, self.USER], server_env(), None, True, 30.0)
        shutil.copy(self.admin_key.with_suffix(".pub"), self.home / "admin.pub")
        _run(["chown", "-R", self.USER, str(self.home)], server_env(), None, True, 30.0)
        conf = self.home / ".gitolite" / "conf"
        keydir = self.home / ".gitolite" / "keydir"
        self._as_user(["gitolite", "setup", "-pk", str(self.home / "admin.pub")])
        conf.mkdir(parents=True, exist_ok=True)
        keydir.mkdir(parents=True, exist_ok=True)
        (conf / "gitolite.conf").write_text(f"repo gitolite-admin\n    RW+ = admin\n{self.rules}")
        shutil.copy(self.client_key.with_suffix(".pub"), keydir / "node.pub")
        _run(["chown", "-R", self.USER, str(self.home)], server_env(), None, True, 30.0)
        self._as_user(["gitolite", "compile"])
        self._as_user(["gitolite", "trigger", "POST_COMPILE"])

    def _as_user(self, argv: list[str]) -> None:
        env = {**server_env(), "HOME": str(self.home)}
        _run(["runuser", "-u", self.USER, "--", "env", f"HOME={self.home}", *argv], env, None,
             True, 60.0)  # fmt: skip

    def _sshd_config_text(self, port: int) -> str:
        text = super()._sshd_config_text(port)
        keys = self.home / ".ssh" / "authorized_keys"
        ours = f'AuthorizedKeysFile "{self.authorized_keys}"'
        return text.replace(ours, f'AuthorizedKeysFile "{keys}"') + f"AllowUsers {self.USER}\n"

    def url(self, name: str) -> str:
        return f"ssh://{self.USER}@{LOCALHOST}:{self.require_port()}/{name}"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        shutil.rmtree(self.home, ignore_errors=True)


def _find_binary(name: str) -> str:
    """Absolute path of a server binary (sshd refuses to run from a relative one)."""
    path = os.environ.get("PATH", os.defpath) + ":/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise ServerError(f"{name} not found: install it (see .ci/run)")
    return os.path.abspath(found)
