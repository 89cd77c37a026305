"""Compatibility with the Ruby gem's repositories, both ways (docs/format.md).

The gem (Rugged) keeps a bare repository with an unborn ``master``, writes each
message as a commit of the empty tree whose message is the payload, and marks
a consumer's progress with a lightweight tag on the last processed message; it
reads by walking from the branch tip back to the tag. The gem itself needs Ruby
and libgit2, so these tests make the same objects with plain git commands.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
from util import (
    EMPTY_TREE,
    GITMQ_CONSUME,
    GITMQ_PRODUCE,
    commit_message,
    fsck,
    git,
    git_text,
    gitmq,
    ok,
    rev_parse,
    run,
)

from gitmq import Consumer, Producer, Storage

GEM_PAYLOADS = [
    b"Hello, world!",
    b'{"order": 1, "items": ["apple"]}',
    b"multi\nline\n\n",
    b"trailing spaces   ",
    b"",
    "unicode ☃".encode(),
]
OUR_PAYLOADS = [
    b"from gitmq",
    b'{"id": 2}\n',
    b"---\nyaml: true\n",
    b"  spaced  \n\n",
    b"",
]


def gem_init(path: Path) -> Path:
    """``Rugged::Repository.init_at(path, :bare)``."""
    assert run(["git", "init", "--bare", "-q", str(path)]).status == 0
    return path


def gem_publish(repo: Path, branch: str, payload: bytes) -> str:
    """The gem's ``Producer#publish``: an empty-tree commit on the branch tip."""
    tree = git_text(repo, "mktree")  # writes the empty tree, like Rugged::Tree::Builder
    assert tree == EMPTY_TREE
    parent = rev_parse(repo, f"refs/heads/{branch}")
    args = ["commit-tree", tree, "-F", "-"] + (["-p", parent] if parent else [])
    sha = git(repo, *args, input=payload).decode().strip()
    git(repo, "update-ref", f"refs/heads/{branch}", sha, parent or "")
    return sha


def gem_tag(repo: Path, consumer: str, sha: str) -> None:
    """The gem's ``repo.tags.create(label, commit, true)``: a forced lightweight tag."""
    git(repo, "tag", "-f", consumer, sha)


def gem_poll(repo: Path, branch: str, consumer: str) -> list[tuple[str, bytes]]:
    """The gem's reader: walk from the branch tip, hide the tag, oldest first;
    the message of each commit is the payload."""
    spec = [f"refs/heads/{branch}"]
    if rev_parse(repo, f"refs/tags/{consumer}"):
        spec.append(f"^refs/tags/{consumer}")
    shas = git_text(repo, "rev-list", "--topo-order", "--reverse", *spec).split()
    return [(sha, commit_message(repo, sha)) for sha in shas]


@pytest.fixture
def gem_repo(tmp_path: Path) -> Path:
    """A gem repository: three messages consumed by 'billing', three more pending."""
    repo = gem_init(tmp_path / "gem.git")
    shas = [gem_publish(repo, "master", p) for p in GEM_PAYLOADS]
    gem_tag(repo, "billing", shas[2])
    return repo


def test_gem_repository_opens_unchanged(tmp_path: Path) -> None:
    repo = gem_init(tmp_path / "fresh.git")
    refs_before = git(repo, "for-each-ref")
    with Storage(repo, create=False) as storage:
        assert storage.git_dir == repo
        assert list(Consumer(storage, "billing", "master").poll()) == []
    assert git(repo, "for-each-ref") == refs_before == b""
    assert git_text(repo, "symbolic-ref", "HEAD") == "refs/heads/master"
    assert rev_parse(repo, "HEAD") is None  # master is still unborn


def test_we_consume_what_the_gem_wrote_starting_after_its_tag(gem_repo: Path) -> None:
    with Storage(gem_repo) as storage:
        consumer = Consumer(storage, "billing", "master")
        pending = list(consumer.poll())
        assert [m.payload for m in pending] == GEM_PAYLOADS[3:]
        first = pending[0]
        assert first.id.startswith("sha1-")
        assert first.author.name == "GitMQ Test"  # whatever identity git used
        assert first.headers == {}
        for message in pending:
            consumer.ack(message)
    tip = rev_parse(gem_repo, "refs/heads/master")
    assert rev_parse(gem_repo, "refs/tags/billing") == tip
    assert git_text(gem_repo, "cat-file", "-t", "refs/tags/billing") == "commit"  # lightweight
    assert gem_poll(gem_repo, "master", "billing") == []


def test_a_new_consumer_of_a_gem_queue_starts_at_the_first_message(gem_repo: Path) -> None:
    with Storage(gem_repo) as storage:
        assert [m.payload for m in Consumer(storage, "audit", "master").poll()] == GEM_PAYLOADS


def test_gem_consumer_tag_named_branch_dot_consumer_is_continued(gem_repo: Path) -> None:
    """gitmqueue 0.1 names its tag ``<branch>.<consumer>``: that is just a consumer name."""
    shas = git_text(gem_repo, "rev-list", "--reverse", "master").split()
    gem_tag(gem_repo, "master.consumer1", shas[4])
    with Storage(gem_repo) as storage:
        pending = list(Consumer(storage, "master.consumer1", "master").poll())
    assert [m.payload for m in pending] == GEM_PAYLOADS[5:]


def test_the_gem_reads_what_we_write(gem_repo: Path) -> None:
    with Storage(gem_repo) as storage:
        producer = Producer(storage, "master")
        sent = [producer.publish(p) for p in OUR_PAYLOADS[:2]]
        sent += producer.publish_many(OUR_PAYLOADS[2:])
    # The gem's reader walks from its tag: the rest of its own messages, then ours.
    polled = gem_poll(gem_repo, "master", "billing")
    assert [payload for _, payload in polled] == GEM_PAYLOADS[3:] + OUR_PAYLOADS
    assert [sha for sha, _ in polled][-len(sent) :] == [m.sha for m in sent]
    # Any git client sees the payload as the commit message, byte for byte.
    log = git(gem_repo, "log", "-z", "--reverse", "--format=%B", "master")
    assert log.split(b"\x00")[:-1] == GEM_PAYLOADS + OUR_PAYLOADS
    for message in sent:
        assert git_text(gem_repo, "cat-file", "-t", message.sha) == "commit"
        assert git_text(gem_repo, "rev-parse", f"{message.sha}^{{tree}}") == EMPTY_TREE
    # The gem moves its tag past our messages and goes on.
    gem_tag(gem_repo, "billing", polled[-1][0])
    assert gem_poll(gem_repo, "master", "billing") == []
    fsck(gem_repo)


def test_binary_payloads_reach_the_gem_as_marked_base64(tmp_path: Path) -> None:
    """The gem cannot decode, but it sees text and the marker header (docs/format.md)."""
    repo = gem_init(tmp_path / "gem.git")
    with Storage(repo) as storage:
        message = Producer(storage, "master").publish(b"\x00\xff")
    assert gem_poll(repo, "master", "billing") == [(message.sha, b"AP8=")]
    assert b"\ngitmq-encoding base64\n" in git(repo, "cat-file", "commit", message.sha)


def test_consumers_hand_over_between_the_gem_and_us(gem_repo: Path) -> None:
    """Gem and GitMQ interleave on one branch and one consumer tag; nothing is
    delivered twice and nothing is skipped."""
    delivered: list[bytes] = []
    with Storage(gem_repo) as storage:
        producer = Producer(storage, "master")
        consumer = Consumer(storage, "billing", "master")
        for message in consumer.poll():  # we take over from the gem's tag
            delivered.append(message.payload)
            consumer.ack(message)
        producer.publish("ours 1")
        gem_publish(gem_repo, "master", b"gem 1")
        for sha, payload in gem_poll(gem_repo, "master", "billing"):  # the gem takes over
            delivered.append(payload)
            gem_tag(gem_repo, "billing", sha)
        gem_publish(gem_repo, "master", b"gem 2")
        producer.publish("ours 2")
        for message in consumer.poll():  # and we again
            delivered.append(message.payload)
            consumer.ack(message)
    assert delivered == [*GEM_PAYLOADS[3:], b"ours 1", b"gem 1", b"gem 2", b"ours 2"]
    fsck(gem_repo)


def test_gem_repository_after_git_gc(gem_repo: Path) -> None:
    """A gem repository someone ran `git gc` on: packed objects, packed refs."""
    git(gem_repo, "gc", "-q", "--prune=now")
    assert not (gem_repo / "refs/tags/billing").exists()
    with Storage(gem_repo) as storage:
        consumer = Consumer(storage, "billing", "master")
        pending = list(consumer.poll())
        assert [m.payload for m in pending] == GEM_PAYLOADS[3:]
        consumer.ack_through(pending[-1])
        Producer(storage, "master").publish("after gc")
        assert [m.payload for m in consumer.poll()] == [b"after gc"]
    fsck(gem_repo)


def test_cli_on_a_gem_repository(gem_repo: Path) -> None:
    printed = ok(gitmq("consume", "--drain", gem_repo, "master", "billing"))
    assert printed.stdout == b"".join(p + b"\n" for p in GEM_PAYLOADS[3:])
    log = ok(gitmq("log", "--json", "-n", "1", gem_repo, "master")).out.splitlines()
    assert len(log) == 1
    assert '"id": "sha1-' in log[0]


def test_console_scripts_keep_the_gems_command_lines() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["gitmq-produce"] == "gitmq.cli.gem:produce_main"
    assert scripts["gitmq-consume"] == "gitmq.cli.gem:consume_main"
    assert scripts["gitmq"] == "gitmq.cli.main:main"
    produce = ok(run([*GITMQ_PRODUCE, "--help"]))
    assert produce.out.splitlines()[0] == "usage: gitmq-produce [-h] path branch"
    consume = ok(run([*GITMQ_CONSUME, "--help"]))
    assert consume.out.splitlines()[0] == "usage: gitmq-consume [-h] path branch consumer"
