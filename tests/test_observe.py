"""The node's /metrics, /healthz and /readyz (gitmq/observe.py, gitmq/metrics.py), and how
it logs a failing remote (gitmq/remote_log.py).

Real ``gitmq node`` processes against a real git daemon, scraped over real HTTP and
parsed with prometheus-client's own parser; the log test runs a node in this
process to read its records and to shorten the summaries' backoff.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodes import (
    Cluster,
    TestNode,
    http_get,
    observed,
    sample,
    scrape,
    start_recording,
    wait_synced,
    write_config,
)
from servers import LOCALHOST, GitDaemon, free_port
from util import lines_of, wait_for

from gitmq import config as node_config
from gitmq.node import Node
from gitmq.presence import NODE_FILE

# Fails every payload that starts with "bad"; records the others.
_PICKY = 'IFS= read -r p; case "$p" in bad*) exit 1;; esac; echo "$GITMQ_ID $p" >> "$0"'


def picky_node(cluster: Cluster) -> TestNode:
    node = cluster.node("a", ["billing"], jitter="0s")
    data = yaml.safe_load(node.config.read_text())
    data["consumers"]["billing"]["handler"] = {
        "command": ["/bin/sh", "-c", _PICKY, str(node.consumer_log("billing"))]
    }
    write_config(node.config, data)
    return node


def readiness(base: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """The status of ``/readyz`` and its checks by name; (0, {}) before the node serves."""
    status, body = http_get(base + "/readyz")
    if status == 0:
        return 0, {}
    assert status in (200, 503), (status, body)
    return status, {c["name"]: c for c in json.loads(body)["checks"]}


def syncs_logged(node: TestNode) -> int:
    return sum(1 for r in node.json_log() if "sync" in r and not r["message"].startswith("poll"))


def test_metrics_count_what_the_node_did(cluster: Cluster, git_daemon: GitDaemon) -> None:
    node = picky_node(cluster)
    base = observed(node, free_port())
    node.publish("orders", "ok1", "bad1", "ok2", "bad2", "ok3")
    node.start("--log-format", "json")
    assert node.proc is not None

    def settled() -> Any:
        got = scrape(base) if http_get(base + "/healthz")[0] else None
        done = got and sample(got, "gitmq_consumer_dead_lettered_total", consumer="billing") == 2
        confirmed = got and sample(got, "gitmq_queue_confirmed_messages", queue="orders.dlq")
        return got if done and confirmed == 2 else None

    wait_for(settled, timeout=60, what="two dead letters, synced", procs=[node.proc], interval=0.1)
    before = syncs_logged(node)
    got = scrape(base)
    after = syncs_logged(node)
    assert node.payloads("billing") == ["ok1", "ok2", "ok3"]
    queue, dlq, consumer = {"queue": "orders"}, {"queue": "orders.dlq"}, {"consumer": "billing"}
    assert sample(got, "gitmq_queue_messages", **queue) == 5
    assert sample(got, "gitmq_queue_confirmed_messages", **queue) == 5
    assert sample(got, "gitmq_queue_unpushed_messages", **queue) == 0
    assert sample(got, "gitmq_queue_messages", **dlq) == 2
    assert 0 <= (sample(got, "gitmq_queue_confirmed_age_seconds", **queue) or -1) < 120
    lag = {"consumer": "billing", "queue": "orders"}
    assert sample(got, "gitmq_consumer_lag_messages", **lag) == 0
    assert sample(got, "gitmq_consumer_lag_seconds", **lag) == 0
    assert sample(got, "gitmq_consumer_running", **consumer) == 1
    assert sample(got, "gitmq_consumer_delivered_total", **consumer) == 3
    # Two bad messages, three attempts each (tests/nodes.py's retry policy): two retries each.
    assert sample(got, "gitmq_handler_failures_total", **consumer) == 6
    assert sample(got, "gitmq_handler_retries_total", **consumer) == 4
    assert sample(got, "gitmq_handler_duration_seconds_count", **consumer) == 3 + 6
    remote = {"remote": "central"}
    ok = sample(got, "gitmq_syncs_total", remote="central", result="ok")
    assert ok is not None and before <= ok <= after
    assert sample(got, "gitmq_syncs_total", remote="central", result="failed") == 0
    assert sample(got, "gitmq_remote_up", **remote) == 1
    assert (sample(got, "gitmq_sync_pushes_total", **remote) or 0) >= 2  # messages, then tags
    assert sample(got, "gitmq_sync_pushed_messages_total", **remote) == 5 + 2
    assert (sample(got, "gitmq_sync_duration_seconds_count", **remote) or 0) >= ok
    assert (sample(got, "process_resident_memory_bytes") or 0) > 0
    assert any(name == "python_info" for name, _ in got)

    git_daemon.stop()
    wait_for(
        lambda: sample(scrape(base), "gitmq_syncs_total", remote="central", result="failed"),
        timeout=30,
        what="a failed sync counted",
        procs=[node.proc],
        interval=0.1,
    )
    assert sample(scrape(base), "gitmq_remote_up", **remote) == 0
    assert node.stop() == 0


def test_metrics_show_the_budget_and_what_the_node_took_from_it(cluster: Cluster) -> None:
    node = cluster.node("a", ["billing"], interval="200ms", jitter="0s")
    data = yaml.safe_load(node.config.read_text())
    data["remotes"]["central"]["budget"] = {"reads_per_minute": 6000, "pushes_per_minute": 1200}
    write_config(node.config, data)
    base = observed(node, free_port())
    node.publish("orders", "one")
    node.start()
    assert node.proc is not None

    def took() -> Any:
        got = scrape(base) if http_get(base + "/healthz")[0] else None
        taken = got and sample(got, "gitmq_budget_taken_total", remote="central", kind="read")
        return got if taken and taken >= 3 else None

    got = wait_for(took, timeout=60, what="three reads taken", procs=[node.proc], interval=0.1)
    remote = {"remote": "central"}
    assert sample(got, "gitmq_budget_reads_per_minute", **remote) == 6000
    assert sample(got, "gitmq_budget_pushes_per_minute", **remote) == 1200
    assert sample(got, "gitmq_budget_nodes", **remote) == 1
    reads = sample(got, "gitmq_budget_taken_total", remote="central", kind="read") or 0
    pushes = sample(got, "gitmq_budget_taken_total", remote="central", kind="push") or 0
    syncs = sample(got, "gitmq_syncs_total", remote="central", result="ok") or 0
    assert reads >= syncs >= 1  # one read at least per cycle, counted before it ends
    made = sample(got, "gitmq_sync_pushes_total", **remote) or 0
    assert 1 <= pushes <= made + 1  # a push being made as the figures were read
    assert node.stop() == 0


def test_readyz_fails_while_the_remote_is_down_and_recovers(
    cluster: Cluster, git_daemon: GitDaemon
) -> None:
    node = cluster.node("a", ["billing"], interval="300ms", jitter="0s")
    base = observed(node, free_port())
    node.start()
    assert node.proc is not None
    wait_for(
        lambda: readiness(base)[0] == 200, timeout=30, what="ready", procs=[node.proc], interval=0.1
    )
    _, checks = readiness(base)
    assert set(checks) == {"storage", "consumer billing", "remote central"}
    assert http_get(base + "/healthz")[0] == 200

    git_daemon.stop()
    down = wait_for(
        lambda: (r := readiness(base))[0] == 503 and r[1],
        timeout=30,
        what="not ready with the remote down",
        procs=[node.proc],
        interval=0.1,
    )
    assert down["remote central"]["ok"] is False
    reason = down["remote central"]["reason"]
    assert re.match(r"no sync worked for \d+\.\ds \(limit 0\.9s\); last: remote git://", reason)
    assert "unable to connect" in reason, reason
    assert down["consumer billing"]["ok"] and down["storage"]["ok"]
    status, body = http_get(base + "/healthz")
    assert status == 200, body  # the process is fine: only the remote is not

    info = json.loads((node.storage / NODE_FILE).read_text())
    assert info["observability"] == base.removeprefix("http://")
    assert info["syncs"]["central"]["ok"] is False
    assert info["syncs"]["central"]["down_since"] is not None
    assert info["consumers"]["billing"]["running"] is True

    git_daemon.start()
    wait_for(
        lambda: readiness(base)[0] == 200,
        timeout=30,
        what="ready again",
        procs=[node.proc],
        interval=0.1,
    )
    assert node.stop() == 0
    assert not (node.storage / NODE_FILE).exists()


def test_readyz_names_a_consumer_whose_thread_died(cluster: Cluster, git_daemon: GitDaemon) -> None:
    node = cluster.node(
        "a",
        ["billing"],
        python_handler=True,
        extra={
            "consumers": {
                "billing": {"queue": "orders", "handler": {"python": "nodes:exit_or_record"}}
            }
        },
    )
    base = observed(node, free_port())
    start_recording(node)
    assert node.proc is not None
    wait_for(
        lambda: readiness(base)[0] == 200, timeout=30, what="ready", procs=[node.proc], interval=0.1
    )
    node.publish("orders", "one", "exit")
    wait_for(lambda: node.payloads("billing") == ["one"], timeout=30, procs=[node.proc])
    checks = wait_for(
        lambda: (r := readiness(base))[0] == 503 and r[1],
        timeout=30,
        what="not ready with a dead consumer",
        procs=[node.proc],
        interval=0.1,
    )
    assert checks["consumer billing"] == {
        "name": "consumer billing",
        "ok": False,
        "reason": "not running: consumer thread stopped: SystemExit: the handler exits",
    }
    assert checks["remote central"]["ok"] is True
    assert sample(scrape(base), "gitmq_consumer_running", consumer="billing") == 0
    assert http_get(base + "/healthz")[0] == 200
    assert node.stop() == 0


def test_a_port_in_use_is_one_error_line_before_anything_is_consumed(cluster: Cluster) -> None:
    node = cluster.node("a", ["billing"])
    with socket.socket() as taken:
        taken.bind((LOCALHOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        observed(node, port)
        node.publish("orders", "one")
        node.start()
        assert node.proc is not None
        assert node.proc.wait(60) == 5
    errors = [line for line in lines_of(node.log) if "error" in line.lower()]
    assert errors == [
        f"error: observability.listen 127.0.0.1:{port}: address already in use; stop what "
        f"listens there or choose another address in {node.config}"
    ]
    assert "Traceback" not in node.log_text()
    assert not node.consumer_log("billing").exists()
    assert not (node.storage / NODE_FILE).exists()


# ------------------------------------------------------------------ the log of a failing remote


def test_a_failing_remote_logs_once_then_summaries_then_its_return(
    cluster: Cluster, git_daemon: GitDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    node_dir = cluster.node("a", ["billing"], interval="100ms", jitter="0s")
    git_daemon.stop()
    node = Node(node_config.load(node_dir.config))
    node.observer.log.gaps = (0.5, 1.0)  # the node's are minutes: 1, 2, 4, then every 5
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="gitmq")
    runner = threading.Thread(target=node.run, args=(stop,), name="test-node")
    runner.start()
    try:
        wait_for(lambda: len(summaries(caplog)) >= 3, timeout=30, what="three summaries")
        git_daemon.start()
        wait_for(lambda: back(caplog), timeout=30, what="the remote's return")
    finally:
        stop.set()
        runner.join(60)
        node.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    failed = [r.getMessage() for r in warnings if r.getMessage().startswith("sync central")]
    assert len(failed) == 1, failed
    url = git_daemon.url("central.git")
    assert failed[0].startswith(f"sync central: failed: remote {url}: listing refs failed: ")
    times = [r.created for r in summaries(caplog)]
    assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 0.9  # 0.5 s, then 1 s apart
    for record in summaries(caplog):
        assert re.fullmatch(
            rf"remote central still down for \d+s: \d+ failed syncs, last error: remote {url}: "
            r"listing refs failed: fatal: unable to connect to .+",
            record.getMessage(),
            re.DOTALL,
        ), record.getMessage()
    (line,) = back(caplog)
    assert re.fullmatch(r"remote central is back after \d+s \(\d+ failed syncs\)", line), line


def summaries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "still down for" in r.getMessage()]


def back(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " is back after " in r.getMessage()]


def test_a_poll_cycle_is_logged_as_poll(cluster: Cluster, central: Path) -> None:
    node = cluster.node("a", ["billing"], interval="30s")
    data = yaml.safe_load(node.config.read_text())
    data["sync"]["poll"] = "100ms"
    write_config(node.config, data)
    node.start("--log-format", "json")
    wait_synced(node)
    other = cluster.node("b", [], interval="100ms")
    other.publish("orders", "from b")
    assert other.once().status == 0
    assert node.proc is not None
    wait_for(
        lambda: any(
            r["message"].startswith("poll sync central: ok; fetched 1") for r in node.json_log()
        ),
        timeout=30,
        what="a poll that fetched",
        procs=[node.proc],
    )
    assert not any("listen" in r["message"] for r in node.json_log())
    assert node.stop() == 0
