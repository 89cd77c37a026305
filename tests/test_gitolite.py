"""Server refusals from a real access-controlled server (issue 9): gitolite3.

gitolite's per-ref rules refuse updates the way GitHub's branch protection and
rulesets do (TESTING.md has the recipe). Here they forbid force pushes on
queue branches and any update of one consumer tag. A node pushing to it keeps
delivering; the refused tag is reported with gitolite's reason, once; a repair
that needs a forced update is refused with the same words.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import Cluster, TestNode, remote_messages
from servers import Gitolite
from util import git, gitmq, ok, rev_parse

pytestmark = pytest.mark.slow

RULES = """\
repo queues
    -       refs/tags/c-blocked$            =   node
    RW+     refs/heads/[^/]+\\.seg\\.[0-9]+$  =   node
    RW      refs/heads/                     =   node
    RW+     refs/tags/                      =   node
    RW+     refs/gitmq/                     =   node
"""


@pytest.fixture
def gitolite(tmp_path: Path) -> Iterator[Gitolite]:
    if os.geteuid() != 0:
        pytest.skip("gitolite runs as its own system user: the test needs root")
    if shutil.which("gitolite") is None:
        pytest.skip("gitolite3 is not installed (.ci/setup installs it)")
    with Gitolite(tmp_path / "gitolite", RULES) as server:
        yield server


def node_on(cluster: Cluster, server: Gitolite, consumers: list[str]) -> TestNode:
    remote = {"ssh_key": str(server.client_key), "known_hosts": str(server.known_hosts)}
    cluster.remote_url = server.url("queues")
    return cluster.node("a", consumers, remote=remote)


def test_a_node_on_gitolite_pushes_what_it_may_and_reports_the_refused_tag(
    tmp_path: Path, gitolite: Gitolite
) -> None:
    repo = gitolite.home / "repositories" / "queues.git"
    with Cluster(tmp_path / "nodes", gitolite.url("queues")) as cluster:
        node = node_on(cluster, gitolite, ["c-ok", "c-blocked"])
        node.publish("orders", "m1", "m2")
        result = node.once()
        assert result.status == 6, str(result)
        assert (
            "remote central refused the update of refs/tags/c-blocked (hook declined: FATAL: W "
            "refs/tags/c-blocked queues node DENIED by refs/tags/c-blocked$"
        ) in result.err, result.err
        assert [m.payload for m in remote_messages(repo, "orders")] == ["m1", "m2"]
        assert rev_parse(repo, "refs/tags/c-ok") == rev_parse(repo, "refs/heads/orders")
        assert rev_parse(repo, "refs/tags/c-blocked") is None

        node.publish("orders", "m3")
        assert node.once().status == 6  # the tag is still refused; the message is not
        assert [m.payload for m in remote_messages(repo, "orders")] == ["m1", "m2", "m3"]
        assert node.payloads("c-blocked") == ["m1", "m2", "m3"]

        # The queue branch cannot be forced: a restore is refused with gitolite's words.
        body = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
        body += b"author E <e@x> 1700000000 +0000\ncommitter E <e@x> 1700000000 +0000\n\nx\n"
        foreign = git(repo, "hash-object", "-t", "commit", "-w", "--stdin", input=body)
        foreign_sha = foreign.decode().strip()
        git(repo, "update-ref", "refs/heads/orders", foreign_sha)
        assert node.once().status == 6
        refused = gitmq("repair", "--config", node.config, "orders", "--restore")
        assert refused.status == 6, str(refused)
        assert refused.err.startswith(
            "error: remote central refused to restore refs/heads/orders (hook declined: FATAL: + "
            "refs/heads/orders queues node DENIED by fallthru"
        ), refused.err
        assert rev_parse(repo, "refs/heads/orders") == foreign_sha
        ok(gitmq("repair", "--config", node.config, "orders", "--adopt-remote"))
