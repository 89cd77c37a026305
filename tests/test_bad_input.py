"""Bad input at the command line (issue 9): one exact line, the documented exit code,
and nothing changed.

Each case runs one ``gitmq`` command, as a user would, against a fresh storage
``s.git`` (queue ``orders`` with two messages, consumer ``c`` after the first)
and checks the exact first line of stderr, the exit code, and that the
storage's refs and objects are as before (``git fsck`` clean), and that no
command ran (``{t}/pwned`` is never made). Cases with a node config write it
to ``{t}/node.yml`` and run the command that reads it (``node``, ``repair``,
``prune``, ``github``); every mistake a config can hold has its own table in
``tests/test_config.py``. A full disk and a read-only storage need a mount and
have their own tests below.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from util import GITMQ_CONSUME, GITMQ_PRODUCE, git, gitmq, ok, rev_parse, run

SETUPS: dict[str, Callable[[Path], None]] = {}


def setup(func: Callable[[Path], None]) -> Callable[[Path], None]:
    SETUPS[func.__name__] = func
    return func


@setup
def blob_queue(tmp: Path) -> None:
    """The queue ref names a blob (a hand edit, a bad copy)."""
    blob = git(tmp / "s.git", "hash-object", "-w", "--stdin", input=b"not a commit\n")
    (tmp / "s.git" / "refs" / "heads" / "orders").write_text(blob.decode())


@setup
def missing_tip(tmp: Path) -> None:
    """The newest message's object is gone (a disk error, a bad copy)."""
    tip = git(tmp / "s.git", "rev-parse", "orders").decode().strip()
    (tmp / "s.git" / "objects" / tip[:2] / tip[2:]).unlink()


@setup
def work_tree(tmp: Path) -> None:
    """A non-bare repository with 'main' checked out."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp / "wt")], check=True)


@setup
def team_queues(tmp: Path) -> None:
    ok(gitmq("publish", tmp / "s.git", "team/a", "x"))


@setup
def tag_queue(tmp: Path) -> None:
    """The queue ref names an annotated tag object, not a commit."""
    git(tmp / "s.git", "tag", "-a", "-m", "release", "v1", "orders")
    tag = git(tmp / "s.git", "rev-parse", "refs/tags/v1").decode()
    (tmp / "s.git" / "refs" / "heads" / "orders").write_text(tag)  # update-ref refuses


@setup
def blob_consumer(tmp: Path) -> None:
    """Consumer c's tag names a blob."""
    blob = git(tmp / "s.git", "hash-object", "-w", "--stdin", input=b"not a commit\n")
    git(tmp / "s.git", "update-ref", "refs/tags/c", blob.decode().strip())


@setup
def foreign_consumer(tmp: Path) -> None:
    """Consumer c's tag names a commit of another history."""
    other = git(tmp / "s.git", "commit-tree", EMPTY_TREE, "-m", "elsewhere")
    git(tmp / "s.git", "update-ref", "refs/tags/c", other.decode().strip())


@setup
def a_file(tmp: Path) -> None:
    (tmp / "file").write_text("not a storage\n")
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("something\n")


@setup
def dead_letters(tmp: Path) -> None:
    """Consumer c fails the second message of orders into orders.dlq."""
    ok(
        gitmq(
            "consume",
            "--drain",
            "--max-attempts",
            "1",
            "--exec",
            "false",
            tmp / "s.git",
            "orders",
            "c",
        )
    )


@dataclass(frozen=True)
class Bad:
    argv: tuple[str, ...]  # after 'gitmq'; {s} is the storage, {t} the test's folder
    status: int
    error: str  # the first stderr line after 'error: ', with {s} and {t}
    setup: str | None = None
    stdin: bytes | None = None
    fsck: bool = True  # False where the setup itself breaks the repository
    config: str | bytes | None = None  # written to {t}/node.yml first ({t}, {s} filled)


S = "{s}"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
NODE = ("node", "--once", "--config", "{t}/node.yml")


def node_config(url: str = "git://127.0.0.1:9/q.git", consumer: str = "") -> str:
    """A node config for the test's storage, with one consumer of orders (``consumer``:
    its other keys, ``|`` between lines)."""
    consumer = (consumer or "handler:|  command: [/bin/true]").replace("|", "\n    ")
    return (
        "node:\n  name: n1\nstorage:\n  path: {s}\nremotes:\n  origin:\n"
        f"    url: {url}\nqueues:\n  orders:\n    remote: origin\n"
        f"consumers:\n  billing:\n    queue: orders\n    {consumer}\n"
    )


USE = "use https://, http://, ssh://, git://, file://, host:path or a local path"
NOT_ON_PATH = "is not an executable file on PATH; install it or fix the name (nothing was consumed)"
CASES: dict[str, Bad] = {
    # -- names
    "publish to an invalid queue": Bad(
        ("publish", S, "a..b", "x"), 2, "invalid queue name 'a..b': it contains '..' or '@{'"
    ),
    "publish to a queue that is an option": Bad(
        ("publish", S, "--", "-rf", "x"),
        2,
        "invalid queue name '-rf': it starts with '-'",
    ),
    "consume with an invalid consumer": Bad(
        ("consume", "--drain", S, "orders", "a b"),
        2,
        "invalid consumer name 'a b': it contains a space, a control character or one of "
        "~ ^ : ? * [ \\",
    ),
    "log of a queue named HEAD": Bad(
        ("log", S, "HEAD"), 2, "invalid queue name 'HEAD': it is reserved by git"
    ),
    # -- headers and authors
    "a header without a value": Bad(
        ("publish", "--header", "novalue", S, "orders", "x"),
        2,
        "invalid --header 'novalue': use NAME=VALUE",
    ),
    "a header given twice": Bad(
        ("publish", "--header", "k=1", "--header", "k=2", S, "orders", "x"),
        2,
        "--header 'k' is given twice; give each header once",
    ),
    "two headers for one variable": Bad(
        ("publish", "--header", "a.b=1", "--header", "a-b=2", S, "orders", "x"),
        2,
        "--header 'a.b' and 'a-b' would both reach --exec handlers as GITMQ_HEADER_A_B; rename one",
    ),
    "an invalid header name": Bad(
        ("publish", "--header", "bad name=1", S, "orders", "x"),
        2,
        "invalid header name 'bad name': use letters, digits, '.', '_' and '-'",
    ),
    "an author without an email": Bad(
        ("publish", "--author", "Ann", S, "orders", "x"),
        2,
        "invalid --author 'Ann': use 'Name <email>'",
    ),
    "a payload over the limit": Bad(
        ("publish", "--max-payload", "3", S, "orders", "four"),
        2,
        "payload of 4 bytes is over the limit of 3 bytes for queue 'orders'; nothing was "
        "published (raise max_payload or store large data elsewhere and publish a reference)",
    ),
    # -- consume
    "an empty --exec": Bad(
        ("consume", "--drain", "--exec", "", S, "orders", "c"),
        2,
        "--exec needs a command (it was empty); leave --exec out to print",
    ),
    "an --exec with an open quote": Bad(
        ("consume", "--drain", "--exec", "echo 'hi", S, "orders", "c"),
        2,
        '--exec "echo \'hi" cannot be split into words: No closing quotation',
    ),
    "an --exec program that does not exist": Bad(
        ("consume", "--drain", "--exec", "/nonexistent/handler", S, "orders", "c"),
        2,
        "handler command '/nonexistent/handler' is not an executable file; install it or fix "
        "the name (nothing was consumed)",
    ),
    "an --exec program not on PATH": Bad(
        ("consume", "--drain", "--exec", "no-such-gitmq-handler --flag", S, "orders", "c"),
        2,
        f"handler command 'no-such-gitmq-handler' {NOT_ON_PATH}",
    ),
    "dead letters onto the queue itself": Bad(
        ("consume", "--drain", "--dead-letter", "orders", "--exec", "false", S, "orders", "c"),
        2,
        "consumer 'c' cannot use its own queue 'orders' as its dead-letter queue (a failing "
        "message would come back for ever); name another one",
    ),
    "an invalid dead-letter queue": Bad(
        ("consume", "--drain", "--dead-letter", "x..y", S, "orders", "c"),
        2,
        "invalid queue name 'x..y': it contains '..' or '@{'",
    ),
    # -- seek
    "seek on a queue that does not exist": Bad(
        ("seek", S, "ordres", "c", "beginning"),
        4,
        "queue 'ordres' does not exist in {s}; check the name ('gitmq status {s}' lists the "
        "queues); nothing was changed",
    ),
    "seek to an id that is not there": Bad(
        ("seek", S, "orders", "c", "01a00000-0000-7000-8000-000000000000"),
        4,
        "no message '01a00000-0000-7000-8000-000000000000' on queue 'orders'; give a message "
        "id, a commit id, an ISO time, 'beginning' or 'end'",
    ),
    "seek to a time without a zone": Bad(
        ("seek", S, "orders", "c", "2024-05-01T12:00:00"),
        2,
        "time '2024-05-01T12:00:00' has no time zone; add one, e.g. 2024-05-01T12:00:00+00:00",
    ),
    # -- storages
    "log of a queue that does not exist": Bad(
        ("log", S, "nosuch"), 4, "queue 'nosuch' does not exist in {s}"
    ),
    "status of a storage that does not exist": Bad(
        ("status", "{t}/missing.git"),
        3,
        "no storage at {t}/missing.git; create it first (gitmq creates it on publish)",
    ),
    "publish into a file": Bad(
        ("publish", "{t}/file", "orders", "x"),
        3,
        "storage path {t}/file is a file, not a directory; choose another path",
        setup="a_file",
    ),
    "publish into a folder that is not a storage": Bad(
        ("publish", "{t}/full", "orders", "x"),
        3,
        "storage path {t}/full is not a git repository and not empty; point at a GitMQ "
        "storage, an empty directory or a new path",
        setup="a_file",
    ),
    "publish onto a checked-out branch": Bad(
        ("publish", "{t}/wt", "main", "x"),
        2,
        "queue 'main' is the branch checked out in the work tree {t}/wt; publishing to it "
        "would leave that work tree behind. Use a bare storage or another queue",
        setup="work_tree",
    ),
    # -- the command line itself
    "an unknown command": Bad(
        ("pubish", S, "orders", "x"),
        2,
        "argument COMMAND: invalid choice: 'pubish' (choose from 'publish', 'log', 'consume', "
        "'status', 'doctor', 'consumer', 'seek', 'dlq', 'node', 'sync', 'config', 'prune', "
        "'repair', 'github', 'demo', 'completion') (see 'gitmq --help')",
    ),
    "a missing argument": Bad(
        ("publish",),
        2,
        "the following arguments are required: QUEUE (see 'gitmq publish --help')",
    ),
    "an unknown option": Bad(
        ("seek", S, "orders", "c", "end", "--force"),
        2,
        "unrecognized arguments: --force (see 'gitmq --help')",
    ),
    "a negative payload limit": Bad(
        ("publish", "--max-payload", "-1", S, "orders", "x"),
        2,
        "argument --max-payload: must be 0 or more, found -1 (see 'gitmq publish --help')",
    ),
    "a negative log limit": Bad(
        ("log", "-n", "-5", S, "orders"),
        2,
        "argument -n/--limit: must be 0 or more, found -5 (see 'gitmq log --help')",
    ),
    "a log limit that is no number": Bad(
        ("log", "-n", "ten", S, "orders"),
        2,
        "argument -n/--limit: expected a whole number, found 'ten' (see 'gitmq log --help')",
    ),
    "zero attempts": Bad(
        ("consume", "--drain", "--max-attempts", "0", S, "orders", "c"),
        2,
        "retry max_attempts must be at least 1, got 0",
    ),
    "repair without saying how": Bad(
        ("repair", "--config", "{t}/node.yml", "orders"),
        2,
        "one of the arguments --restore --adopt-remote is required (see 'gitmq repair --help')",
    ),
    "gitmq-consume without a consumer": Bad(
        ("--gem-consume", S, "orders"),
        2,
        "the following arguments are required: consumer (see 'gitmq-consume --help')",
    ),
    # -- more names and storages
    "a queue that ends with .lock": Bad(
        ("publish", S, "orders.lock", "x"),
        2,
        "invalid queue name 'orders.lock': component 'orders.lock' ends with '.lock'",
    ),
    "a queue whose name is taken by a folder of queues": Bad(
        ("publish", S, "team", "x"),
        3,
        "cannot create ref refs/heads/team: refs named refs/heads/team/... exist",
        setup="team_queues",
    ),
    "an empty storage path": Bad(
        ("publish", "", "orders", "x"),
        2,
        "the storage path is empty (''); give the storage's path, --config FILE, or set "
        "GITMQ_STORAGE",
    ),
    "a storage path inside a storage": Bad(
        ("status", "{s}/refs"),
        3,
        "storage path {s}/refs is not a git repository and not empty; point at a GitMQ "
        "storage, an empty directory or a new path",
    ),
    "an empty seek target": Bad(
        ("seek", S, "orders", "c", ""),
        2,
        "a seek target must be a non-empty str (beginning, end, a message id, a commit id or "
        "an ISO time), not ''",
    ),
    "an author with an empty email": Bad(
        ("publish", "--author", "Ann <>", S, "orders", "x"),
        2,
        "invalid identity email '': it must be non-empty, without '<', '>', newlines or "
        "surrounding spaces",
    ),
    "deleting a consumer that has no offset": Bad(
        ("consumer", "delete", S, "orders", "nobody"),
        4,
        "consumer 'nobody' has no offset in {s} (no tag refs/tags/nobody); nothing to delete",
    ),
    "a config that is a folder": Bad(
        ("config", "check", "{t}"), 5, "cannot read config file {t}: Is a directory"
    ),
    # -- node commands
    "repair with a config that does not exist": Bad(
        ("repair", "--config", "{t}/none.yml", "orders", "--restore"),
        5,
        "config file {t}/none.yml does not exist",
    ),
    "prune with a config that does not exist": Bad(
        ("prune", "--config", "{t}/none.yml"), 5, "config file {t}/none.yml does not exist"
    ),
    # -- a node and its config, through the commands that read it
    "a node whose remote URL is an option": Bad(
        NODE,
        5,
        "{t}/node.yml: remotes.origin.url: '--upload-pack=touch {t}/pwned' starts with '-', "
        f"which git would read as an option; {USE}",
        config=node_config("'--upload-pack=touch {t}/pwned'"),
    ),
    "a node whose remote URL runs a command": Bad(
        NODE,
        5,
        "{t}/node.yml: remotes.origin.url: 'ext::sh -c touch% {t}/pwned' uses git's 'ext::' "
        f"transport, which runs commands; {USE}",
        config=node_config("'ext::sh -c touch% {t}/pwned'"),
    ),
    "a node with a password in its URL": Bad(
        NODE,
        5,
        "{t}/node.yml: remotes.origin.url: secrets never go in the config file: put the token "
        "in an environment variable and name it with token_env",
        config=node_config("https://user:secret@example.com/q.git"),
    ),
    "a node with a zero remote timeout": Bad(
        NODE,
        5,
        "{t}/node.yml: remotes.origin.timeout: must be more than 0 (the default is 60s)",
        config=node_config("git://127.0.0.1:9/q.git\n    timeout: 0s"),
    ),
    "a node with a consumer given twice": Bad(
        NODE,
        5,
        "{t}/node.yml: line 16 column 3: not valid YAML: the key 'billing' is given twice "
        "(first on line 12); keep one of them",
        config=node_config() + "  billing:\n    queue: orders\n",
    ),
    "a node config that is not UTF-8": Bad(
        NODE,
        5,
        "config file {t}/node.yml is not UTF-8 text (byte 17 is 0xe9); save it as UTF-8",
        config="node:\n  name: caf\xe9\n".encode("latin-1"),
    ),
    "a node whose handler program is missing": Bad(
        NODE,
        5,
        "{t}/node.yml: consumers.billing.handler.command: handler command '/nonexistent/x' is "
        "not an executable file; install it or fix the name (nothing was consumed)",
        config=node_config(consumer="handler:|  command: [/nonexistent/x]"),
    ),
    "a node whose python handler is missing": Bad(
        NODE,
        5,
        "{t}/node.yml: consumers.billing.handler.python: python handler "
        "'no_such_gitmq_module:handle': cannot import 'no_such_gitmq_module': No module named "
        "'no_such_gitmq_module'",
        config=node_config(consumer="handler:|  python: no_such_gitmq_module:handle"),
    ),
    "a node that dead-letters onto the queue": Bad(
        NODE,
        5,
        "{t}/node.yml: consumers.billing.dead_letter: must differ from the queue it consumes",
        config=node_config(consumer="dead_letter: orders|handler:|  command: [/bin/true]"),
    ),
    "a node with an unknown log level": Bad(
        ("node", "--log-level", "loud", "--config", "{t}/node.yml"),
        2,
        "argument --log-level: invalid choice: 'loud' (choose from 'debug', 'info', 'warning', "
        "'error') (see 'gitmq node --help')",
    ),
    "a node without a config": Bad(
        ("node", "--once"),
        2,
        "the following arguments are required: --config (see 'gitmq node --help')",
    ),
    "a config check of no file": Bad(
        ("config", "check"),
        2,
        "the following arguments are required: file (see 'gitmq config check --help')",
    ),
    "a repair of a queue the config lacks": Bad(
        ("repair", "--config", "{t}/node.yml", "invoices", "--restore"),
        2,
        "queue 'invoices' is not in {t}/node.yml (queues there: orders)",
        config=node_config(consumer="handler:|  command: [/bin/true]"),
    ),
    "a prune of a queue without a policy": Bad(
        ("prune", "--config", "{t}/node.yml", "--queue", "orders"),
        2,
        "queue 'orders' has no prune policy in {t}/node.yml",
        config=node_config(consumer="handler:|  command: [/bin/true]"),
    ),
    "a github check without a github section": Bad(
        ("github", "check", "--config", "{t}/node.yml"),
        5,
        "{t}/node.yml: github: is required for 'gitmq github'",
        config=node_config(consumer="handler:|  command: [/bin/true]"),
    ),
    "a demo without its configs": Bad(
        ("demo", "--config-dir", "{t}/nowhere"),
        5,
        "demo configs not found in {t}/nowhere (no node-a.yml); pass --config-dir with the "
        "checkout's config/demo folder",
    ),
    "a node whose storage is a file": Bad(
        NODE,
        3,
        "storage path {t}/file is a file, not a directory; choose another path",
        setup="a_file",
        config="node:\n  name: n1\nstorage:\n  path: {t}/file\n",
    ),
    # -- more of the command line
    "attempts that are no number": Bad(
        ("consume", "--drain", "--max-attempts", "x", S, "orders", "c"),
        2,
        "argument --max-attempts: invalid int value: 'x' (see 'gitmq consume --help')",
    ),
    "a consumer named like an option": Bad(
        ("consume", "--drain", S, "orders", "--", "-x"),
        2,
        "invalid consumer name '-x': it starts with '-'",
    ),
    "seek with an invalid consumer": Bad(
        ("seek", S, "orders", "a b", "end"),
        2,
        "invalid consumer name 'a b': it contains a space, a control character or one of "
        "~ ^ : ? * [ \\",
    ),
    "seek to a word": Bad(
        ("seek", S, "orders", "c", "yesterday"),
        4,
        "no message 'yesterday' on queue 'orders'; give a message id, a commit id, an ISO "
        "time, 'beginning' or 'end'",
    ),
    "deleting a consumer with an invalid name": Bad(
        ("consumer", "delete", S, "orders", "a:b"),
        2,
        "invalid consumer name 'a:b': it contains a space, a control character or one of "
        "~ ^ : ? * [ \\",
    ),
    "a payload over the default limit": Bad(
        ("publish", S, "orders"),
        2,
        "payload of 2000000 bytes is over the limit of 1048576 bytes for queue 'orders'; "
        "nothing was published (raise max_payload or store large data elsewhere and publish "
        "a reference)",
        stdin=b"a" * 2_000_000,
    ),
    "a queue name over 200 bytes": Bad(
        ("publish", S, "q" * 201, "x"),
        2,
        f"invalid queue name '{'q' * 201}': it is longer than 200 bytes",
    ),
    "a header value over two lines": Bad(
        ("publish", "--header", "k=a\nb", S, "orders", "x"),
        2,
        "invalid value for header 'k': it must be one line",
    ),
    "an --exec that is a folder": Bad(
        ("consume", "--drain", "--exec", "{t}", S, "orders", "c"),
        2,
        "handler command '{t}' is not an executable file; install it or fix the name "
        "(nothing was consumed)",
    ),
    "gitmq-produce without a queue": Bad(
        ("--gem-produce", S),
        2,
        "the following arguments are required: branch (see 'gitmq-produce --help')",
    ),
    "a queue ref that names a tag object": Bad(
        ("log", S, "orders"),
        3,
        "ref refs/heads/orders points at {blob}, which is not a commit in {s}; restore it "
        "from the remote or point it at a commit with 'git update-ref'",
        setup="tag_queue",
        fsck=False,
    ),
    "a consumer tag that names a blob": Bad(
        ("consume", "--drain", S, "orders", "c"),
        7,
        "consumer 'c' is at {tag12}, which is not on queue 'orders'; reset it with 'gitmq "
        "seek' (see docs/operations.md)",
        setup="blob_consumer",
    ),
    "a consumer tag on another history": Bad(
        ("consume", "--drain", S, "orders", "c"),
        7,
        "consumer 'c' is at {tag12}, which is not on queue 'orders'; reset it with 'gitmq "
        "seek' (see docs/operations.md)",
        setup="foreign_consumer",
    ),
}


NO_TTY = "pass --yes to confirm (stdin is not a terminal to ask on)"
CASES |= {  # steering: which storage, consumers, dead letters, completion
    "a storage path and a --config": Bad(
        ("log", S, "orders", "--config", "{t}/node.yml"),
        2,
        "both a storage path ({s}) and --config {t}/node.yml are given; give one",
    ),
    "a --config that does not exist": Bad(
        ("log", "--config", "{t}/none.yml", "orders"), 5, "config file {t}/none.yml does not exist"
    ),
    "publish --lines with a payload": Bad(
        ("publish", "--lines", S, "orders", "x"),
        2,
        "--lines reads the messages from stdin, but a payload ('x') is given too; leave it out "
        "(or give '-')",
    ),
    "consume --count 0": Bad(
        ("consume", "--count", "0", S, "orders", "c"),
        2,
        "argument --count: must be 1 or more, found 0 (see 'gitmq consume --help')",
    ),
    "consume with a timeout that is no duration": Bad(
        ("consume", "--timeout", "soon", S, "orders", "c"),
        2,
        "argument --timeout: expected a duration like 100ms, 10s, 5m, 2h, 7d or 1w, found "
        "'soon' (see 'gitmq consume --help')",
    ),
    "consume with a zero timeout": Bad(
        ("consume", "--timeout", "0s", S, "orders", "c"),
        2,
        "argument --timeout: must be more than 0, found '0s' (see 'gitmq consume --help')",
    ),
    "consume --from for a consumer that has an offset": Bad(
        ("consume", "--drain", "--from", "end", S, "orders", "c"),
        2,
        "consumer 'c' already has an offset (at {tag12}); --from only places a new consumer: "
        "move this one with 'gitmq consumer reset orders c end' (nothing was consumed)",
    ),
    "consume --from a message that is not there": Bad(
        ("consume", "--drain", "--from", "nope", S, "orders", "new"),
        4,
        "no message 'nope' on queue 'orders'; give a message id, a commit id, an ISO time, "
        "'beginning' or 'end'",
    ),
    "consumer reset without a terminal or --yes": Bad(
        ("consumer", "reset", S, "orders", "c", "end"),
        2,
        f"reset of consumer c not done: {NO_TTY}",
    ),
    "consumer reset on a queue that does not exist": Bad(
        ("consumer", "reset", "--yes", S, "ordres", "c", "end"),
        4,
        "queue 'ordres' does not exist in {s}; check the name ('gitmq status {s}' lists "
        "the queues); nothing was changed",
    ),
    "consumer list of an invalid queue": Bad(
        ("consumer", "list", S, "a..b"), 2, "invalid queue name 'a..b': it contains '..' or '@{'"
    ),
    "dlq list of a queue that does not exist": Bad(
        ("dlq", "list", S, "nosuch"),
        4,
        "queue 'nosuch' does not exist in {s} and has no dead-letter queue nosuch.dlq; check "
        "the name",
    ),
    "dlq list with an invalid dead-letter queue": Bad(
        ("dlq", "list", "--dead-letter", "x..y", S, "orders"),
        2,
        "invalid queue name 'x..y': it contains '..' or '@{'",
    ),
    "dlq show of an id that is not there": Bad(
        ("dlq", "show", S, "orders", "nope"),
        4,
        "no dead letter 'nope' of queue 'orders' in orders.dlq ('gitmq dlq list' shows them)",
        setup="dead_letters",
    ),
    "dlq replay without --id or --all": Bad(
        ("dlq", "replay", S, "orders"),
        2,
        "one of the arguments --id --all is required (see 'gitmq dlq replay --help')",
    ),
    "dlq replay of an id that is not there": Bad(
        ("dlq", "replay", "--id", "nope", S, "orders"),
        4,
        "no dead letter 'nope' of queue 'orders' in orders.dlq ('gitmq dlq list' shows them)",
        setup="dead_letters",
    ),
    "dlq purge without a terminal or --yes": Bad(
        ("dlq", "purge", "--all", S, "orders"),
        2,
        f"purge of 1 dead letter of orders not done: {NO_TTY}",
        setup="dead_letters",
    ),
    "completion for a shell it does not know": Bad(
        ("completion", "csh"),
        2,
        "argument SHELL: invalid choice: 'csh' (choose from 'bash', 'zsh', 'fish', 'tcsh') "
        "(see 'gitmq completion --help')",
    ),
}


BLOB_REF = (
    "ref refs/heads/orders points at {blob}, which is not a commit in {s}; restore it from the "
    "remote or point it at a commit with 'git update-ref'"
)
CASES |= {  # a queue ref that names a blob is refused by every command, not read as empty
    f"a queue ref that names a blob: {argv[0]}": Bad(argv, 3, BLOB_REF, "blob_queue", fsck=False)
    for argv in (
        ("log", S, "orders"),
        ("consume", "--drain", S, "orders", "c"),
        ("seek", S, "orders", "c", "end"),
        ("status", S),
        ("publish", S, "orders", "x"),
    )
}


CASES |= {  # so is one that names a missing object
    f"a queue ref that names a missing commit: {argv[0]}": Bad(
        argv,
        3,
        "ref refs/heads/orders points at {blob}, which is missing from {s}; run 'git fsck' "
        "there, then restore it from the remote or point it at a commit with 'git update-ref'",
        "missing_tip",
        fsck=False,
    )
    for argv in (("log", S, "orders"), ("consume", "--drain", S, "orders", "c"))
}


def state(tmp: Path) -> tuple[str, str]:
    """Every ref and object of the storage (what a bad command must not change)."""
    storage = tmp / "s.git"
    refs = git(storage, "for-each-ref", "--format=%(refname) %(objectname)").decode()
    objects = git(storage, "count-objects", "-v").decode()
    return refs, "\n".join(ln for ln in objects.splitlines() if not ln.startswith("size"))


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    storage = tmp_path / "s.git"
    ok(gitmq("publish", storage, "orders", "one"))
    ok(gitmq("publish", storage, "orders", "two"))
    first = git(storage, "rev-list", "--reverse", "orders").decode().split()[0]
    git(storage, "update-ref", "refs/tags/c", first)
    yield tmp_path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_exact_line_and_changes_nothing(tmp: Path, case: str) -> None:
    bad = CASES[case]
    if bad.setup:
        SETUPS[bad.setup](tmp)
    before = state(tmp)
    blob = rev_parse(tmp / "s.git", "refs/heads/orders") or ""
    tag12 = (rev_parse(tmp / "s.git", "refs/tags/c") or "")[:12]
    fill = {"{s}": str(tmp / "s.git"), "{t}": str(tmp), "{blob}": blob, "{tag12}": tag12}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    if isinstance(bad.config, str):
        (tmp / "node.yml").write_text(filled(bad.config))
    elif bad.config is not None:
        (tmp / "node.yml").write_bytes(bad.config)
    argv = [filled(a) for a in bad.argv]
    if argv[0] == "--gem-consume":  # the gem's own command lines
        result = run([*GITMQ_CONSUME, *argv[1:]], cwd=tmp)
    elif argv[0] == "--gem-produce":
        result = run([*GITMQ_PRODUCE, *argv[1:]], cwd=tmp)
    else:
        result = gitmq(*argv, input=bad.stdin, cwd=tmp)
    assert result.status == bad.status, str(result)
    assert result.err.splitlines() == ["error: " + filled(bad.error)], str(result)
    assert state(tmp) == before
    assert not (tmp / "pwned").exists()  # no URL or option ran a command
    if bad.fsck:
        git(tmp / "s.git", "fsck", "--no-dangling")


# ------------------------------------------------------------ mounts


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"this machine cannot mount ({result.stderr.strip()}): needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, mounted for the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk))
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_nothing_half_written(small_disk: Path) -> None:
    storage = small_disk / "s.git"
    ok(gitmq("publish", storage, "orders", "one"))
    big = os.urandom(700 * 1024).hex().encode()  # more than the disk holds, compressed
    before = state(small_disk)
    result = gitmq("publish", "--max-payload", "2000000", storage, "orders", input=big)
    assert result.status == 3, str(result)
    assert result.err.splitlines() == [
        f"error: no space left on device writing to {storage}; free space on that disk and "
        f"try again (nothing was half-written)"
    ], str(result)
    assert state(small_disk) == before
    git(storage, "fsck", "--no-dangling")
    leftovers = [p for p in (storage / "objects").rglob("tmp_obj_*")]
    assert leftovers == []


def test_a_read_only_storage_can_be_read_and_refuses_writes(tmp: Path) -> None:
    view = tmp / "ro"
    view.mkdir()
    mount("--bind", str(tmp), str(view))
    try:
        mount("-o", "remount,bind,ro", str(view))
        storage = view / "s.git"
        assert ok(gitmq("log", storage, "orders")).out.count("\n") == 2
        assert re.search(r"^  orders +2 ", ok(gitmq("status", storage)).out, re.MULTILINE)
        refusal = (
            f"error: read-only file system writing to {storage}; a storage on a read-only "
            f"file system can only be read (log, status) (nothing was half-written)"
        )
        for argv in (
            ("publish", storage, "orders", "x"),
            ("consume", "--drain", storage, "orders", "c"),
            ("seek", storage, "orders", "c", "end"),
        ):
            result = gitmq(*argv)
            assert (result.status, result.err.splitlines(), result.out) == (3, [refusal], ""), str(
                result
            )
    finally:
        subprocess.run(["umount", str(view)], check=False)
