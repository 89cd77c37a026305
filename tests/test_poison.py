"""Poison messages (issue 9): a commit on a queue that is not a message.

Anyone who can push to the remote can put any commit on a queue. Each case
below writes one such commit with plain git (``hash-object --literally``)
between two good messages; ``gitmq consume`` must deliver both good ones and
dead-letter the poison with its reason, and ``gitmq log`` must show it. The
last test sends one through a real git daemon to two running nodes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nodes import Cluster, delivering_pair
from servers import GitDaemon
from util import (
    clone_bare,
    git,
    git_text,
    gitmq,
    ok,
    plant,
    rev_parse,
    wait_for,
    write_commit,
)

from gitmq import Consumer, Identity, Storage
from gitmq.message import EMPTY_TREE, Draft, decode, encode

AUTHOR = "Mallory <m@example.com> 1700000000 +0000"
GOOD = {"first": "good:first", "second": "good:second"}


def poison_body(repo: Path, case: str, parent: str) -> bytes:
    """The raw commit object of poison ``case`` on top of ``parent``."""
    tree, parents, author, extra, body = EMPTY_TREE, [parent], AUTHOR, [], b"poison payload\n"
    if case == "bad-base64":
        extra, body = ["gitmq-encoding base64"], b"this is *not* base64!"
    elif case == "base64-without-padding":
        extra, body = ["gitmq-encoding base64"], b"YWJj\nZA"
    elif case == "unknown-encoding":
        extra = ["gitmq-encoding rot13"]
    elif case == "merge":
        side = f"tree {EMPTY_TREE}\nauthor {AUTHOR}\ncommitter {AUTHOR}\n\nside\n".encode()
        parents = [parent, write_commit(repo, side)]
    elif case == "files":
        blob = git(repo, "hash-object", "-w", "--stdin", input=b"a file\n").decode().strip()
        tree = git(repo, "mktree", input=f"100644 blob {blob}\tREADME\n".encode()).decode().strip()
    elif case == "malformed-author":
        author = "nobody in particular"
    elif case == "no-author":
        author = ""
    elif case == "time-out-of-range":
        author = "Mallory <m@example.com> 999999999999999 +0000"
    elif case == "two-ids":
        extra = ["gitmq-id 01a00000-0000-7000-8000-000000000001", "gitmq-id forged"]
    elif case == "bad-header-name":
        extra = ["gitmq-header bad!name value"]
    elif case == "bad-id":
        extra = ["gitmq-id ../../etc/passwd"]
    elif case == "unknown-control":
        extra = ["gitmq-control explode"]
    else:
        raise AssertionError(case)
    lines = [f"tree {tree}", *(f"parent {p}" for p in parents)]
    if author:
        lines.append(f"author {author}")
    lines += [f"committer {AUTHOR}", *extra]
    return ("\n".join(lines) + "\n\n").encode() + body


NOT_BASE64 = "its body is not valid base64 although it has 'gitmq-encoding base64'"
CASES = {
    "bad-base64": NOT_BASE64,
    "base64-without-padding": NOT_BASE64,
    "unknown-encoding": "its 'gitmq-encoding' is 'rot13', not 'base64'",
    "merge": "it is a merge commit (2 parents)",
    "files": "its tree is not the empty tree (it has files)",
    "malformed-author": "its author line is malformed",
    "no-author": "its author line is malformed",
    "time-out-of-range": "its author time is out of range",
    "two-ids": "it has two 'gitmq-id' lines",
    "bad-header-name": "it has a malformed 'gitmq-header' line 'bad!name value'",
    "bad-id": "its 'gitmq-id' '../../etc/passwd' is malformed",
    "unknown-control": "its 'gitmq-control' 'explode' is unknown",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_poison_message_is_dead_lettered_and_the_consumer_goes_on(
    tmp_path: Path, case: str
) -> None:
    path = tmp_path / "q.git"
    ok(gitmq("publish", path, "orders", GOOD["first"]))
    body = poison_body(path, case, rev_parse(path, "refs/heads/orders") or "")
    poison = plant(path, body)
    ok(gitmq("publish", path, "orders", GOOD["second"]))

    shown = ok(gitmq("log", path, "orders")).out.splitlines()
    assert len(shown) == 3 and f"[undecodable: {CASES[case]}]" in shown[1], shown
    as_json = [
        json.loads(line) for line in ok(gitmq("log", path, "orders", "--json")).out.splitlines()
    ]
    assert [m.get("undecodable") for m in as_json] == [None, CASES[case], None]

    consumed = ok(gitmq("consume", path, "orders", "reader", "--drain"))
    assert consumed.out.splitlines() == [GOOD["first"], GOOD["second"]]
    expected = f"commit {poison} on queue orders moved to dead-letter queue orders.dlq unhandled"
    assert f"{expected}: undecodable: {CASES[case]}" in consumed.err
    assert rev_parse(path, "refs/tags/reader") == rev_parse(path, "refs/heads/orders")

    with Storage(path, create=False) as storage:
        dead = list(Consumer(storage, "inspector", "orders.dlq").poll())
    assert len(dead) == 1
    assert dead[0].payload == body.partition(b"\n\n")[2]  # the raw message, byte for byte
    assert dict(dead[0].headers) == {
        "dead-letter-original-id": decode(poison, body).id,
        "dead-letter-original-sha": poison,
        "dead-letter-queue": "orders",
        "dead-letter-consumer": "reader",
        "dead-letter-attempts": "0",
        "dead-letter-error": f"undecodable: {CASES[case]}",
    }


def test_poll_yields_a_poison_message_marked_for_the_caller(tmp_path: Path) -> None:
    with Storage(tmp_path / "q.git") as storage:
        path = storage.path
        ok(gitmq("publish", path, "orders", "good"))
        poison = plant(path, poison_body(path, "merge", rev_parse(path, "refs/heads/orders") or ""))
        consumer = Consumer(storage, "puller", "orders")
        got = list(consumer.poll())
        assert [m.undecodable for m in got] == [None, CASES["merge"]]
        assert got[1].sha == poison and got[1].payload == b"poison payload\n"
        consumer.ack(got[0])
        consumer.ack(got[1])
        assert consumer.position == poison


# --------------------------------------------------------------- the decoder

UUID7 = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
header_values = st.text(
    st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=30
)
drafts = st.builds(
    Draft,
    id=st.from_regex(UUID7, fullmatch=True),
    payload=st.binary(max_size=300),
    author=st.just(Identity("Ann", "ann@example.com")),
    time=st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
    ).map(lambda d: d.replace(microsecond=0)),
    headers=st.dictionaries(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), header_values, max_size=4
    ),
)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400))
def test_decode_never_raises_on_any_bytes(body: bytes) -> None:
    message = decode("0" * 40, body)
    assert message.undecodable is None or isinstance(message.undecodable, str)


@settings(max_examples=300, deadline=None)
@given(draft=drafts, parent=st.one_of(st.none(), st.just("1" * 40)))
def test_what_encode_writes_decodes_to_the_same_message(draft: Draft, parent: str | None) -> None:
    now = draft.time
    message = decode("0" * 40, encode(draft, parent, draft.author, now))
    assert message.undecodable is None
    assert (message.id, message.payload, dict(message.headers), message.parent) == (
        draft.id,
        draft.payload,
        dict(draft.headers),
        parent,
    )
    assert message.time == draft.time and message.author == draft.author


# ------------------------------------------------------ through a git daemon


def test_a_poison_message_pushed_to_the_remote_reaches_every_node_as_a_dead_letter(
    cluster: Cluster, central: Path, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    nodes = delivering_pair(cluster, "before")
    # Someone with push access appends a commit that is no message.
    attacker = clone_bare(git_daemon.url("central.git"), tmp_path / "attacker.git")
    body = poison_body(attacker, "bad-base64", rev_parse(attacker, "refs/heads/orders") or "")
    poison = plant(attacker, body)
    git(attacker, "push", "-q", git_daemon.url("central.git"), "refs/heads/orders")

    nodes[1].publish("orders", "after")
    for node in nodes:
        wait_for(
            lambda node=node: node.payloads(f"c-{node.name}") == ["before", "after"], timeout=60
        )

    # Each node's consumer dead-lettered it once; dead-letter queues sync too.
    def dead_letters() -> list[tuple[str, str, str]]:
        with Storage(central, create=False) as storage:
            found = list(Consumer(storage, "inspector", "orders.dlq").poll())
        return sorted(
            (h["dead-letter-consumer"], h["dead-letter-original-sha"], h["dead-letter-error"])
            for h in (m.headers for m in found)
        )

    error = f"undecodable: {CASES['bad-base64']}"
    wait_for(lambda: dead_letters() == [("c-a", poison, error), ("c-b", poison, error)], timeout=60)
    for node in nodes:
        assert node.proc is not None and node.proc.poll() is None, node.log_text()[-3000:]
    assert git_text(central, "rev-list", "--count", "orders") == "3"
