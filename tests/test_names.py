"""Queue and consumer names become refs: they must obey git's own rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from util import fails, gitmq, run, snapshot

from gitmq import Consumer, Producer, Storage
from gitmq.errors import InvalidNameError, StorageError
from gitmq.names import check_consumer, check_queue

VALID = [
    "orders",
    "a",
    "a/b",
    "team/orders/v2",
    "a-b_c.d",
    "v1.0",
    "orders.dlq",
    "foo@bar",
    "x@",
    "a+b",
    "#hash",
    "a,b=c;d!e%f$g&h'i\"j",
    "a{b}c|d<e>f",
    "ünïcödé",
    "日本語",
    "a.b/c.d",
    "a.lockx",
    "x" * 200,
]
INVALID = [
    "",
    "a..b",
    "..",
    "-x",
    "-",
    "HEAD",
    "a b",
    " a",
    "a\tb",
    "a\nb",
    "a\x01b",
    "a\x7fb",
    "a~b",
    "a^b",
    "a:b",
    "a?b",
    "a*b",
    "a[b",
    "a\\b",
    "/a",
    "a/",
    "a//b",
    ".a",
    "a/.b",
    "a.",
    "a/b.",
    "a.lock",
    "a.lock/b",
    "a/b.lock",
    "a@{b",
    "@{-1}",
]
# Names git accepts as a branch but GitMQ refuses on purpose (docs/format.md).
STRICTER = ["@", "refs/heads/x", "refs/tags/x", "x" * 201]


def git_accepts_branch(name: str) -> bool:
    return run(["git", "check-ref-format", "--branch", name]).status == 0


def git_accepts_tag(name: str) -> bool:
    return run(["git", "check-ref-format", f"refs/tags/{name}"]).status == 0


def gitmq_accepts(name: str) -> bool:
    try:
        check_queue(name)
    except InvalidNameError:
        return False
    return True


@pytest.mark.parametrize("name", VALID + INVALID + STRICTER, ids=repr)
def test_names_agree_with_git_check_ref_format(name: str) -> None:
    """Every name GitMQ accepts is a valid branch and tag for git; every name git
    refuses, GitMQ refuses; GitMQ is stricter only on the documented names."""
    ours = gitmq_accepts(name)
    if ours:
        assert git_accepts_branch(name), f"GitMQ accepts {name!r}, git check-ref-format refuses"
        assert git_accepts_tag(name), f"GitMQ accepts {name!r}, git refuses it as a tag"
    if not git_accepts_branch(name):
        assert not ours, f"git refuses {name!r}, GitMQ accepts it"
    assert ours == (name in VALID), f"GitMQ {'accepts' if ours else 'refuses'} {name!r}"
    if name in STRICTER:
        assert git_accepts_branch(name), f"{name!r} is not stricter than git: drop it"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a..b", "it contains '..' or '@{'"),
        ("-x", "it starts with '-'"),
        ("HEAD", "it is reserved by git"),
        ("", "it is empty"),
        ("a b", "it contains a space, a control character or one of ~ ^ : ? * [ \\"),
        ("a.lock", "component 'a.lock' ends with '.lock'"),
        ("a/", "it starts or ends with '/' or contains '//'"),
    ],
)
def test_error_names_the_bad_value_and_the_rule(name: str, reason: str) -> None:
    with pytest.raises(InvalidNameError) as queue_error:
        check_queue(name)
    assert queue_error.value.message == f"invalid queue name {name!r}: {reason}"
    with pytest.raises(InvalidNameError) as consumer_error:
        check_consumer(name)
    assert consumer_error.value.message == f"invalid consumer name {name!r}: {reason}"


@pytest.mark.parametrize("bad", ["a..b", "-x", "HEAD"])
def test_api_refuses_bad_names_and_writes_nothing(tmp_path: Path, bad: str) -> None:
    with Storage(tmp_path / "q") as storage:
        Producer(storage, "orders").publish("one")
        before = snapshot(storage.path)
        with pytest.raises(InvalidNameError, match="invalid queue name"):
            Producer(storage, bad)
        with pytest.raises(InvalidNameError, match="invalid queue name"):
            Consumer(storage, "billing", bad)
        with pytest.raises(InvalidNameError, match="invalid consumer name"):
            Consumer(storage, bad, "orders")
        with pytest.raises(InvalidNameError, match="invalid queue name"):
            Consumer(storage, "billing", "orders", dead_letter=bad)
        assert snapshot(storage.path) == before


@pytest.mark.parametrize("bad", ["a..b", "-x", "HEAD"])
def test_cli_refuses_bad_names_and_creates_nothing(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "q"
    # "--" so that "-x" reaches GitMQ's own check instead of argparse's option parsing.
    fails(
        gitmq("publish", path, "--", bad, "hello"),
        2,
        f"invalid queue name {bad!r}: " + _reason(bad),
    )
    fails(
        gitmq("consume", "--drain", path, "orders", "--", bad),
        2,
        f"invalid consumer name {bad!r}: " + _reason(bad),
    )
    fails(
        gitmq("consume", "--drain", path, "--", bad, "billing"),
        2,
        f"invalid queue name {bad!r}: " + _reason(bad),
    )
    assert not path.exists()


def _reason(name: str) -> str:
    with pytest.raises(InvalidNameError) as info:
        check_queue(name)
    return info.value.message.partition(": ")[2]


def test_queue_and_prefix_queue_cannot_both_exist(tmp_path: Path) -> None:
    """Git stores refs as files: 'a' and 'a/b' cannot both be branches. The error
    says so, in both orders, and nothing is written."""
    with Storage(tmp_path / "q") as storage:
        Producer(storage, "a/b").publish("x")
        Producer(storage, "c").publish("y")
        before = snapshot(storage.path)
        with pytest.raises(StorageError) as first:
            Producer(storage, "a").publish("z")
        assert first.value.message == (
            "cannot create ref refs/heads/a: refs named refs/heads/a/... exist"
        )
        with pytest.raises(StorageError) as second:
            Producer(storage, "c/d").publish("z")
        assert second.value.message == (
            "cannot create ref refs/heads/c/d: a ref with a prefix of that name exists"
        )
        assert snapshot(storage.path) == before
