"""The keys of a node config: the one table the loader reads by, and what is made from it.

``NODE`` lists every key of a node config file with its kind, default and
meaning. ``gitmq.config`` reads a file through it (a key the table lacks is an
error for the user, a key the loader reads that the table lacks is a bug), and
this module renders it as a JSON Schema (draft-07, what editors' YAML language
server validates with) and as the key reference in docs/config.md:

    python -m gitmq.config_schema > config/gitmq-node.schema.json
    python -m gitmq.config_schema --markdown > docs/config.md

Tests check that both checked-in files equal what this prints.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from gitmq.budget import GITHUB_PUSHES_PER_MINUTE, GITHUB_READS_PER_MINUTE
from gitmq.config_section import Key
from gitmq.producer import DEFAULT_MAX_PAYLOAD
from gitmq.units import _DURATION, _SIZE

SCHEMA_ID = "https://gitmq.invalid/config/gitmq-node.schema.json"
_ENV = r"\$\{[A-Za-z_][A-Za-z0-9_]*\}"  # a string the loader expands first: checked then
_CRON = r"^\s*\S+(\s+\S+){4}\s*$"
_LISTEN = r"^(\[[^\]]+\]|[^\s\[\]]+):[0-9]{1,5}$"

_RATES = (
    Key("reads_per_minute", "rate", "Fetches and ref listings a minute, for the whole cluster.",
        shown=f"{GITHUB_READS_PER_MINUTE:g} on github.com, else no limit"),
    Key("pushes_per_minute", "rate", "Pushes a minute, for the whole cluster.",
        shown=f"{GITHUB_PUSHES_PER_MINUTE:g} on github.com, else no limit"),
)  # fmt: skip
_REMOTE = (
    Key("url", "text", "The repository: https://, http://, ssh://, git://, file://, host:path "
        "or a local path. Never with a password or token in it.", required=True),
    Key("token_env", "text", "The environment variable that holds the https token."),
    Key("token_file", "path", "A file holding the https token, read before each git call "
        "(so a sidecar may rotate it)."),
    Key("token_user", "text", "The user name sent with the token.", "x-access-token"),
    Key("ssh_key", "path", "The ssh private key for this remote."),
    Key("known_hosts", "path", "The known_hosts file that pins the server's host key."),
    Key("ssh_config", "path", "An ssh_config file (Host aliases, ports, ProxyJump)."),
    Key("timeout", "duration", "Every network git call is killed after this.", "60s"),
    Key("ssh_reuse", "flag", "Share one ssh connection between git calls (ControlMaster), "
        "unless your ssh config sets one.", True),
    Key("github_app", "flag", "Authenticate with tokens of the github.app installation.", False),
    Key("budget", "section", "The whole cluster's requests to this repository: nodes count "
        "each other and split it. 'unlimited': none.", keys=_RATES, also=("unlimited",),
        shown="GitHub's limits on github.com, else none"),
)  # fmt: skip
_PRUNE = (
    Key("max_age", "duration", "Drop messages older than this."),
    Key("max_messages", "number", "Keep at most this many messages on this node.", minimum=1),
    Key("keep_unconsumed", "flag", "Never drop what a local consumer has not finished.", True),
    Key("schedule", "schedule", "How often to prune: an interval or a cron expression like "
        "'0 3 * * *'.", "1h"),
)  # fmt: skip
_ROTATE = (
    Key("max_messages", "number", "Start a new segment after this many messages.", minimum=1),
    Key("max_age", "duration", "Start a new segment when the current one is this old."),
    Key("keep_segments", "number", "Closed segments kept on the remote.", 1),
)  # fmt: skip
_QUEUE = (
    Key("remote", "text", "The remote this queue syncs with; leave it out for a local queue."),
    Key("max_payload", "size", "Publishes over this size fail with a clear error.",
        DEFAULT_MAX_PAYLOAD),
    Key("prune", "section", "Local history pruning (gitmq prune); needs max_age, max_messages "
        "or both.", keys=_PRUNE),
    Key("rotate", "section", "Remote retention: rotate into segments (docs/retention.md); "
        "needs max_messages, max_age or both.", keys=_ROTATE),
)  # fmt: skip
_HANDLER = (
    Key("command", "command", "A program and its arguments, run without a shell: the payload "
        "on stdin, metadata in GITMQ_* variables."),
    Key("python", "text", "Or a Python function 'package.module:function'.", pattern=r":"),
    Key("timeout", "duration", "A handler still running after this has failed."),
)  # fmt: skip
_RETRY = (
    Key("max_attempts", "number", "Attempts before the message is dead-lettered.", 5, minimum=1),
    Key("initial_delay", "duration", "The wait after the first failure; it doubles.", "100ms"),
    Key("max_delay", "duration", "The longest wait between attempts.", "30s"),
)  # fmt: skip
_CONSUMER = (
    Key("queue", "text", "The queue this consumer reads.", required=True),
    Key("handler", "section", "What handles each message: exactly one of command or python.",
        required=True, keys=_HANDLER),
    Key("retry", "section", "Retries with exponential backoff.", keys=_RETRY),
    Key("dead_letter", "text", "Where a message goes after max_attempts failures.",
        shown="QUEUE.dlq"),
)  # fmt: skip
_GITHUB = (
    Key("repository", "text", "The repository as 'owner/name'.", required=True,
        pattern=r"^[^/]+/[^/]+$"),
    Key("private", "flag", "Create the repository private.", True),
    Key("base_url", "text", "The REST API (GitHub Enterprise: https://HOST/api/v3).",
        "https://api.github.com"),
    Key("deploy_keys", "list", "Public keys installed as deploy keys, one per node.", keys=(
        Key("title", "text", "The key's title on GitHub.", required=True),
        Key("key", "text", "The public key text 'ssh-ed25519 AAAA... comment'."),
        Key("key_file", "path", "Or the public key's file, read at load time."),
    )),
    Key("app", "section", "A GitHub App installation instead of tokens.", keys=(
        Key("app_id", "number", "The app's id.", required=True, minimum=1),
        Key("installation_id", "number", "The installation's id.", required=True, minimum=1),
        Key("private_key_file", "path", "The app's PEM private key.", required=True),
    )),
)  # fmt: skip
_SYNC = (
    Key("interval", "duration", "One sync cycle per remote every interval (more than 0s).", "5s"),
    Key("jitter", "duration", "A random delay added so nodes do not push in lockstep.", "0s"),
    Key("max_push_attempts", "number", "Rejected pushes retried per cycle, with backoff.", 5,
        minimum=1),
    Key("poll", "duration", "Fetch-only cycles in between (less than interval): new remote "
        "messages arrive sooner, pushes stay at one per interval."),
    Key("eager", "flag", "Sync as soon as a message is published (within the budget).",
        shown="on for remotes with a budget"),
)  # fmt: skip
NODE = (
    Key("node", "section", "This node.", required=True, keys=(
        Key("name", "text", "The node's name: in logs, the registry and the default identity.",
            required=True),
        Key("identity", "section", "Author of this node's messages, committer of re-parented "
            "ones.", keys=(
            Key("name", "text", "The name.", shown="the node's name"),
            Key("email", "text", "The email address.", shown="NODE@gitmq.invalid"),
        )),
    )),
    Key("storage", "section", "The node's local repository.", required=True, keys=(
        Key("path", "path", "A bare repository, created if missing.", required=True),
        Key("fsync", "flag", "fsync every object and ref (survives power loss).", False),
    )),
    Key("remotes", "named", "The central repositories, by name.", keys=_REMOTE),
    Key("queues", "named", "The queues, by name.", keys=_QUEUE),
    Key("consumers", "named", "The consumers, by name.", keys=_CONSUMER),
    Key("sync", "section", "How often and how hard to sync with the remotes.", keys=_SYNC),
    Key("github", "section", "For 'gitmq github setup|check' (docs/github.md).", keys=_GITHUB),
    Key("observability", "section", "Serve /metrics, /healthz and /readyz; off unless set.",
        keys=(Key("listen", "text", "HOST:PORT to listen on, like 127.0.0.1:9464.",
                  required=True, pattern=_LISTEN),)),
)  # fmt: skip


# -- JSON Schema -------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The node config as a JSON Schema (draft-07)."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "GitMQ node configuration",
        "description": "A GitMQ node's YAML config (docs/config.md). Generated by "
        "'python -m gitmq.config_schema' from the table the loader reads by.",
        **_object(NODE, ""),
    }


def _string(*patterns: str) -> dict[str, Any]:
    """A string matching one of ``patterns``, or holding a ``${VAR}`` (checked at load)."""
    return {"type": "string", "anyOf": [{"pattern": p} for p in (*patterns, _ENV)]}


def _object(keys: tuple[Key, ...], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {k.name: _property(k, f"{path}{k.name}") for k in keys},
        "additionalProperties": False,
    }
    required = [k.name for k in keys if k.required]
    return {**out, "required": required} if required else out


def _value(key: Key, path: str) -> dict[str, Any]:
    number = {"type": "number", "minimum": 0}
    simple: dict[str, dict[str, Any]] = {
        "text": {"type": "string", "minLength": 1},
        "path": {"type": "string", "minLength": 1},
        "flag": {"type": "boolean"},
        "number": {"type": "integer", "minimum": key.minimum},
        "rate": {"type": "number", "exclusiveMinimum": 0},
        "size": {"anyOf": [{"type": "integer", "minimum": 0}, _string(_SIZE.pattern)]},
        "duration": {"anyOf": [number, _string(_DURATION.pattern)]},
        "schedule": _string(_DURATION.pattern, _CRON),
        "command": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
    }
    if key.kind in simple:
        value = simple[key.kind]
        return {**value, **_string(key.pattern), "minLength": 1} if key.pattern else value
    if key.kind == "named":
        return {"type": "object", "additionalProperties": _object(key.keys, f"{path}.<name>.")}
    if key.kind == "list":
        return {"type": "array", "items": _object(key.keys, f"{path}[].")}
    value = _object(key.keys, f"{path}.")
    return {"anyOf": [{"enum": list(key.also)}, value]} if key.also else value


def _property(key: Key, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"title": path, "description": _doc(key), **_value(key, path)}
    return out if key.default is None else {**out, "default": key.default}


def _doc(key: Key) -> str:
    default = key.shown or (None if key.default is None else json.dumps(key.default))
    return f"{key.doc} Default: {default}." if default and not key.required else key.doc


# -- docs/config.md ----------------------------------------------------------------------

_KINDS = {
    "text": "string",
    "path": "path (relative to the file)",
    "flag": "true or false",
    "number": "whole number",
    "rate": "number > 0",
    "size": "size: bytes, or like 512KiB, 1MiB",
    "duration": "duration: seconds, or like 100ms, 10s, 5m, 2h, 7d, 1w",
    "schedule": "interval like 1h, or cron like '0 3 * * *'",
    "command": "list of strings",
    "section": "mapping",
    "named": "mapping of name to mapping",
    "list": "list of mappings",
}

_INTRO = """\
# Node configuration keys

<!-- Generated by `python -m gitmq.config_schema --markdown > docs/config.md`
     from the table the loader reads by (gitmq/config_schema.py); a test checks
     it is current. Edit the table, not this file. -->

Every key a node config may hold. `config/example.yml` shows them all in use,
`gitmq config check FILE` validates a file, and `config/gitmq-node.schema.json`
is the same table as a JSON Schema (draft-07) for editors: a file whose first
line is `# yaml-language-server: $schema=gitmq-node.schema.json` (a path
relative to the file, or the schema's URL) is checked as you type by any editor
running the YAML language server.

A key not listed here is an error, and so is a value of the wrong kind. In
every string, `${NAME}` is the environment variable NAME at load time (`$$` is
a `$`); paths are relative to the config file. A key left empty (`timeout:`)
counts as left out for the loader; the schema flags it, as it is usually a
slip. The loader checks more than the schema can: that a queue's remote and a
consumer's queue exist, names valid in Git refs, urls git may be given, and
that handler programs exist.
"""


def markdown() -> str:
    """The key reference, docs/config.md."""
    out = [_INTRO]
    for key in NODE:
        required = " Required." if key.required else ""
        out += [f"\n## `{key.name}`\n\n{key.doc}{required}\n"]
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        out += _rows(key.keys, f"{key.name}.<name>." if key.kind == "named" else f"{key.name}.")
    return "\n".join(out) + "\n"


def _rows(keys: tuple[Key, ...], prefix: str) -> list[str]:
    rows = []
    for key in keys:
        path = prefix + key.name
        default = "required" if key.required else key.shown or _literal(key.default)
        kind = _KINDS[key.kind] + (f" >= {key.minimum}" if key.kind == "number" else "")
        also = "".join(f" or `{word}`" for word in key.also)
        rows.append(f"| `{path}` | {kind}{also} | {default} | {key.doc} |")
        suffix = "[]." if key.kind == "list" else "."
        rows += _rows(key.keys, path + suffix)
    return rows


def _literal(value: object) -> str:
    return "" if value is None else f"`{json.dumps(value)}`"


def main(argv: list[str]) -> int:
    if argv not in ([], ["--markdown"]):
        print("usage: python -m gitmq.config_schema [--markdown]", file=sys.stderr)
        return 2
    print(markdown() if argv else json.dumps(json_schema(), indent=2), end="" if argv else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
