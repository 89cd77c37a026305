"""A rewritten or deleted remote queue branch (issue 9), through a real git daemon.

Queue branches on a remote only grow. Someone force-sets one to other history:
the node must move nothing of that queue, say what happened and how to repair
it, and ``gitmq repair`` must do either repair. A deleted branch is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from nodes import Cluster, TestNode, remote_messages
from util import git, gitmq, ok, rev_parse, wait_for

pytestmark = pytest.mark.slow

FOREIGN = "Eve <eve@example.com> 1700000000 +0000"


def commit(repo: Path, body: bytes) -> str:
    out = git(repo, "hash-object", "-t", "commit", "-w", "--stdin", input=body)
    return out.decode().strip()


def foreign_history(repo: Path, payloads: list[str], base: Sequence[bytes] = ()) -> str:
    """Commits written straight into ``repo``: copies of the message bodies ``base``
    on a new root chain (committed by someone else, so other commits with the same
    ids), then plain messages ``payloads``; returns the tip."""
    parent: str | None = None
    for body in base:
        head, _, message = body.partition(b"\n\n")
        kept = [
            f"committer {FOREIGN}".encode() if ln.startswith(b"committer ") else ln
            for ln in head.split(b"\n")
            if not ln.startswith(b"parent ")
        ]
        if parent:
            kept.insert(1, f"parent {parent}".encode())
        parent = commit(repo, b"\n".join(kept) + b"\n\n" + message)
    for payload in payloads:
        lines = ["tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904"]
        if parent:
            lines.append(f"parent {parent}")
        lines += [f"author {FOREIGN}", f"committer {FOREIGN}"]
        parent = commit(repo, ("\n".join(lines) + "\n\n" + payload).encode())
    assert parent is not None
    return parent


def refs_of(node: TestNode) -> dict[str, str]:
    out = git(node.storage, "for-each-ref", "--format=%(refname) %(objectname)").decode()
    return dict(line.split(" ") for line in out.splitlines())


def synced_node(cluster: Cluster) -> TestNode:
    """Node ``a``: two messages pushed and delivered, then a third left unpushed."""
    node = cluster.node("a", ["c-a"])
    node.publish("orders", "m1", "m2")
    ok(node.once())
    assert node.payloads("c-a") == ["m1", "m2"]
    node.publish("orders", "m3")
    return node


def body(repo: Path, sha: str) -> bytes:
    return git(repo, "cat-file", "commit", sha)


def test_a_rewritten_remote_branch_moves_nothing_and_says_how_to_repair(
    cluster: Cluster, central: Path
) -> None:
    node = synced_node(cluster)
    confirmed = rev_parse(node.storage, "refs/remotes/central/orders")
    assert confirmed is not None
    foreign = foreign_history(central, ["foreign"])
    git(central, "update-ref", "refs/heads/orders", foreign)
    tag = rev_parse(central, "refs/tags/c-a")
    before = refs_of(node)

    for _ in range(2):  # and it stays so, cycle after cycle
        result = node.once()
        assert result.status == 6, str(result)
        line = result.err.strip().splitlines()[-1]
        assert line == (
            f"error: remote central rewrote queue branch orders: its tip {foreign[:12]} does "
            f"not contain this node's confirmed tip {confirmed[:12]}, so nothing of orders "
            f"moves here and its consumers keep their place; run 'gitmq repair --config "
            f"NODE.yml orders --restore' to push this node's history back, or "
            f"'--adopt-remote' to take the remote's (docs/operations.md)"
        ), result.err
        after = {r: s for r, s in refs_of(node).items() if not r.startswith("refs/gitmq/remotes")}
        assert after == {r: s for r, s in before.items() if not r.startswith("refs/gitmq/remotes")}
        assert rev_parse(central, "refs/heads/orders") == foreign
    assert node.payloads("c-a") == ["m1", "m2"]

    # Its consumers' tags do not move on the remote either: a seek back is not pushed.
    first = git(node.storage, "rev-list", "--reverse", confirmed).decode().split()[0]
    ok(gitmq("seek", node.storage, "orders", "c-a", first))
    assert node.once().status == 6
    assert rev_parse(central, "refs/tags/c-a") == tag
    assert node.payloads("c-a") == ["m1", "m2", "m1", "m2"]  # replayed here, as asked


def test_repair_restore_pushes_the_confirmed_history_back(cluster: Cluster, central: Path) -> None:
    node = synced_node(cluster)
    confirmed = rev_parse(node.storage, "refs/remotes/central/orders")
    assert confirmed is not None
    foreign = foreign_history(central, ["foreign"])
    git(central, "update-ref", "refs/heads/orders", foreign)

    out = ok(gitmq("repair", "--config", node.config, "orders", "--restore")).out
    assert out.strip() == (
        f"queue orders: restore done; remote was {foreign[:12]}, now {confirmed[:12]}; "
        f"1 remote commit left the branch (still readable as {foreign} until pruned)"
    )
    assert rev_parse(central, "refs/heads/orders") == confirmed
    ok(node.once())
    assert [m.payload for m in remote_messages(central, "orders")] == ["m1", "m2", "m3"]
    assert node.payloads("c-a") == ["m1", "m2", "m3"]
    again = gitmq("repair", "--config", node.config, "orders", "--restore")
    assert again.status == 2 and "nothing to repair" in again.err, str(again)


def test_repair_adopt_remote_takes_its_history_and_places_the_consumers(
    cluster: Cluster, central: Path
) -> None:
    node = synced_node(cluster)
    m1, m2 = (
        body(node.storage, sha)
        for sha in git(node.storage, "rev-list", "--reverse", "refs/remotes/central/orders")
        .decode()
        .split()
    )
    # The remote now holds copies of m1 and m2 on a new root, and one message more.
    foreign = foreign_history(central, ["foreign"], [m1, m2])
    git(central, "update-ref", "refs/heads/orders", foreign)
    assert node.once().status == 6

    out = ok(gitmq("repair", "--config", node.config, "orders", "--adopt-remote")).out
    assert out.strip().endswith(
        "1 unpushed message re-parented onto it; consumer tags moved: c-a"
    ), out
    assert rev_parse(node.storage, "refs/remotes/central/orders") == foreign
    ok(node.once())
    assert [m.payload for m in remote_messages(central, "orders")] == [
        "m1",
        "m2",
        "foreign",
        "m3",
    ]
    assert node.payloads("c-a") == ["m1", "m2", "foreign", "m3"]  # nothing twice


def test_a_deleted_remote_branch_is_held_back_until_restored(
    cluster: Cluster, central: Path
) -> None:
    node = synced_node(cluster)
    confirmed = rev_parse(central, "refs/heads/orders")
    assert confirmed is not None
    git(central, "update-ref", "-d", "refs/heads/orders")
    before = refs_of(node)

    result = node.once()
    assert result.status == 6, str(result)
    assert result.err.strip().splitlines()[-1] == (
        f"error: remote central has no branch orders although it confirmed {confirmed[:12]} "
        f"here, so nothing of orders moves here and its consumers keep their place; run "
        f"'gitmq repair --config NODE.yml orders --restore' to push this node's history "
        f"back, or '--adopt-remote' to take the remote's (docs/operations.md)"
    ), result.err
    assert refs_of(node) == before and rev_parse(central, "refs/heads/orders") is None

    out = ok(gitmq("repair", "--config", node.config, "orders", "--restore")).out
    assert out.strip() == (
        f"queue orders: restore done; remote was no branch, now {confirmed[:12]}; "
        f"0 remote commits left the branch"
    )
    ok(node.once())  # the unpushed message follows
    assert [m.payload for m in remote_messages(central, "orders")] == ["m1", "m2", "m3"]
    assert node.payloads("c-a") == ["m1", "m2", "m3"]


def test_repair_refuses_what_it_cannot_repair(cluster: Cluster, central: Path) -> None:
    node = cluster.node("a", ["c-a"])
    node.publish("orders", "m1")
    ok(node.once())
    cases = [
        (["nosuch", "--restore"], 2, "queue 'nosuch' is not in"),
        (["orders", "--restore"], 2, "nothing to repair"),
        (["orders"], 2, "one of the arguments --restore --adopt-remote is required"),
    ]
    for args, status, text in cases:
        result = gitmq("repair", "--config", node.config, *args)
        assert result.status == status and text in result.err, str(result)
    git(central, "update-ref", "-d", "refs/heads/orders")
    result = gitmq("repair", "--config", node.config, "orders", "--adopt-remote")
    assert result.status == 4 and "use --restore" in result.err, str(result)


@pytest.mark.parametrize("damage", ["rewritten", "deleted"])
def test_running_nodes_hold_the_damaged_queue_and_keep_delivering_the_others(
    cluster: Cluster, central: Path, damage: str
) -> None:
    """Two running nodes, two queues: when one queue's remote branch is rewritten or
    deleted, both nodes hold that queue (nothing of it moves, the error is logged)
    while the other queue keeps flowing between them."""
    nodes = [
        cluster.node(
            name,
            {f"orders-{name}": "orders", f"audit-{name}": "audit"},  # one offset per node
            queues=("orders", "audit"),
            interval="300ms",
        )
        for name in ("a", "b")
    ]
    for node in nodes:
        node.start()
    nodes[0].publish("orders", "o1")
    nodes[0].publish("audit", "a1")
    for node in nodes:
        wait_for(lambda node=node: node.payloads(f"orders-{node.name}") == ["o1"], timeout=60)
        wait_for(lambda node=node: node.payloads(f"audit-{node.name}") == ["a1"], timeout=60)
    confirmed = rev_parse(central, "refs/heads/orders")
    assert confirmed is not None
    if damage == "rewritten":
        git(central, "update-ref", "refs/heads/orders", foreign_history(central, ["evil"]))
        said = "rewrote queue branch orders"
    else:
        git(central, "update-ref", "-d", "refs/heads/orders")
        said = "has no branch orders"

    nodes[1].publish("orders", "o2")  # held on b: never pushed while orders is damaged
    nodes[1].publish("audit", "a2")
    for node in nodes:
        wait_for(lambda node=node: node.payloads(f"audit-{node.name}") == ["a1", "a2"], timeout=60)
        wait_for(lambda node=node: said in node.log_text(), timeout=60)
        assert node.payloads(f"orders-{node.name}") == ["o1"]
        assert rev_parse(node.storage, "refs/remotes/central/orders") == confirmed
    assert all(m.payload != b"o2" for m in remote_messages(central, "orders"))
    for node in nodes:
        assert node.stop() == 0
