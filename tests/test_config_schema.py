"""The published JSON Schema and key reference: current, and agreeing with the loader.

The loader and the schema come from one table (gitmq/config_schema.py); these
tests check that the checked-in renderings are what the table gives today, that
every shipped config passes the schema, and that loader and schema accept and
refuse the same files wherever the question is one of structure (a missing
queue or an unset variable is the loader's alone).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from nodes import write_config
from test_config import BAD, BASE, CONFIG_DIR, DEMO_ENV, SHIPPED

from gitmq import config, config_schema
from gitmq.config import RemoteConfig, SyncConfig
from gitmq.errors import ConfigError
from gitmq.retry import RetryPolicy

ROOT = CONFIG_DIR.parent
SCHEMA_FILE = CONFIG_DIR / "gitmq-node.schema.json"
VALIDATOR = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))


def schema_errors(data: object) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(data)
    ]


def loader_error(text: str, directory: Path) -> str | None:
    """The loader's error for a config file holding ``text``, or None if it loads."""
    path = directory / "node.yml"
    path.write_text(text)
    try:
        config.load(path)
    except ConfigError as exc:
        return exc.message.replace(str(path), "node.yml", 1)
    return None


# -- the checked-in files are what the table gives --------------------------------------


def test_the_checked_in_schema_is_the_generated_one() -> None:
    generated = json.dumps(config_schema.json_schema(), indent=2) + "\n"
    assert SCHEMA_FILE.read_text() == generated, (
        "config/gitmq-node.schema.json is stale: run "
        "python -m gitmq.config_schema > config/gitmq-node.schema.json"
    )


def test_the_checked_in_key_reference_is_the_generated_one() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == config_schema.markdown(), (
        "docs/config.md is stale: run python -m gitmq.config_schema --markdown > docs/config.md"
    )


def test_the_schema_is_a_valid_draft_07_schema_with_an_id() -> None:
    schema = config_schema.json_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["$id"] == config_schema.SCHEMA_ID
    assert schema["additionalProperties"] is False


def test_the_module_prints_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_schema.main([]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text()
    assert config_schema.main(["--markdown"]) == 0
    assert capsys.readouterr().out == (ROOT / "docs" / "config.md").read_text()
    assert config_schema.main(["--yaml"]) == 2
    assert capsys.readouterr().err == "usage: python -m gitmq.config_schema [--markdown]\n"


# -- every shipped config passes, and names the schema for editors -----------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_every_shipped_config_passes_the_schema(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    # example.yml names the schema for editors; a demo config may (gitmq/demo_config holds
    # byte-for-byte copies of them: a first line added here must be copied there too).
    if path.name == "example.yml" or "$schema=" in first:
        assert first.startswith("# yaml-language-server: $schema=")
        assert (path.parent / first.split("$schema=", 1)[1]).resolve() == SCHEMA_FILE
    assert schema_errors(yaml.safe_load(path.read_text())) == []


def test_the_table_defaults_are_the_records_defaults(tmp_path: Path) -> None:
    """Defaults live in the table; the records' own defaults (used when a whole section
    is left out) must say the same."""
    data = yaml.safe_load(BASE) | {"sync": {}}
    data["consumers"]["billing"]["retry"] = {}
    loaded = config.load(write_config(tmp_path / "node.yml", data))
    assert loaded.sync == SyncConfig()
    assert loaded.consumers["billing"].retry == RetryPolicy()
    origin = loaded.remotes["origin"]
    assert origin == RemoteConfig("origin", origin.url, budget=origin.budget)


# -- loader and schema refuse and accept the same files ----------------------------------

SHARED_BAD = [
    "unknown key",
    "unknown top-level key",
    "missing node",
    "missing remote url",
    "missing consumer queue",
    "bad duration",
    "eager that is no flag",
    "handler command as a shell string",
    "budget that is a word",
    "budget with a typo",
    "budget that is no number",
    "budget of zero reads",
    "not a mapping",
]

MORE_BAD = {
    "a size that is a word": (
        BASE.replace("    remote: origin\n", "    remote: origin\n    max_payload: big\n"),
        "node.yml: queues.orders.max_payload: expected a size like 1048576, 512KiB or 1MiB, "
        "found 'big'",
    ),
    "no messages kept": (
        BASE.replace("    remote: origin\n", "    remote: origin\n    prune: {max_messages: 0}\n"),
        "node.yml: queues.orders.prune.max_messages: expected a whole number >= 1, found 0",
    ),
    "a schedule that is neither": (
        BASE.replace(
            "remote: origin\n", "remote: origin\n    prune: {max_age: 7d, schedule: often}\n"
        ),
        "node.yml: queues.orders.prune.schedule: expected an interval like 1h or a cron "
        "expression like '0 3 * * *', found 'often'",
    ),
    "a listen address without a port": (
        BASE + "observability: {listen: localhost}\n",
        "node.yml: observability.listen: expected HOST:PORT like 127.0.0.1:9464, found "
        "'localhost'",
    ),
    "a repository without an owner": (
        BASE + "github: {repository: queues}\n",
        "node.yml: github.repository: expected 'owner/name', found 'queues'",
    ),
    "a deploy key list that is a mapping": (
        BASE + "github:\n  repository: acme/queues\n  deploy_keys: {title: a}\n",
        "node.yml: github.deploy_keys: expected a list, found dict",
    ),
    "an app without its id": (
        BASE + "github:\n  repository: acme/q\n  app: {installation_id: 1, private_key_file: k}\n",
        "node.yml: github.app.app_id: is required",
    ),
    "retries that are a flag": (
        BASE + "    retry: {max_attempts: true}\n",
        "node.yml: consumers.billing.retry.max_attempts: expected a whole number >= 1, found True",
    ),
    "an empty token user": (
        BASE.replace("queues.git\n", "queues.git\n    token_user: ''\n"),
        "node.yml: remotes.origin.token_user: expected a non-empty string, found ''",
    ),
}  # fmt: skip

BOTH_BAD = {**{case: BAD[case] for case in SHARED_BAD}, **MORE_BAD}


@pytest.mark.parametrize("case", sorted(BOTH_BAD))
def test_the_loader_and_the_schema_both_refuse(case: str, tmp_path: Path) -> None:
    text, error = BOTH_BAD[case]
    assert loader_error(text, tmp_path) == error
    assert schema_errors(yaml.safe_load(text)) != []


GOOD = {
    "the base": BASE,
    "no budget": BASE.replace("9/queues.git\n", "9/queues.git\n    budget: unlimited\n"),
    "numbers for durations and sizes": BASE.replace(
        "    remote: origin\n",
        "    remote: origin\n    max_payload: 4096\n    prune: {max_age: 86400, max_messages: 9}\n",
    )
    + "sync: {interval: 2.5, jitter: 0}\n",
    "a cron schedule and rotation": BASE.replace(
        "    remote: origin\n",
        "    remote: origin\n    prune: {max_age: 7d, schedule: '0 3 * * *'}\n"
        "    rotate: {max_messages: 10, keep_segments: 0}\n",
    ),
    "a variable in a duration": BASE.replace(
        "9/queues.git\n", "9/queues.git\n    timeout: ${GITMQ_TEST_TIMEOUT}\n"
    ),
    "an IPv6 listen address": BASE + "observability: {listen: '[::1]:9464'}\n",
    "github with an app and a deploy key": BASE
    + "github:\n  repository: acme/q\n  deploy_keys: [{title: a, key: ssh-ed25519 AAAA a}]\n"
    "  app: {app_id: 1, installation_id: 2, private_key_file: app.pem}\n",
    "a python handler with retries": BASE.replace(
        "      command: [/bin/true]\n",
        "      python: gitmq.demo:show\n      timeout: 1m\n"
        "    retry: {max_attempts: 1, initial_delay: 0s, max_delay: 1h}\n"
        "    dead_letter: orders.failed\n",
    ),
}


@pytest.mark.parametrize("case", sorted(GOOD))
def test_the_loader_and_the_schema_both_accept(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITMQ_TEST_TIMEOUT", "90s")
    assert loader_error(GOOD[case], tmp_path) is None
    assert schema_errors(yaml.safe_load(GOOD[case])) == []


# -- a property: for keys whose checks are structural, loader accepts iff schema does -----

LEAVES = [
    ("storage", "fsync"),
    ("remotes", "origin", "token_user"),
    ("remotes", "origin", "ssh_key"),
    ("remotes", "origin", "ssh_reuse"),
    ("remotes", "origin", "budget", "reads_per_minute"),
    ("remotes", "origin", "budget", "pushes_per_minute"),
    ("queues", "orders", "max_payload"),
    ("queues", "orders", "prune", "max_age"),
    ("queues", "orders", "prune", "max_messages"),
    ("queues", "orders", "prune", "keep_unconsumed"),
    ("queues", "orders", "rotate", "max_messages"),
    ("queues", "orders", "rotate", "keep_segments"),
    ("consumers", "billing", "handler", "timeout"),
    ("consumers", "billing", "retry", "max_attempts"),
    ("sync", "jitter"),
    ("sync", "max_push_attempts"),
    ("sync", "eager"),
]
FULL = yaml.safe_load(BASE) | {"sync": {"interval": "1m"}}
FULL["remotes"]["origin"]["budget"] = {"reads_per_minute": 10}
FULL["queues"]["orders"] |= {
    "prune": {"max_age": "1d", "max_messages": 5},
    "rotate": {"max_age": "1d", "max_messages": 5},
}
FULL["consumers"]["billing"]["retry"] = {}

WORDS = ["10s", "1.5h", " 5m ", "100ms", "7d", "1w", "0s", "3x", "-1s", "1MiB", "512KiB",
         "10 KB", "0", "12", "true", "unlimited", "0 3 * * *", "", "5 m"]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=8).filter(lambda s: "$" not in s),
    st.integers(min_value=-3, max_value=10**7),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.lists(st.sampled_from(WORDS), max_size=2),
    st.dictionaries(st.sampled_from(["a", "max_age"]), st.integers(0, 3), max_size=1),
)


@settings(max_examples=400, deadline=None)
@given(leaf=st.sampled_from(LEAVES), value=VALUES)
def test_loader_accepts_a_value_exactly_when_the_schema_does(
    leaf: tuple[str, ...], value: Any
) -> None:
    # JSON Schema counts 2.0 as an integer; YAML and the loader do not: not a question
    # of structure this property can settle.
    assume(not (isinstance(value, float) and math.isfinite(value) and value.is_integer()))
    data = copy.deepcopy(FULL)
    target = data
    for key in leaf[:-1]:
        target = target[key]
    target[leaf[-1]] = value
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as directory:
        error = loader_error(yaml.safe_dump(data), Path(directory))
    assert (error is None) == (schema_errors(data) == []), (error, schema_errors(data))


def test_the_demo_configs_pass_once_their_variables_are_set() -> None:
    """${VAR} strings pass the schema as they are; expanded, they still pass."""
    for path in sorted((CONFIG_DIR / "demo").glob("*.yml")):
        text = path.read_text()
        for name, value in DEMO_ENV.items():
            text = text.replace("${" + name + "}", value)
        assert schema_errors(yaml.safe_load(text)) == [], path
