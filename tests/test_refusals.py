"""Server-side refusals are not lost races (issue 9), against a real git daemon.

The remote ``central`` gets hooks that refuse some updates, as a protected
branch, a ruleset or a pre-receive hook does. The node must report the ref and
the server's reason once, leave that ref out of its pushes, and keep pushing
everything else: the atomic push no longer holds new messages hostage.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nodes import Cluster, remote_messages
from util import rev_parse, wait_for

from gitmq.refusals import Refusals

pytestmark = pytest.mark.slow


def hook(central: Path, name: str, script: str) -> None:
    path = central / "hooks" / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def payloads(central: Path, queue: str) -> list[str]:
    return [m.payload for m in remote_messages(central, queue)]


def test_a_refused_tag_is_left_out_and_messages_keep_flowing(
    cluster: Cluster, central: Path
) -> None:
    # Like a GitHub ruleset on one tag: git names the ref it refused.
    hook(
        central,
        "update",
        'case "$1" in refs/tags/c-blocked) '
        'echo "GH013: Repository rule violations found for $1." >&2; exit 1;; esac\n',
    )
    node = cluster.node("a", ["c-ok", "c-blocked"])
    node.publish("orders", "m1", "m2")
    result = node.once()
    assert result.status == 6, str(result)
    line = (
        "remote central refused the update of refs/tags/c-blocked (hook declined: GH013: "
        "Repository rule violations found for refs/tags/c-blocked.); it is left out of "
        "pushes and the rest goes on, next try in 30 s; fix the branch protection, ruleset "
        "or hook that refuses it (docs/operations.md)"
    )
    assert line in result.err, result.err
    assert payloads(central, "orders") == ["m1", "m2"]
    assert rev_parse(central, "refs/tags/c-ok") == rev_parse(central, "refs/heads/orders")
    assert rev_parse(central, "refs/tags/c-blocked") is None

    # A running node: new messages and the other tag keep landing, every cycle, and
    # the refusal is reported once (the next try is 30 s away), not retried each cycle.
    started = time.monotonic()
    node.start("--log-format", "json")
    for i in range(3, 8):
        node.publish("orders", f"m{i}")
        wait_for(lambda i=i: payloads(central, "orders")[-1:] == [f"m{i}"], timeout=30)
    wait_for(
        lambda: rev_parse(central, "refs/tags/c-ok") == rev_parse(central, "refs/heads/orders")
    )
    records = node.sync_records()
    tries = 1 + int((time.monotonic() - started) // 30)  # one, then once per backoff
    assert 1 <= sum(len(r["refused"]) for r in records) <= tries, records
    assert all(r["rejections"] == 0 for r in records), records
    assert rev_parse(central, "refs/tags/c-blocked") is None
    assert node.payloads("c-blocked") == [f"m{i}" for i in range(1, 8)]  # still delivered


def test_a_pre_receive_refusal_of_the_whole_push_is_narrowed_to_its_ref(
    cluster: Cluster, central: Path
) -> None:
    # A pre-receive hook declines every ref of the push and does not say which one.
    hook(
        central,
        "pre-receive",
        'while read old new ref; do [ "$ref" = refs/heads/frozen ] && refused=1; done\n'
        '[ -z "$refused" ] || { echo "this queue is closed for maintenance" >&2; exit 1; }\n',
    )
    node = cluster.node("a", {"c-a": "orders"}, queues=("orders", "frozen"))
    node.publish("orders", "o1")
    node.publish("frozen", "f1")
    result = node.once()
    assert result.status == 6, str(result)
    assert (
        "remote central refused the update of refs/heads/frozen (pre-receive hook declined: "
        "this queue is closed for maintenance); it is left out of pushes" in result.err
    ), result.err
    assert payloads(central, "orders") == ["o1"]
    assert rev_parse(central, "refs/heads/frozen") is None
    assert node.payloads("c-a") == ["o1"]
    assert rev_parse(central, "refs/tags/c-a") == rev_parse(central, "refs/heads/orders")


# ------------------------------------------------------------- the search


@pytest.mark.parametrize(
    ("pushed", "refused", "said", "held", "deferred"),
    [
        # git names the ref: the others went down with the atomic push
        (
            ["refs/heads/q", "refs/tags/t"],
            {"refs/tags/t": "hook declined"},
            "",
            ["refs/tags/t"],
            [],
        ),
        # one ref pushed: it is the one
        (["refs/heads/q"], {"refs/heads/q": "pre-receive hook declined"}, "", ["refs/heads/q"], []),
        # every ref declined, the server's words name one (not its .dlq)
        (
            ["refs/heads/q", "refs/heads/q.dlq"],
            {"refs/heads/q": "x", "refs/heads/q.dlq": "x"},
            "GH006: Protected branch update failed for refs/heads/q.",
            ["refs/heads/q"],
            [],
        ),
        # nothing says which: set the second half aside and try again
        (
            ["refs/heads/a", "refs/heads/b", "refs/tags/c"],
            {"refs/heads/a": "x", "refs/heads/b": "x", "refs/tags/c": "x"},
            "closed",
            [],
            ["refs/heads/b", "refs/tags/c"],
        ),
    ],
)
def test_which_ref_a_refusal_holds_back(
    pushed: list[str], refused: dict[str, str], said: str, held: list[str], deferred: list[str]
) -> None:
    refusals = Refusals()
    assert sorted(refusals.isolate(pushed, refused, said)) == held
    assert sorted(refusals.deferred) == deferred


def test_a_refused_ref_is_retried_after_a_doubling_backoff() -> None:
    now = [0.0]
    refusals = Refusals(clock=lambda: now[0])
    assert refusals.refuse("refs/tags/t", "hook declined") == 30.0
    assert refusals.excluded() == {"refs/tags/t"}
    now[0] = 31.0
    assert refusals.excluded() == set()
    assert refusals.refuse("refs/tags/t", "hook declined") == 60.0
    for _ in range(10):
        delay = refusals.refuse("refs/tags/t", "hook declined")
    assert delay == 1800.0
    refusals.landed(["refs/tags/t"])
    assert refusals.excluded() == set()
