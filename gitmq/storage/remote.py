"""Talking to a remote: list, fetch and atomic push, each with a timeout.

Errors are sorted into the two cases sync must tell apart: a push the remote
*rejected* because someone else pushed first (:class:`PushRejected`: fetch,
re-parent, retry) and everything else (:class:`RemoteError`: keep the messages
local, try next cycle). Credentials come in through the environment only, so
no token ever appears in argv, in ``.git/config`` or in an error message.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import shlex
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gitmq.errors import RemoteError
from gitmq.storage import gitcli
from gitmq.storage.refs import STALE_LOCK_SECONDS

_AUTH_SIGNS = (
    "authentication failed", "could not read username", "terminal prompts disabled",
    "permission denied", "host key verification failed", "invalid username or password",
    "returned error: 401", "returned error: 403",
)  # fmt: skip
_REJECT_SIGNS = (
    "[rejected]", "[remote rejected]", "fetch first", "non-fast-forward", "stale info",
    "cannot lock ref", "failed to update ref", "atomic push failed", "already exists",
)  # fmt: skip


# The reasons git gives for a ref it did not update because the push lost a race
# (or went down with another ref of an atomic push); any other "[remote rejected]"
# reason is the server's own decision: a protected branch, a ruleset, a hook.
_RACE_REASONS = (
    "fetch first", "non-fast-forward", "stale info", "cannot lock ref", "failed to update ref",
    "atomic push fail", "atomic transaction failed", "incorrect old value", "already exists",
)  # fmt: skip


class PushRejected(Exception):
    """The remote refused the push because a ref moved under us; retry after a fetch."""


class PushRefused(Exception):
    """The server refused updates for reasons of its own (protection, ruleset, hook):
    not a race, so retrying at once cannot help. ``refused`` maps each refused ref to
    git's reason; ``said`` is what the server printed (``remote:`` lines)."""

    def __init__(self, refused: dict[str, str], said: str) -> None:
        super().__init__(", ".join(f"{ref} ({why})" for ref, why in refused.items()))
        self.refused, self.said = refused, said


@dataclass(frozen=True)
class Credentials:
    """How to reach one remote: a token (https) and/or ssh settings. Over ssh,
    connections are shared (``ssh_reuse``: one handshake, not one per git call)
    unless the user's ssh config sets its own ``ControlMaster``/``ControlPath``."""

    token: str | None = None
    token_user: str = "x-access-token"
    #: A file holding the token, read before each network call (a sidecar may rotate it).
    token_file: Path | None = None
    #: Or a function giving the current token (a GitHub App installation's).
    token_source: Callable[[], str] | None = field(default=None, compare=False, hash=False)
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    ssh_config: Path | None = None
    timeout: float = 60.0
    ssh_reuse: bool = True

    def current_token(self) -> str | None:
        """The token now: ``token``, what ``token_file`` holds at this moment, or what
        ``token_source`` gives."""
        if self.token_source is not None:
            return self.token_source()
        if self.token_file is None:
            return self.token
        try:
            token = self.token_file.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise RemoteError(
                f"cannot read the token file {self.token_file}: {reason}; the messages stay "
                f"local until it can be read"
            ) from None
        if not token or any(c.isspace() for c in token):
            raise RemoteError(
                f"the token file {self.token_file} holds no token (it is empty or holds more "
                f"than one word); the messages stay local until it does"
            )
        return token

    def env(self, url: str) -> dict[str, str]:
        env: dict[str, str] = {}
        token = self.current_token()
        if token:
            basic = base64.b64encode(f"{self.token_user}:{token}".encode()).decode()
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0=f"http.{_site(url)}extraHeader",
                GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
            )
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(self.timeout)}"]
        if self.ssh_config:
            ssh += ["-F", str(self.ssh_config)]
        if self.ssh_key:
            ssh += ["-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            ssh += ["-o", f"UserKnownHostsFile={self.known_hosts}",
                    "-o", "StrictHostKeyChecking=yes"]  # fmt: skip
        own = bool(self.ssh_config or self.ssh_key or self.known_hosts)
        if not own and "GIT_SSH_COMMAND" in os.environ:  # the user's own ssh command rules
            env["GIT_SSH_COMMAND"] = os.environ["GIT_SSH_COMMAND"]
            return env
        if self.ssh_reuse and _ssh_target(url) and _multiplexing_is_ours(url, self.ssh_config):
            ssh += ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                    "-o", f"ControlPath={_control_dir()}/%C",
                    "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]  # fmt: skip
            own = True
        if own:
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        return env


def _site(url: str) -> str:
    """``https://host[:port]/.`` for an http(s) url, so that the token's header goes to
    the remote's own host only (git matches ``http.<url>.*`` by prefix); else ""."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/."


def host_of(url: str) -> str | None:
    """The host a git url names, lower-cased (``scheme://[user@]host[:port]/...`` or
    scp-like ``[user@]host:path``); None for a local path."""
    if "://" in url:
        try:
            return (urlsplit(url).hostname or "").lower() or None
        except ValueError:
            return None
    target = _ssh_target(url)
    return target[0].rpartition("@")[2].lower() if target else None


def _ssh_target(url: str) -> tuple[str, str | None] | None:
    """(``[user@]host``, port) of an ssh url (``ssh://`` or scp-like), else None."""
    if url.startswith("ssh://"):
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            return None
        if not host:
            return None
        user = f"{parts.username}@" if parts.username else ""
        return user + host, None if port is None else str(port)
    if "://" in url or ":" not in url or url.startswith(("/", ".")):
        return None
    host = url.partition(":")[0]
    return (host, None) if host and "/" not in host else None


@functools.cache
def _multiplexing_is_ours(url: str, ssh_config: Path | None) -> bool:
    """Whether GitMQ may share ssh connections for ``url``: not when the user's ssh
    config already sets ``ControlMaster`` or ``ControlPath`` for that host (``ssh -G``
    prints the settings that apply; asked once per url)."""
    target = _ssh_target(url)
    if target is None:
        return False
    args = ["ssh", "-G"] + (["-F", str(ssh_config)] if ssh_config else [])
    args += (["-p", target[1]] if target[1] else []) + ["--", target[0]]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if out.returncode != 0:
        return False
    settings = dict(line.partition(" ")[::2] for line in out.stdout.splitlines())
    return settings.get("controlmaster", "false") == "false" and (
        settings.get("controlpath", "none") == "none"
    )


@functools.cache
def _control_dir() -> Path:
    """A directory only this user can enter, for ssh's control sockets (short: a socket
    path has at most 104 bytes)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = runtime if runtime and len(runtime) < 40 else "/tmp"
    path = Path(base) / f"gitmq-ssh-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return Path(tempfile.mkdtemp(prefix="gitmq-ssh-", dir="/tmp"))  # not ours: a new one
    return path


@dataclass(frozen=True)
class RefUpdate:
    """Push ``sha`` to ``ref``; ``lease`` is the value the remote must still have
    ("" = must not exist, None = no lease: fast-forward only)."""

    sha: str
    ref: str
    lease: str | None = None
    delete: bool = False


def _network(
    git_dir: Path, args: Sequence[str], url: str, creds: Credentials
) -> tuple[int, str, str]:
    limits = ["-c", "http.lowSpeedLimit=1000", "-c", f"http.lowSpeedTime={int(creds.timeout)}"]
    try:
        proc = gitcli.run(
            git_dir,
            [*limits, *args],
            env=creds.env(url),
            timeout=creds.timeout,
            check=False,
            network=True,
        )
    except RemoteError as exc:
        raise RemoteError(f"remote {url}: {exc.message}") from None
    return (
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


#: What git adds to every transport failure; it says nothing about this one.
_BOILERPLATE = (
    "please make sure you have the correct access rights",
    "and the repository exists.",
    "hint:",
)


def failure(url: str, what: str, stderr: str) -> RemoteError:
    detail = _detail(stderr)
    low = stderr.lower()
    if any(sign in low for sign in _AUTH_SIGNS):
        return RemoteError(
            f"remote {url}: {what} was refused: authentication failed ({detail}); check the "
            f"token variable or the ssh key and known_hosts of this remote"
        )
    return RemoteError(f"remote {url}: {what} failed: {detail}")


def _detail(stderr: str) -> str:
    """What git said went wrong, whole and on one line: the cause an ssh or connection
    error prints before git's ``fatal:`` line, that line, and its continuation (``unable
    to connect to HOST:`` is followed by the errno on the next line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.lower().startswith(_BOILERPLATE)]
    first = next((i for i, ln in enumerate(lines) if ln.startswith(("fatal:", "error:"))), None)
    if first is None:
        return lines[-1] if lines else "no output"
    cause = [ln for ln in lines[:first] if not ln.startswith(("remote:", "To ", "From "))]
    return "; ".join([*cause[-2:], " ".join(lines[first:])])


#: The refs a listing returns besides branches and tags: GitMQ's node refs.
LISTED = ("refs/heads/", "refs/tags/", "refs/gitmq/nodes/")


def ls_remote(git_dir: Path, url: str, creds: Credentials) -> dict[str, str]:
    """Every branch, tag and node ref on the remote with the commit it points at."""
    status, out, err = _network(
        git_dir, ["ls-remote", "--refs", "--end-of-options", url], url, creds
    )
    if status != 0:
        raise failure(url, "listing refs", err)
    refs: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith(LISTED):
            refs[ref] = sha
    return refs


def fetch(
    git_dir: Path,
    url: str,
    refspecs: Sequence[str],
    creds: Credentials,
    known: Sequence[str] = (),
) -> None:
    """Fetch ``refspecs`` (all forced into private tracking refs); never touches tags.

    ``known`` are commits the remote is known to have (the confirmed tips): git
    negotiates from them only. Left to itself it offers every local ref, and a
    node with a large unpushed backlog would spend rounds of negotiation (a
    third of a second for 1,000 unpushed messages) telling the server about
    commits it cannot have."""
    if not refspecs:
        return
    _clear_stale_locks(git_dir, refspecs)
    args = ["fetch", "--no-tags", "--no-write-fetch-head", "--quiet"]
    args += [f"--negotiation-tip={sha}" for sha in known]
    args += ["--end-of-options", url, *refspecs]
    status, _, err = _network(git_dir, args, url, creds)
    if status != 0:
        raise failure(url, "fetch", err)


def _clear_stale_locks(git_dir: Path, refspecs: Sequence[str]) -> None:
    """Remove a ``<ref>.lock`` that a killed ``git fetch`` left on a destination ref.

    git never breaks such a lock, so every later fetch into that ref would fail
    with "cannot lock ref" and the node would stop syncing for good. A lock older
    than the storage's stale limit belongs to a process that is gone.
    """
    now = time.time()
    for spec in refspecs:
        lock = git_dir / (spec.rpartition(":")[2] + ".lock")
        with contextlib.suppress(FileNotFoundError):
            if now - lock.stat().st_mtime > STALE_LOCK_SECONDS:
                lock.unlink()


def push_atomic(git_dir: Path, url: str, updates: Sequence[RefUpdate], creds: Credentials) -> None:
    """Push every update in one atomic push, or raise (PushRejected / RemoteError)."""
    args = ["push", "--atomic", "--porcelain", "--no-verify"]
    specs = []
    for update in updates:
        if update.delete:
            args.append(f"--force-with-lease={update.ref}:{update.lease or ''}")
            specs.append(f":{update.ref}")
        elif update.lease is None:
            specs.append(f"{update.sha}:{update.ref}")
        else:  # no '+': a forced refspec makes git ignore the lease on that ref
            args.append(f"--force-with-lease={update.ref}:{update.lease}")
            specs.append(f"{update.sha}:{update.ref}")
    status, out, err = _network(git_dir, [*args, "--end-of-options", url, *specs], url, creds)
    if status == 0:
        return
    refused = {
        ref: reason
        for ref, kind, reason in _statuses(out)
        if kind == "[remote rejected]" and not any(r in reason for r in _RACE_REASONS)
    }
    if refused:
        raise PushRefused(refused, _server_said(err))
    text = (out + "\n" + err).lower()
    if any(sign in text for sign in _REJECT_SIGNS):
        raise PushRejected(_rejection(out + "\n" + err))
    raise failure(url, "push", err)


def _statuses(porcelain: str) -> list[tuple[str, str, str]]:
    """(destination ref, "[rejected]" or "[remote rejected]", reason) of each ref that
    ``git push --porcelain`` reports as not updated."""
    out = []
    for line in porcelain.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0] != "!":
            continue
        kind, _, reason = parts[2].partition(" (")
        out.append((parts[1].rpartition(":")[2], kind.strip(), reason.rstrip(")")))
    return out


def _server_said(stderr: str) -> str:
    """What the server printed, on one line (``remote: ...``, at most 500 characters)."""
    lines = (ln.strip() for ln in stderr.splitlines())
    said = [ln[7:].strip() for ln in lines if ln.startswith("remote:")]
    said = [s for s in said if s and not s.startswith("error: hook declined to update")]
    return " / ".join(said)[:500]


def _rejection(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("!") or "rejected" in line:
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else "rejected"
