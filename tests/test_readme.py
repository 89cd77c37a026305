"""The README's Python examples, run as written by the venv's python, as a newcomer would.

Each example is saved to a file in the current folder and run as a real
process, twice (the rerun must print the same), also from a folder holding an
empty ``gitmq`` folder: the script's folder comes first on ``sys.path``, so an
editable install that loses to a namespace package there breaks ``import gitmq``.
The examples keep their storage under ``~``; HOME is the test's own (conftest).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from util import TESTS_DIR, Result, run

README = TESTS_DIR.parent / "README.md"

THREADS = """\
billing {"id": 1}
billing {"id": 2}
billing {"id": 3}
audit {'id': 1}
audit {'id': 2}
audit {'id': 3}
"""
ASYNCIO = """\
shipping {"id": 4}
shipping {"id": 5}
"""


def examples() -> list[str]:
    """The python code blocks of the README's "Python API" section, in order."""
    text = README.read_text()
    section = text[text.index("\n## Python API\n") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"^```python\n(.*?)^```$", section, re.M | re.S)


EXAMPLES = examples()
OUTPUTS = [THREADS, ASYNCIO]


def run_example(code: str, folder: Path) -> Result:
    script = folder / "example.py"
    script.write_text(code)
    return run([sys.executable, script.name], cwd=folder, timeout=120)


def prints(result: Result, expected: str) -> None:
    assert (result.status, result.out, result.err) == (0, expected, ""), str(result)


def test_the_section_has_the_thread_and_the_asyncio_example() -> None:
    assert len(EXAMPLES) == 2
    assert "Consumer(" in EXAMPLES[0] and "consume(" in EXAMPLES[0]
    assert "AsyncConsumer(" in EXAMPLES[1] and "async for" in EXAMPLES[1]


@pytest.mark.parametrize("index", [0, 1], ids=["threads", "asyncio"])
def test_an_example_prints_its_messages_on_every_run(index: int, tmp_path: Path) -> None:
    for _ in range(2):
        prints(run_example(EXAMPLES[index], tmp_path), OUTPUTS[index])


@pytest.mark.parametrize("index", [0, 1], ids=["threads", "asyncio"])
def test_an_empty_gitmq_folder_beside_the_example_does_not_shadow_the_package(
    index: int, tmp_path: Path
) -> None:
    (tmp_path / "gitmq").mkdir()
    prints(run_example(EXAMPLES[index], tmp_path), OUTPUTS[index])


def test_the_examples_one_after_the_other_share_the_storage(tmp_path: Path) -> None:
    """A reader who runs both, then the first again: billing also gets what the
    asyncio example published (it was pending), in queue order."""
    prints(run_example(EXAMPLES[0], tmp_path), THREADS)
    prints(run_example(EXAMPLES[1], tmp_path), ASYNCIO)
    again = THREADS.replace("billing {", 'billing {"id": 4}\nbilling {"id": 5}\nbilling {', 1)
    prints(run_example(EXAMPLES[0], tmp_path), again)
