"""Property tests (hypothesis) over what people type (issue 9): durations, sizes,
queue and consumer names, headers. Whatever the input, the parsers either give
back a value that round-trips or raise the one documented error, never anything
else; names GitMQ accepts are names git accepts. The message encoder and decoder
have theirs in tests/test_poison.py."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitmq import names
from gitmq.cli.queue_cmds import parse_headers
from gitmq.errors import InvalidNameError, UsageError
from gitmq.message import validate_headers
from gitmq.units import _DURATION_UNITS, _SIZE_UNITS, parse_duration, parse_size

anything = st.text(max_size=40)


@given(anything)
def test_a_duration_is_a_number_of_seconds_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert "a duration like 100ms" in str(exc)
    else:
        assert seconds >= 0


@given(st.integers(0, 10**9), st.sampled_from(sorted(_DURATION_UNITS)))
def test_a_written_duration_reads_back(count: int, unit: str) -> None:
    assert parse_duration(f"{count}{unit}") == pytest.approx(count * _DURATION_UNITS[unit])


@given(anything)
def test_a_size_is_a_number_of_bytes_or_a_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError as exc:
        assert "a size like 1048576" in str(exc)
    else:
        assert size >= 0


@given(st.integers(0, 10**12), st.sampled_from([u for u in _SIZE_UNITS if u]))
def test_a_written_size_reads_back(count: int, unit: str) -> None:
    assert parse_size(f"{count}{unit}") == count * _SIZE_UNITS[unit]


ref_chars = st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FF)


@settings(max_examples=150, deadline=None)
@given(st.text(ref_chars, min_size=1, max_size=30))
def test_a_name_gitmq_accepts_is_a_branch_and_tag_git_accepts(name: str) -> None:
    try:
        names.check_queue(name)
    except InvalidNameError as exc:
        assert exc.message.startswith(f"invalid queue name {name!r}: ")
        return
    names.check_consumer(name)  # the same rules
    for ref in (f"refs/heads/{name}", f"refs/tags/{name}"):
        done = subprocess.run(["git", "check-ref-format", ref], capture_output=True, check=False)
        assert done.returncode == 0, (name, done.stderr)


@given(st.dictionaries(anything, anything, max_size=4))
def test_headers_are_accepted_whole_or_refused_with_a_usage_error(headers: dict[str, str]) -> None:
    try:
        clean = validate_headers(headers)
    except UsageError as exc:
        assert exc.message.startswith(("invalid header name", "invalid value for header"))
    else:
        assert clean == headers


@given(st.lists(anything, max_size=5))
def test_header_options_parse_or_give_one_usage_error(items: list[str]) -> None:
    try:
        headers = parse_headers(items)
    except UsageError as exc:
        assert "--header" in exc.message
    else:
        assert len(headers) == len(items)
        assert all(f"{k}={v}" in items for k, v in headers.items())
