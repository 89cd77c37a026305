"""Storage format v1 (docs/format.md): what a message looks like as a git commit."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from util import (
    EMPTY_TREE,
    UUID7,
    branch_shas,
    commit_body,
    commit_headers,
    commit_message,
    fsck,
    git,
    rev_parse,
    run,
    snapshot,
)

from gitmq import Consumer, Identity, Message, Producer, Storage
from gitmq.errors import PayloadTooLargeError, UsageError
from gitmq.message import decode, derived_id, reparent

MIB = 1024 * 1024
ALICE = Identity("Alice Producer", "alice@example.invalid")
NODE = Identity("node-1", "gitmq@node-1.example.invalid")
NOON = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

TEXT_PAYLOADS: dict[str, bytes] = {
    "empty": b"",
    "one newline": b"\n",
    "trailing newlines": b"hello\n\n\n",
    "trailing spaces": b"hello   ",
    "trailing spaces and newlines": b"hello \n \n\t",
    "leading blank lines": b"\n\nhello",
    "leading spaces": b"   hello",
    "multi-line": b"line 1\nline 2\r\nline 3\n",
    "CR only": b"a\rb\r",
    "json": json.dumps({"id": 1, "name": "Zoë", "tags": ["a", "b"], "n": None}).encode(),
    "pretty json": json.dumps({"a": [1, 2], "b": {"c": "d"}}, indent=2).encode() + b"\n",
    "yaml": b"---\norder:\n  id: 1\n  items:\n    - apple\n    - pear\n# comment\n...\n",
    "unicode": "snow ☃, emoji 🎉, RTL שלום".encode(),
    "looks like commit headers": f"tree {EMPTY_TREE}\nparent {'a' * 40}\n\nbody".encode(),
    "looks like our headers": b"gitmq-id x\ngitmq-encoding base64\n\naGVsbG8=",
    "looks like a signature": b"-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----\n",
    "comment lines": b"# not a comment to us\n#second\n",
    "trailer-like": b"subject\n\nSigned-off-by: Someone <s@example.invalid>\n",
    "exactly 1 MiB of text": (b"0123456789abcdef" * (MIB // 16 - 1)) + b"x" * 15 + b"\n",
}
BINARY_PAYLOADS: dict[str, bytes] = {
    "one NUL": b"\x00",
    "NUL inside": b"a\x00b\n",
    "invalid UTF-8": b"\xff\xfe not utf-8 \xc3\x28",
    "truncated UTF-8": "é".encode()[:1],
    "all byte values": bytes(range(256)),
    "exactly 1 MiB of random bytes": os.urandom(MIB),
}
PAYLOADS = {**TEXT_PAYLOADS, **BINARY_PAYLOADS}
assert len(PAYLOADS[r"exactly 1 MiB of text"]) == MIB


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    with Storage(tmp_path / "q") as storage:
        yield storage


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_payload_round_trips_byte_for_byte(tmp_path: Path, storage: Storage, name: str) -> None:
    payload = PAYLOADS[name]
    sent = Producer(storage, "orders").publish(payload)
    assert sent.payload == payload
    # Read back by a consumer of a storage opened afresh (no shared cache).
    with Storage(tmp_path / "q") as again:
        received = list(Consumer(again, "c", "orders").poll())
    assert [m.payload for m in received] == [payload]
    assert received[0] == sent
    # The same bytes go in as a str: str payloads are their UTF-8 encoding.
    if name in TEXT_PAYLOADS:
        as_text = Producer(storage, "text").publish(payload.decode("utf-8"))
        assert storage.read(as_text.sha).payload == payload


@pytest.mark.parametrize("name", list(TEXT_PAYLOADS))
def test_text_payload_is_the_commit_message_verbatim(storage: Storage, name: str) -> None:
    """No whitespace cleanup, no trailer, no encoding: any git client sees the payload."""
    payload = TEXT_PAYLOADS[name]
    message = Producer(storage, "orders").publish(payload)
    assert commit_message(storage.path, message.sha) == payload
    headers = commit_headers(storage.path, message.sha)
    assert not any(h.startswith("gitmq-encoding") for h in headers)


@pytest.mark.parametrize("name", list(BINARY_PAYLOADS))
def test_binary_payload_is_base64_marked_by_a_header(storage: Storage, name: str) -> None:
    payload = BINARY_PAYLOADS[name]
    message = Producer(storage, "orders").publish(payload)
    headers = commit_headers(storage.path, message.sha)
    assert "gitmq-encoding base64" in headers
    assert base64.b64decode(commit_message(storage.path, message.sha), validate=True) == payload


def test_every_payload_case_passes_git_fsck_strict(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    for payload in PAYLOADS.values():
        producer.publish(payload)
    producer.publish_many(PAYLOADS.values())
    fsck(storage.path)


def test_str_payload_with_escaped_bytes_round_trips(storage: Storage) -> None:
    """A str made from bytes with surrogateescape (e.g. from os.fsdecode) keeps its bytes."""
    raw = b"caf\xe9 \xff"
    message = Producer(storage, "orders").publish(raw.decode("utf-8", "surrogateescape"))
    assert storage.read(message.sha).payload == raw


def test_str_payload_that_utf8_cannot_encode_is_a_usage_error(storage: Storage) -> None:
    before = snapshot(storage.path)
    with pytest.raises(UsageError, match="payload"):
        Producer(storage, "orders").publish("lone surrogate \ud800")
    assert snapshot(storage.path) == before


def test_payload_must_be_str_or_bytes(storage: Storage) -> None:
    with pytest.raises(UsageError) as info:
        Producer(storage, "orders").publish(42)  # type: ignore[arg-type]
    assert info.value.message == "a payload must be str or bytes, not int"
    assert rev_parse(storage.path, "refs/heads/orders") is None


# ------------------------------------------------------------------- limits


def test_payload_over_one_mib_is_refused_and_nothing_is_written(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    producer.publish("before")
    before = snapshot(storage.path)
    with pytest.raises(PayloadTooLargeError) as info:
        producer.publish(b"x" * (MIB + 1))
    assert info.value.message == (
        "payload of 1048577 bytes is over the limit of 1048576 bytes for queue 'orders'; "
        "nothing was published (raise max_payload or store large data elsewhere and "
        "publish a reference)"
    )
    assert info.value.exit_code == 2
    assert snapshot(storage.path) == before


def test_batch_with_one_oversized_payload_writes_nothing(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    producer.publish("before")
    before = snapshot(storage.path)
    batch = ["a"] * 100 + [b"x" * (MIB + 1)] + ["b"] * 100
    with pytest.raises(PayloadTooLargeError):
        producer.publish_many(batch)
    assert snapshot(storage.path) == before


def test_payload_limit_is_configurable(storage: Storage) -> None:
    producer = Producer(storage, "orders", max_payload=10)
    assert producer.publish(b"0123456789").payload == b"0123456789"
    with pytest.raises(PayloadTooLargeError, match="payload of 11 bytes is over the limit of 10"):
        producer.publish(b"0123456789a")
    big = Producer(storage, "big", max_payload=2 * MIB)
    assert storage.read(big.publish(b"y" * (2 * MIB)).sha).payload == b"y" * (2 * MIB)


# ------------------------------------------------------------- commit layout


def test_message_is_an_empty_tree_commit_chained_to_the_previous(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    first, second = producer.publish("one"), producer.publish("two")
    third, fourth = producer.publish_many(["three", "four"])
    shas = branch_shas(storage.path, "orders")
    assert shas == [first.sha, second.sha, third.sha, fourth.sha]
    assert rev_parse(storage.path, "refs/heads/orders") == fourth.sha
    for index, sha in enumerate(shas):
        headers = commit_headers(storage.path, sha)
        assert headers[0] == f"tree {EMPTY_TREE}"
        parents = [h.removeprefix("parent ") for h in headers if h.startswith("parent ")]
        assert parents == ([] if index == 0 else [shas[index - 1]])
    assert git(storage.path, "ls-tree", "-r", fourth.sha) == b""
    assert (first.parent, second.parent, fourth.parent) == (None, first.sha, third.sha)


def test_commit_headers_exact_layout(storage: Storage) -> None:
    producer = Producer(storage, "orders", author=ALICE, committer=NODE, clock=lambda: NOON)
    first = producer.publish('{"id": 1}', {"content-type": "application/json", "x-b": "2 3"})
    second = producer.publish(b"\x00")
    stamp = int(NOON.timestamp())
    assert commit_headers(storage.path, first.sha) == [
        f"tree {EMPTY_TREE}",
        f"author Alice Producer <alice@example.invalid> {stamp} +0000",
        f"committer node-1 <gitmq@node-1.example.invalid> {stamp} +0000",
        f"gitmq-id {first.id}",
        "gitmq-header content-type application/json",
        "gitmq-header x-b 2 3",
    ]
    assert commit_headers(storage.path, second.sha) == [
        f"tree {EMPTY_TREE}",
        f"parent {first.sha}",
        f"author Alice Producer <alice@example.invalid> {stamp} +0000",
        f"committer node-1 <gitmq@node-1.example.invalid> {stamp} +0000",
        f"gitmq-id {second.id}",
        "gitmq-encoding base64",
    ]
    assert commit_body(storage.path, second.sha).endswith(b"\n\nAA==")


def test_author_and_time_are_what_git_shows(storage: Storage) -> None:
    plus_two = datetime(2024, 5, 1, 14, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    message = Producer(storage, "orders", author=ALICE, clock=lambda: plus_two).publish("x")
    shown = git(storage.path, "log", "-1", "--format=%an|%ae|%ai|%cn|%ce", message.sha)
    assert shown.decode().strip() == (
        "Alice Producer|alice@example.invalid|2024-05-01 14:30:05 +0200|"
        "Alice Producer|alice@example.invalid"
    )
    read = storage.read(message.sha)
    assert read.time == plus_two
    assert read.time.utcoffset() == timedelta(hours=2)
    assert (read.author, read.committer) == (ALICE, ALICE)


def test_published_message_equals_what_consumers_read(storage: Storage) -> None:
    """publish() returns the message as stored, down to its time (git keeps seconds)."""
    producer = Producer(storage, "orders", author=ALICE, committer=NODE)
    sent = [producer.publish("one", {"k": "v"}), *producer.publish_many(["two", ("3", {"a": "b"})])]
    assert [storage.read(m.sha) for m in sent] == sent
    assert list(Consumer(storage, "c", "orders").poll()) == sent


def test_ids_are_uuid7_unique_and_sorted_in_publish_order(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    messages = [producer.publish(str(i)) for i in range(50)] + producer.publish_many(
        [str(i) for i in range(500)]
    )
    ids = [m.id for m in messages]
    assert all(UUID7.match(i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for message in messages[:3]:
        assert f"gitmq-id {message.id}" in commit_headers(storage.path, message.sha)


def test_user_headers_round_trip(storage: Storage) -> None:
    headers = {
        "content-type": "application/json; charset=utf-8",
        "Trace.ID_1": "  spaces inside and around  ",
        "empty": "",
        "unicode": "Zoë ☃",
    }
    message = Producer(storage, "orders").publish("x", headers)
    assert dict(storage.read(message.sha).headers) == headers
    fsck(storage.path)


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"bad name": "v"}, "invalid header name 'bad name'"),
        ({"": "v"}, "invalid header name ''"),
        ({"-x": "v"}, "invalid header name '-x'"),
        ({"k": "two\nlines"}, "invalid value for header 'k': it must be one line"),
        ({"k": "cr\r"}, "invalid value for header 'k': it must be one line"),
        ({"k": "nul\x00"}, "invalid value for header 'k': it must be one line"),
    ],
)
def test_bad_headers_are_refused_and_nothing_is_written(
    storage: Storage, headers: dict[str, str], error: str
) -> None:
    before = snapshot(storage.path)
    with pytest.raises(UsageError, match=error.replace("(", r"\(")):
        Producer(storage, "orders").publish("x", headers)
    assert snapshot(storage.path) == before


# --------------------------------------------------- messages without an id


def plain_git_commit(repo: Path, message: bytes, parent: str | None = None) -> str:
    """A message as the Ruby gem (or `git commit-tree`) writes it: no gitmq headers."""
    args = ["commit-tree", EMPTY_TREE, "-F", "-"]
    if parent:
        args += ["-p", parent]
    return git(repo, *args, input=message).decode().strip()


def test_message_without_gitmq_id_gets_a_stable_derived_id(storage: Storage) -> None:
    first = plain_git_commit(storage.path, b"hello")
    second = plain_git_commit(storage.path, b"world", first)
    a, b = storage.read(first), storage.read(second)
    assert (a.payload, b.payload) == (b"hello", b"world")
    assert a.id.startswith("sha1-") and len(a.id) == 45
    assert a.id != b.id
    assert storage.read(first).id == a.id  # stable
    assert a.author == Identity("GitMQ Test", "gitmq-test@example.invalid")
    assert a.headers == {}


def test_derived_id_survives_re_parenting(storage: Storage) -> None:
    """Sync re-parents messages; a message without gitmq-id must keep its id."""
    base = plain_git_commit(storage.path, b"base")
    sha = plain_git_commit(storage.path, b"payload\n")
    body = commit_body(storage.path, sha)
    moved = reparent(body, base, NODE, NOON)
    assert moved != body
    assert derived_id(moved) == derived_id(body) == storage.read(sha).id
    decoded = decode("0" * 40, moved)
    assert (decoded.payload, decoded.parent, decoded.committer) == (b"payload\n", base, NODE)


def test_re_parenting_keeps_everything_but_parent_and_committer(storage: Storage) -> None:
    producer = Producer(storage, "orders", author=ALICE, clock=lambda: NOON)
    base = plain_git_commit(storage.path, b"base")
    original = producer.publish(b"\x00binary", {"k": "v"})
    moved = decode("0" * 40, reparent(commit_body(storage.path, original.sha), base, NODE, NOON))
    assert (moved.id, moved.payload, moved.author, moved.time, moved.headers) == (
        original.id,
        original.payload,
        original.author,
        original.time,
        original.headers,
    )
    assert (moved.parent, moved.committer) == (base, NODE)


# ------------------------------------------------------------ what git accepts


@pytest.mark.parametrize("count", [1, 63, 64, 1000])
def test_batches_are_loose_below_64_and_a_pack_from_64(storage: Storage, count: int) -> None:
    packs_before = set((storage.git_dir / "objects" / "pack").glob("*.pack"))
    messages = Producer(storage, "orders").publish_many(
        [f"message {i}\n" if i % 2 else b"\x00%d" % i for i in range(count)]
    )
    packs = set((storage.git_dir / "objects" / "pack").glob("*.pack")) - packs_before
    assert len(packs) == (1 if count >= 64 else 0)
    loose = [m for m in messages if (storage.objects_dir / m.sha[:2] / m.sha[2:]).exists()]
    assert len(loose) == (0 if count >= 64 else count)
    assert branch_shas(storage.path, "orders") == [m.sha for m in messages]
    fsck(storage.path)
    if packs:
        verify = run(["git", "verify-pack", "-v", str(packs.pop().with_suffix(".idx"))])
        assert verify.status == 0, str(verify)
        assert f"{messages[0].sha} commit" in verify.out


def test_a_server_with_receive_fsck_objects_accepts_our_messages(
    tmp_path: Path, storage: Storage
) -> None:
    producer = Producer(storage, "orders", author=ALICE)
    producer.publish("one", {"content-type": "text/plain"})
    producer.publish(b"\x00\xff")
    producer.publish_many([f"batch {i}" for i in range(100)])
    server = tmp_path / "server.git"
    git(server, "init", "--bare", "-q")
    git(server, "config", "receive.fsckObjects", "true")
    git(storage.path, "push", "-q", f"file://{server}", "refs/heads/orders:refs/heads/orders")
    assert rev_parse(server, "refs/heads/orders") == rev_parse(storage.path, "refs/heads/orders")
    fsck(server)


# ------------------------------------------------------------- helpers on Message


def test_message_text_and_json_helpers(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    doc = producer.publish('{"id": 1, "name": "Zoë"}')
    assert doc.text == '{"id": 1, "name": "Zoë"}'
    assert doc.json() == {"id": 1, "name": "Zoë"}
    binary = producer.publish(b"\xff")
    with pytest.raises(UsageError, match=f"message {binary.id} is not UTF-8 text; use .payload"):
        _ = binary.text
    text = producer.publish("not json")
    with pytest.raises(UsageError, match=f"message {text.id} is not valid JSON"):
        text.json()
    assert isinstance(doc, Message)
