"""The node's YAML configuration, validated once at load into frozen records.

Errors name the file, the key path, what was expected and what was found, e.g.
``node.yml: queues.orders.prune.max_age: expected a duration like 10s, 5m or
7d, found 'soon'``. Unknown keys are errors too: a typo must not silently
turn a feature off. The rest of GitMQ never sees a raw dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gitmq import names
from gitmq.budget import Budget, default_budget
from gitmq.config_schema import NODE
from gitmq.config_section import Section
from gitmq.deadletter import dead_letter_queue
from gitmq.errors import ConfigError, GitMQError, InvalidNameError
from gitmq.handlers import check_program, python_handler
from gitmq.message import Identity
from gitmq.producer import DEFAULT_MAX_PAYLOAD
from gitmq.retry import RetryPolicy
from gitmq.segments import RotationPolicy
from gitmq.units import parse_duration


@dataclass(frozen=True)
class RemoteConfig:
    name: str
    url: str
    token_env: str | None = None
    token_file: Path | None = None
    token_user: str = "x-access-token"
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    ssh_config: Path | None = None
    timeout: float = 60.0
    budget: Budget = field(default_factory=Budget)
    ssh_reuse: bool = True
    github_app: bool = False  # https with tokens of the config's github.app installation


@dataclass(frozen=True)
class PrunePolicy:
    max_age: float | None = None
    max_messages: int | None = None
    keep_unconsumed: bool = True
    every: float | None = None  # interval schedule, seconds
    cron: str | None = None  # or a crontab expression


@dataclass(frozen=True)
class QueueConfig:
    name: str
    remote: str | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD
    prune: PrunePolicy | None = None
    rotate: RotationPolicy | None = None


@dataclass(frozen=True)
class HandlerConfig:
    command: tuple[str, ...] | None = None
    python: str | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class ConsumerConfig:
    name: str
    queue: str
    handler: HandlerConfig
    retry: RetryPolicy
    dead_letter: str


@dataclass(frozen=True)
class SyncConfig:
    interval: float = 5.0
    jitter: float = 0.0
    max_push_attempts: int = 5
    poll: float | None = None  # fetch-only cycles in between: lower latency, no more pushes
    eager: bool | None = None  # sync on a local publish; None: for remotes with a budget


@dataclass(frozen=True)
class DeployKeyConfig:
    title: str
    key: str


@dataclass(frozen=True)
class GithubAppConfig:
    """A GitHub App installation: tokens minted from the app's private key."""

    app_id: int
    private_key_file: Path
    installation_id: int


@dataclass(frozen=True)
class GithubConfig:
    repository: str
    private: bool = True
    base_url: str = "https://api.github.com"
    deploy_keys: tuple[DeployKeyConfig, ...] = ()
    app: GithubAppConfig | None = None


@dataclass(frozen=True)
class ObservabilityConfig:
    """Where the node serves /metrics, /healthz and /readyz (``observability.listen``)."""

    host: str
    port: int


@dataclass(frozen=True)
class NodeConfig:
    file: Path
    name: str
    identity: Identity
    storage_path: Path
    fsync: bool
    sync: SyncConfig
    remotes: dict[str, RemoteConfig] = field(default_factory=dict)
    queues: dict[str, QueueConfig] = field(default_factory=dict)
    consumers: dict[str, ConsumerConfig] = field(default_factory=dict)
    github: GithubConfig | None = None
    observability: ObservabilityConfig | None = None

    def synced_queues(self, remote: str) -> list[str]:
        """Queues that sync with ``remote``: configured ones and their dead-letter queues."""
        out = [q.name for q in self.queues.values() if q.remote == remote]
        for consumer in self.consumers.values():
            if consumer.queue in out and consumer.dead_letter not in out:
                out.append(consumer.dead_letter)
        return out


def load(path: str | Path) -> NodeConfig:
    """Read and validate the node config at ``path``."""
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {file} is not UTF-8 text (byte {exc.start} is 0x{_byte(exc)}); "
            f"save it as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{file}:{where}: not valid YAML: {problem}") from None
    return _node(Section(file, "", data, NODE), file.parent.absolute())


def _byte(exc: UnicodeDecodeError) -> str:
    return f"{exc.object[exc.start]:02x}"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in a mapping is an error
    (plain YAML keeps the last: a second consumer of the same name would silently
    replace the first)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"the key {key!r} is given twice (first on line {seen[key] + 1}); keep one of them",
                key_node.start_mark,
            )
        if isinstance(key, Hashable):
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _node(top: Section, base: Path) -> NodeConfig:
    node = top.section("node")
    assert node is not None
    name = node.text("name")
    try:
        names.check_node(name)
    except InvalidNameError as exc:
        raise node.error("name", str(exc)) from None
    ident = node.section("identity")
    identity = _identity(ident, name)
    node.done()
    storage = top.section("storage")
    assert storage is not None
    storage_path = storage.path_value("path", base)
    assert storage_path is not None
    fsync = storage.flag("fsync")
    storage.done()
    remotes = {n: _remote(n, s, base) for n, s in top.children("remotes")}
    queues = {n: _queue(n, s, remotes) for n, s in top.children("queues")}
    consumers = {n: _consumer(n, s, queues) for n, s in top.children("consumers")}
    sync = _sync(top.section("sync"))
    github = _github(top.section("github"), base)
    observability = _observability(top.section("observability"))
    for remote_name, remote in remotes.items():
        if remote.github_app and (github is None or github.app is None):
            raise ConfigError(
                f"{top.file}: remotes.{remote_name}.github_app: needs the github.app section "
                f"(app_id, private_key_file, installation_id) to mint its tokens"
            )
    top.done()
    _check_collisions(top, queues, consumers)
    return NodeConfig(
        top.file,
        name,
        identity,
        storage_path,
        fsync,
        sync,
        remotes,
        queues,
        consumers,
        github,
        observability,
    )


def _observability(sec: Section | None) -> ObservabilityConfig | None:
    if sec is None:
        return None
    listen = sec.text("listen")
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:9464
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        sec.fail("listen", "HOST:PORT like 127.0.0.1:9464", listen)
    sec.done()
    return ObservabilityConfig(host, int(port))


def _identity(sec: Section | None, node_name: str) -> Identity:
    if sec is None:
        return Identity(node_name, f"{node_name}@gitmq.invalid")
    name = sec.text("name", node_name)
    email = sec.text("email", f"{node_name}@gitmq.invalid")
    sec.done()
    try:
        return Identity(name, email)
    except GitMQError as exc:
        raise sec.error(None, exc.message) from None


def _remote(name: str, sec: Section, base: Path) -> RemoteConfig:
    _check_name(sec, name, "remote")
    remote = RemoteConfig(
        name=name,
        url=sec.text("url"),
        token_env=sec.text("token_env"),
        token_file=sec.path_value("token_file", base),
        token_user=sec.text("token_user"),
        ssh_key=sec.path_value("ssh_key", base),
        known_hosts=sec.path_value("known_hosts", base),
        ssh_config=sec.path_value("ssh_config", base),
        timeout=sec.duration("timeout"),
        ssh_reuse=sec.flag("ssh_reuse"),
        github_app=sec.flag("github_app"),
    )
    remote = dataclasses.replace(remote, budget=_budget(sec, remote.url))
    secret = (
        "secrets never go in the config file: put the token in an "
        "environment variable and name it with token_env"
    )
    if "token" in sec.data or "password" in sec.data:
        raise sec.error(None, secret)
    if _has_password(remote.url):
        raise sec.error("url", secret)  # never echo the url: it holds the secret
    problem = _url_problem(remote.url)
    if problem:
        raise sec.error(
            "url",
            f"{remote.url!r} {problem}; use https://, http://, ssh://, git://, file://, "
            f"host:path or a local path",
        )
    if remote.timeout <= 0:
        raise sec.error("timeout", "must be more than 0 (the default is 60s)")
    if sum(map(bool, (remote.token_env, remote.token_file, remote.github_app))) > 1:
        raise sec.error(None, "give one of token_env, token_file or github_app, not two")
    sec.done()
    return remote


def _budget(sec: Section, url: str) -> Budget:
    """``budget: {reads_per_minute: N, pushes_per_minute: M}`` or ``budget: unlimited``;
    unset: GitHub's default for a github.com remote, else none."""
    value = sec.get("budget")
    if value is None:
        return default_budget(url)
    if value == "unlimited":
        return Budget()
    if not isinstance(value, dict):
        sec.fail("budget", "a mapping (reads_per_minute, pushes_per_minute) or 'unlimited'", value)
    budget = sec.section("budget")
    assert budget is not None
    default = default_budget(url)
    rates = []
    for key, fallback in (
        ("reads_per_minute", default.reads_per_minute),
        ("pushes_per_minute", default.pushes_per_minute),
    ):
        rate = budget.get(key, fallback)
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
            budget.fail(key, "a number of requests a minute (more than 0)", rate)
        if rate is not None and rate <= 0:
            raise budget.error(key, "must be more than 0 (leave it out for no limit)")
        rates.append(None if rate is None else float(rate))
    budget.done()
    return Budget(rates[0], rates[1])


_URL_SCHEMES = ("https", "http", "ssh", "git", "file")


def _url_problem(url: str) -> str | None:
    """Why git must not be given ``url``, or None. Refused: what git would read as an
    option, and transports that run commands (``ext::``) or name descriptors."""
    if url.startswith("-"):
        return "starts with '-', which git would read as an option"
    if any(c in url for c in "\n\r\x00"):
        return "contains a control character"
    scheme, sep, _ = url.partition("://")
    if sep:
        if scheme.lower() not in _URL_SCHEMES:
            return f"uses the transport {scheme!r}, which GitMQ does not accept"
        return None
    transport, sep, _ = url.partition("::")
    if sep and "/" not in transport:
        return f"uses git's {transport + '::'!r} transport, which runs commands"
    return None


def _has_password(url: str) -> bool:
    """``https://user:TOKEN@host/...``: a secret written into the url itself."""
    try:
        return "://" in url and urlsplit(url).password is not None
    except ValueError:  # not a url urllib can split; git will say what is wrong with it
        return False


def _queue(name: str, sec: Section, remotes: dict[str, RemoteConfig]) -> QueueConfig:
    _check_name(sec, name, "queue")
    remote = sec.text("remote")
    if remote is not None and remote not in remotes:
        raise sec.error(
            "remote",
            f"names remote {remote!r}, which is not under 'remotes' "
            f"(known: {', '.join(sorted(remotes)) or 'none'})",
        )
    queue = QueueConfig(
        name=name,
        remote=remote,
        max_payload=sec.size("max_payload"),
        prune=_prune(sec.section("prune")),
        rotate=_rotate(sec.section("rotate")),
    )
    sec.done()
    return queue


def _prune(sec: Section | None) -> PrunePolicy | None:
    if sec is None:
        return None
    schedule = sec.get("schedule")
    every, cron = None, None
    if isinstance(schedule, str) and len(schedule.split()) == 5:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(schedule)
        except ValueError as exc:
            sec.fail("schedule", f"a valid cron expression ({exc})", schedule)
        cron = schedule
    else:
        try:
            every = parse_duration(str(schedule))
        except ValueError:
            sec.fail(
                "schedule", "an interval like 1h or a cron expression like '0 3 * * *'", schedule
            )
    policy = PrunePolicy(
        max_age=sec.duration("max_age"),
        max_messages=sec.number("max_messages"),
        keep_unconsumed=sec.flag("keep_unconsumed"),
        every=every,
        cron=cron,
    )
    sec.done()
    if policy.max_age is None and policy.max_messages is None:
        raise sec.error(None, "needs max_age, max_messages or both")
    return policy


def _rotate(sec: Section | None) -> RotationPolicy | None:
    if sec is None:
        return None
    policy = RotationPolicy(
        max_messages=sec.number("max_messages"),
        max_age=sec.duration("max_age"),
        keep_segments=sec.number("keep_segments"),
    )
    sec.done()
    if policy.max_age is None and policy.max_messages is None:
        raise sec.error(None, "needs max_messages, max_age or both")
    return policy


def _consumer(name: str, sec: Section, queues: dict[str, QueueConfig]) -> ConsumerConfig:
    _check_name(sec, name, "consumer")
    queue = sec.text("queue")
    if queue not in queues:
        raise sec.error(
            "queue",
            f"names queue {queue!r}, which is not under 'queues' "
            f"(known: {', '.join(sorted(queues)) or 'none'})",
        )
    handler = sec.section("handler")
    assert handler is not None
    dead_letter = sec.text("dead_letter", dead_letter_queue(queue))
    try:
        names.check_queue(dead_letter)
    except GitMQError as exc:
        raise sec.error("dead_letter", exc.message) from None
    consumer = ConsumerConfig(
        name, queue, _handler(handler), _retry(sec.section("retry")), dead_letter
    )
    sec.done()
    return consumer


def check_handlers(config: NodeConfig) -> None:
    """Refuse a consumer whose handler cannot run (a program that is not there, a
    Python function that does not import), and a GitHub App key that is not one: at
    ``gitmq node`` start and in ``config check``, never as a queue's worth of dead
    letters or a failed cycle."""
    for consumer in config.consumers.values():
        handler = consumer.handler
        key = "command" if handler.command else "python"
        try:
            if handler.command:
                check_program(handler.command[0])
            else:
                assert handler.python is not None
                python_handler(handler.python)
        except GitMQError as exc:
            raise ConfigError(
                f"{config.file}: consumers.{consumer.name}.handler.{key}: {exc.message}"
            ) from None
    app = config.github.app if config.github else None
    if app is not None:  # installed beside the handlers, so checked with them
        problem = _pem_problem(app.private_key_file)
        if problem:
            raise ConfigError(f"{config.file}: github.app.private_key_file: {problem}")


def _pem_problem(path: Path) -> str | None:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not text"
        return f"cannot read {path}: {reason}"
    if "PRIVATE KEY-----" not in text:
        return f"{path} is not a PEM private key (download one from the app's settings)"
    return None


def _handler(sec: Section) -> HandlerConfig:
    command = sec.get("command")
    python = sec.text("python")
    timeout = sec.duration("timeout")
    sec.done()
    if (command is None) == (python is None):
        raise sec.error(
            None,
            "needs exactly one of 'command' (a list: program and arguments) "
            "or 'python' ('package.module:function')",
        )
    if command is not None:
        if (
            isinstance(command, str)
            or not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) and a for a in command)
        ):
            sec.fail(
                "command",
                "a list of strings such as [/usr/bin/handler, --flag] (no shell is used)",
                command,
            )
        return HandlerConfig(command=tuple(command), timeout=timeout)
    if ":" not in python:
        sec.fail("python", "'package.module:function'", python)
    return HandlerConfig(python=python, timeout=timeout)


def _retry(sec: Section | None) -> RetryPolicy:
    if sec is None:
        return RetryPolicy()
    values = (sec.number("max_attempts"), sec.duration("initial_delay"), sec.duration("max_delay"))
    try:  # read first: a ConfigError of a value must not be wrapped in another
        policy = RetryPolicy(*values)
    except GitMQError as exc:
        raise sec.error(None, exc.message) from None
    sec.done()
    return policy


def _sync(sec: Section | None) -> SyncConfig:
    if sec is None:
        return SyncConfig()
    config = SyncConfig(
        interval=sec.duration("interval"),
        jitter=sec.duration("jitter"),
        max_push_attempts=sec.number("max_push_attempts"),
        poll=sec.duration("poll"),
        eager=sec.flag("eager"),
    )
    sec.done()
    if config.interval <= 0:
        raise sec.error("interval", "must be more than 0s")
    if config.poll is not None and not 0 < config.poll < config.interval:
        raise sec.error("poll", "must be more than 0s and less than sync.interval")
    return config


def _github(sec: Section | None, base: Path) -> GithubConfig | None:
    if sec is None:
        return None
    repository = sec.text("repository")
    if repository.count("/") != 1 or repository.startswith("/") or repository.endswith("/"):
        sec.fail("repository", "'owner/name'", repository)
    keys = [_deploy_key(item, base) for item in sec.items("deploy_keys")]
    config = GithubConfig(
        repository=repository,
        private=sec.flag("private"),
        base_url=sec.text("base_url"),
        deploy_keys=tuple(keys),
        app=_github_app(sec.section("app"), base),
    )
    sec.done()
    return config


def _github_app(sec: Section | None, base: Path) -> GithubAppConfig | None:
    """``github.app: {app_id, private_key_file, installation_id}``."""
    if sec is None:
        return None
    app_id = sec.number("app_id")
    installation_id = sec.number("installation_id")
    key_file = sec.path_value("private_key_file", base)
    assert key_file is not None
    sec.done()
    return GithubAppConfig(app_id, key_file, installation_id)


def _deploy_key(sec: Section, base: Path) -> DeployKeyConfig:
    title = sec.text("title")
    key = sec.text("key")
    key_file = sec.path_value("key_file", base)
    sec.done()
    if (key is None) == (key_file is None):
        raise sec.error(None, "needs exactly one of 'key' (the public key text) or 'key_file'")
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise sec.error("key_file", f"cannot read {key_file}: {exc.strerror}") from None
    if len(key.split()) < 2:
        sec.fail(None, "'key: \"ssh-ed25519 AAAA... comment\"' or 'key_file: FILE.pub'", key)
    return DeployKeyConfig(title, key)


def _check_name(sec: Section, name: str, what: str) -> None:
    try:
        if what == "consumer":
            names.check_consumer(name)
        else:
            names.check_queue(name)
    except GitMQError as exc:
        raise sec.error(None, exc.message.replace("queue name", f"{what} name")) from None


def _check_collisions(
    top: Section, queues: dict[str, QueueConfig], consumers: dict[str, ConsumerConfig]
) -> None:
    for consumer in consumers.values():
        if consumer.dead_letter == consumer.queue:
            raise top.error(
                f"consumers.{consumer.name}.dead_letter", "must differ from the queue it consumes"
            )
