"""The node's YAML config: every shipped file loads, every mistake gives one exact error line."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodes import write_config
from util import fails, gitmq, ok

from gitmq import config
from gitmq.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
SHIPPED = sorted(CONFIG_DIR.rglob("*.yml"))
DEMO_ENV = {"GITMQ_DEMO_DIR": "/srv/demo", "GITMQ_DEMO_REMOTE": "git://127.0.0.1:9418/q.git"}

BASE = """\
node:
  name: n1
storage:
  path: storage.git
remotes:
  origin:
    url: git://127.0.0.1:9/queues.git
queues:
  orders:
    remote: origin
consumers:
  billing:
    queue: orders
    handler:
      command: [/bin/true]
"""


def test_the_config_directory_holds_the_example_and_the_demo() -> None:
    names = [p.relative_to(CONFIG_DIR).as_posix() for p in SHIPPED]
    assert "example.yml" in names
    assert {"demo/node-a.yml", "demo/node-b.yml", "demo/node-c.yml"} <= set(names)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_every_shipped_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    loaded = config.load(path)
    assert loaded.queues and loaded.consumers and loaded.remotes
    # The example's handler programs are illustrations (/usr/local/bin/bill).
    result = ok(gitmq("config", "check", "--skip-handlers", path))
    assert result.out == (
        f"{path}: ok (node {loaded.name}: {len(loaded.queues)} queues, "
        f"{len(loaded.consumers)} consumers, {len(loaded.remotes)} remotes)\n"
    )
    assert result.err == ""


def test_the_demo_configs_take_their_paths_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in DEMO_ENV.items():
        monkeypatch.setenv(name, value)
    loaded = config.load(CONFIG_DIR / "demo" / "node-b.yml")
    assert loaded.storage_path == Path("/srv/demo/node-b.git")
    assert loaded.remotes["central"].url == "git://127.0.0.1:9418/q.git"
    assert loaded.queues["orders"].remote == "central"


def test_the_example_reads_as_documented() -> None:
    loaded = config.load(CONFIG_DIR / "example.yml")
    assert loaded.sync.interval == 5.0 and loaded.sync.jitter == 1.0
    assert loaded.remotes["origin"].timeout == 60.0
    assert loaded.remotes["mirror"].token_env == "GITMQ_MIRROR_TOKEN"
    orders = loaded.queues["orders"]
    assert orders.max_payload == 1024 * 1024
    assert orders.prune is not None and orders.prune.max_age == 7 * 86400
    billing = loaded.consumers["billing"]
    assert billing.handler.command == ("/usr/local/bin/bill", "--currency", "EUR")
    assert billing.handler.timeout == 30.0
    assert billing.retry.initial_delay == 0.1
    assert billing.dead_letter == "orders.dlq"
    assert "orders.dlq" in loaded.synced_queues("origin")


# -- config/example.yml documents every key --------------------------------------------

_COLLECTIONS = {"remotes", "queues", "consumers"}


def _sections(data: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every mapping in the example, named members of collections included."""
    found = [path]
    for key, value in data.items():
        if isinstance(value, dict):
            if not path and key in _COLLECTIONS:
                found += [p for name in value for p in _sections(value[name], (key, name))]
            else:
                found += _sections(value, (*path, key))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            found += [p for i in range(len(value)) for p in _sections(value[i], (*path, key, i))]  # type: ignore[arg-type]
    return found


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _kind(path: tuple[Any, ...]) -> tuple[str, ...]:
    """What sort of section a path is: members of a collection or list are all alike."""
    out = []
    for index, key in enumerate(path):
        named_member = index == 1 and path[0] in _COLLECTIONS
        out.append("*" if named_member or isinstance(key, int) else key)
    return tuple(out)


def test_the_example_documents_every_key_the_loader_accepts(tmp_path: Path) -> None:
    example = yaml.safe_load((CONFIG_DIR / "example.yml").read_text())
    shutil.copytree(CONFIG_DIR / "keys", tmp_path / "keys")  # key_file is relative to the file
    documented: dict[tuple[str, ...], set[str]] = {}
    accepted: dict[tuple[str, ...], set[str]] = {}
    for path in _sections(example):
        documented.setdefault(_kind(path), set()).update(_at(example, path))
        probe = copy.deepcopy(example)
        _at(probe, path)["zz_unknown"] = 1
        with pytest.raises(ConfigError) as caught:
            config.load(write_config(tmp_path / "probe.yml", probe))
        found = re.search(
            r"unknown key 'zz_unknown' \(expected one of: (.*)\)$", caught.value.message
        )
        assert found, caught.value.message
        accepted[_kind(path)] = set(found.group(1).split(", "))
    missing = {kind: sorted(accepted[kind] - documented[kind]) for kind in accepted}
    assert {k: v for k, v in missing.items() if v} == {}


# -- one exact error line per mistake ----------------------------------------------------

BAD = {
    "budget of zero reads": (
        BASE.replace(
            "    url: git://127.0.0.1:9/queues.git\n",
            "    url: git://127.0.0.1:9/queues.git\n    budget: {reads_per_minute: 0}\n",
        ),
        "node.yml: remotes.origin.budget.reads_per_minute: must be more than 0 (leave it out "
        "for no limit)",
    ),
    "budget that is a word": (
        BASE.replace(
            "    url: git://127.0.0.1:9/queues.git\n",
            "    url: git://127.0.0.1:9/queues.git\n    budget: lots\n",
        ),
        "node.yml: remotes.origin.budget: expected a mapping (reads_per_minute, "
        "pushes_per_minute) or 'unlimited', found 'lots'",
    ),
    "budget with a typo": (
        BASE.replace(
            "    url: git://127.0.0.1:9/queues.git\n",
            "    url: git://127.0.0.1:9/queues.git\n    budget: {reads: 10}\n",
        ),
        "node.yml: remotes.origin.budget: unknown key 'reads' (expected one of: "
        "pushes_per_minute, reads_per_minute)",
    ),
    "budget that is no number": (
        BASE.replace(
            "    url: git://127.0.0.1:9/queues.git\n",
            "    url: git://127.0.0.1:9/queues.git\n    budget: {pushes_per_minute: many}\n",
        ),
        "node.yml: remotes.origin.budget.pushes_per_minute: expected a number of requests a "
        "minute (more than 0), found 'many'",
    ),
    "two token sources": (
        BASE.replace(
            "    url: git://127.0.0.1:9/queues.git\n",
            "    url: git://127.0.0.1:9/queues.git\n    token_env: T\n    token_file: t.txt\n",
        ),
        "node.yml: remotes.origin: give one of token_env, token_file or github_app, not two",
    ),
    "github_app without the app": (
        BASE.replace(
            "    url: git://127.0.0.1:9/queues.git\n",
            "    url: git://127.0.0.1:9/queues.git\n    github_app: true\n",
        ),
        "node.yml: remotes.origin.github_app: needs the github.app section (app_id, "
        "private_key_file, installation_id) to mint its tokens",
    ),
    "eager that is no flag": (
        BASE + "sync:\n  eager: sometimes\n",
        "node.yml: sync.eager: expected true or false, found 'sometimes'",
    ),
    "node name with a slash": (
        BASE.replace("  name: n1\n", "  name: team/n1\n"),
        "node.yml: node.name: invalid node name 'team/n1': it contains '/'",
    ),
    "unknown key": (
        BASE.replace("command: [/bin/true]", "comand: [/bin/true]"),
        "node.yml: consumers.billing.handler: unknown key 'comand' "
        "(expected one of: command, python, timeout)",
    ),
    "unknown top-level key": (
        BASE + "queue:\n  orders: {}\n",
        "node.yml: (top level): unknown key 'queue' "
        "(expected one of: consumers, github, node, observability, queues, remotes, storage, sync)",
    ),
    "missing node": (
        BASE.replace("node:\n  name: n1\n", ""),
        "node.yml: node: is required",
    ),
    "missing remote url": (
        BASE.replace("    url: git://127.0.0.1:9/queues.git\n", "    timeout: 10s\n"),
        "node.yml: remotes.origin.url: is required",
    ),
    "missing consumer queue": (
        BASE.replace("    queue: orders\n", ""),
        "node.yml: consumers.billing.queue: is required",
    ),
    "bad duration": (
        BASE + "sync:\n  interval: soon\n",
        "node.yml: sync.interval: expected a duration like 100ms, 10s, 5m, 2h, 7d or 1w, "
        "found 'soon'",
    ),
    "zero interval": (
        BASE + "sync:\n  interval: 0s\n",
        "node.yml: sync.interval: must be more than 0s",
    ),
    "queue names an unknown remote": (
        BASE.replace("remote: origin", "remote: upstream"),
        "node.yml: queues.orders.remote: names remote 'upstream', which is not under "
        "'remotes' (known: origin)",
    ),
    "consumer names an unknown queue": (
        BASE.replace("queue: orders", "queue: invoices"),
        "node.yml: consumers.billing.queue: names queue 'invoices', which is not under "
        "'queues' (known: orders)",
    ),
    "handler with command and python": (
        BASE.replace("command: [/bin/true]", "command: [/bin/true]\n      python: app:handle"),
        "node.yml: consumers.billing.handler: needs exactly one of 'command' (a list: "
        "program and arguments) or 'python' ('package.module:function')",
    ),
    "handler with neither": (
        BASE.replace("command: [/bin/true]", "timeout: 5s"),
        "node.yml: consumers.billing.handler: needs exactly one of 'command' (a list: "
        "program and arguments) or 'python' ('package.module:function')",
    ),
    "handler command as a shell string": (
        BASE.replace("command: [/bin/true]", "command: /bin/true --x"),
        "node.yml: consumers.billing.handler.command: expected a list of strings such as "
        "[/usr/bin/handler, --flag] (no shell is used), found '/bin/true --x'",
    ),
    "token in the file": (
        BASE.replace(
            "url: git://127.0.0.1:9/queues.git",
            "url: https://git.example.com/q.git\n    token: ghp_0123456789abcdef",
        ),
        "node.yml: remotes.origin: secrets never go in the config file: put the token in an "
        "environment variable and name it with token_env",
    ),
    "token in the url": (
        BASE.replace(
            "url: git://127.0.0.1:9/queues.git",
            "url: https://x-access-token:ghp_0123456789abcdef@git.example.com/q.git",
        ),
        "node.yml: remotes.origin.url: secrets never go in the config file: put the token in an "
        "environment variable and name it with token_env",
    ),
    "invalid queue name": (
        BASE.replace("  orders:\n    remote", "  a..b:\n    remote").replace(
            "queue: orders", "queue: a..b"
        ),
        "node.yml: queues.a..b: invalid queue name 'a..b': it contains '..' or '@{'",
    ),
    "invalid consumer name": (
        BASE.replace("  billing:", "  bill ing:"),
        "node.yml: consumers.bill ing: invalid consumer name 'bill ing': it contains a space, "
        "a control character or one of ~ ^ : ? * [ \\",
    ),
    "unset variable": (
        BASE.replace("path: storage.git", "path: ${GITMQ_TEST_UNSET}/storage.git"),
        "node.yml: storage.path: uses ${GITMQ_TEST_UNSET}, which is not set in the environment",
    ),
    "invalid yaml": (
        BASE.replace("  name: n1\n", "  name: n1\n    colour: red\n"),
        "node.yml: line 3 column 11: not valid YAML: mapping values are not allowed here",
    ),
    "url read as an option": (
        BASE.replace("git://127.0.0.1:9/queues.git", "'--upload-pack=touch /tmp/pwned'"),
        "node.yml: remotes.origin.url: '--upload-pack=touch /tmp/pwned' starts with '-', which "
        "git would read as an option; use https://, http://, ssh://, git://, file://, host:path "
        "or a local path",
    ),
    "url with a command transport": (
        BASE.replace("git://127.0.0.1:9/queues.git", "'ext::sh -c touch% /tmp/pwned'"),
        "node.yml: remotes.origin.url: 'ext::sh -c touch% /tmp/pwned' uses git's 'ext::' "
        "transport, which runs commands; use https://, http://, ssh://, git://, file://, "
        "host:path or a local path",
    ),
    "url with an unknown scheme": (
        BASE.replace("git://127.0.0.1:9/queues.git", "gopher://example.com/q.git"),
        "node.yml: remotes.origin.url: 'gopher://example.com/q.git' uses the transport "
        "'gopher', which GitMQ does not accept; use https://, http://, ssh://, git://, "
        "file://, host:path or a local path",
    ),
    "zero remote timeout": (
        BASE.replace("url: git://127.0.0.1:9/queues.git", "url: x:q.git\n    timeout: 0"),
        "node.yml: remotes.origin.timeout: must be more than 0 (the default is 60s)",
    ),
    "a consumer given twice": (
        BASE + "  billing:\n    queue: orders\n    handler:\n      command: [/bin/false]\n",
        "node.yml: line 16 column 3: not valid YAML: the key 'billing' is given twice (first "
        "on line 12); keep one of them",
    ),
    "handler program missing": (
        BASE.replace("command: [/bin/true]", "command: [/nonexistent/handler, -v]"),
        "node.yml: consumers.billing.handler.command: handler command '/nonexistent/handler' "
        "is not an executable file; install it or fix the name (nothing was consumed)",
    ),
    "handler program not on PATH": (
        BASE.replace("command: [/bin/true]", "command: [no-such-handler-program]"),
        "node.yml: consumers.billing.handler.command: handler command "
        "'no-such-handler-program' is not an executable file on PATH; install it or fix the "
        "name (nothing was consumed)",
    ),
    "python handler module missing": (
        BASE.replace("command: [/bin/true]", "python: no_such_module_xyz:run"),
        "node.yml: consumers.billing.handler.python: python handler 'no_such_module_xyz:run': "
        "cannot import 'no_such_module_xyz': No module named 'no_such_module_xyz'",
    ),
    "python handler function missing": (
        BASE.replace("command: [/bin/true]", "python: gitmq.demo:no_such_function"),
        "node.yml: consumers.billing.handler.python: python handler "
        "'gitmq.demo:no_such_function': gitmq.demo has no function 'no_such_function'",
    ),
    "not a mapping": (
        BASE.replace("  origin:\n    url: git://127.0.0.1:9/queues.git\n", "  - origin\n"),
        "node.yml: remotes: expected a mapping, found list",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_config_gives_one_exact_error_line(case: str, tmp_path: Path) -> None:
    text, error = BAD[case]
    (tmp_path / "node.yml").write_text(text)
    fails(gitmq("config", "check", "node.yml", cwd=tmp_path), 5, error)


def test_a_config_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "node.yml").write_bytes(BASE.replace("n1", "n\xe9").encode("latin-1"))
    fails(
        gitmq("config", "check", "node.yml", cwd=tmp_path),
        5,
        "config file node.yml is not UTF-8 text (byte 15 is 0xe9); save it as UTF-8",
    )


def test_config_check_can_leave_the_handlers_to_the_node(tmp_path: Path) -> None:
    text, error = BAD["handler program missing"]
    (tmp_path / "node.yml").write_text(text)
    assert ok(gitmq("config", "check", "--skip-handlers", "node.yml", cwd=tmp_path)).out
    fails(gitmq("node", "--config", "node.yml", "--once", cwd=tmp_path), 5, error)
    assert not (tmp_path / "storage.git").exists()  # refused before anything was made


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    fails(
        gitmq("config", "check", "missing.yml", cwd=tmp_path),
        5,
        "config file missing.yml does not exist",
    )


def test_the_node_refuses_a_bad_config_with_the_same_line(tmp_path: Path) -> None:
    text, error = BAD["consumer names an unknown queue"]
    (tmp_path / "node.yml").write_text(text)
    fails(gitmq("node", "--config", "node.yml", "--once", cwd=tmp_path), 5, error)
    assert not (tmp_path / "storage.git").exists()


def test_the_python_api_raises_the_same_message(tmp_path: Path) -> None:
    text, error = BAD["bad duration"]
    path = tmp_path / "node.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.message == error.replace("node.yml", str(path), 1)
    assert caught.value.exit_code == 5


def test_variables_are_expanded_and_paths_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITMQ_TEST_HOST", "git.example.com")
    text = BASE.replace("git://127.0.0.1:9/queues.git", "https://${GITMQ_TEST_HOST}/q.git").replace(
        "command: [/bin/true]", "command: [/bin/echo, 'costs $$5']"
    )
    path = write_config(tmp_path / "etc" / "node.yml", yaml.safe_load(text))
    loaded = config.load(path)
    assert loaded.remotes["origin"].url == "https://git.example.com/q.git"
    assert loaded.consumers["billing"].handler.command == ("/bin/echo", "costs $5")
    assert loaded.storage_path == tmp_path / "etc" / "storage.git"
    assert loaded.identity.name == "n1"


@pytest.mark.parametrize(
    "url",
    [
        "git@github.com:acme/queues.git",
        "ssh://git@github.com/acme/queues.git",
        "ssh://git@[::1]:2222/srv/queues.git",
        "https://github.com/acme/queues.git",
        "http://127.0.0.1:8080/q.git",
        "git://127.0.0.1:9418/q.git",
        "file:///srv/git/q.git",
        "/srv/git/q.git",
        "../central.git",
        "/srv/odd::name/q.git",
    ],
)
def test_every_kind_of_git_url_a_node_uses_is_accepted(url: str, tmp_path: Path) -> None:
    (tmp_path / "node.yml").write_text(BASE.replace("git://127.0.0.1:9/queues.git", f"'{url}'"))
    assert config.load(tmp_path / "node.yml").remotes["origin"].url == url
