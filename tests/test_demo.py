"""``gitmq demo`` from any folder, and what the wheel ships for users (configs, py.typed).

The checkout's editable install finds files next to the source tree, so these
tests also build a real wheel (from a copy of the sources) and install it, not
editable, into a fresh virtualenv: what a user of ``pip install gitmq`` gets.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from util import TESTS_DIR, Result, ok, run

CHECKOUT = TESTS_DIR.parent
CONFIGS = sorted(p.name for p in (CHECKOUT / "config" / "demo").glob("*.yml"))
DEMO_TIMEOUT = 300.0

USER_CODE = '''\
"""A user's program, type-checked against the installed gitmq."""

from gitmq import AsyncProducer, Message, Producer, Storage


def publish(path: str) -> Message:
    with Storage(path) as storage:
        return Producer(storage, "orders").publish("hello")


async def publish_async(storage: Storage) -> Message:
    async with AsyncProducer(storage, "orders") as producer:
        return await producer.publish("hi")


wrong: int = publish("/tmp/orders.git").text
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (a build writes into its source tree)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CHECKOUT / name, source / name)
    shutil.copytree(
        CHECKOUT / "gitmq", source / "gitmq", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("dist")
    ok(run([sys.executable, "-m", "build", "--wheel", "--outdir", out, source], timeout=300))
    [built] = out.glob("gitmq-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed by pip, not editable. Its other
    dependencies come from this virtualenv's site-packages, by a path entry."""
    root = tmp_path_factory.mktemp("venv")
    ok(run([sys.executable, "-m", "venv", "--without-pip", root]))
    python = root / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q"]
    ok(run([*pip, wheel], timeout=120))
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    ours = sysconfig.get_paths()["purelib"]
    Path(ok(site).out.strip(), "zz-gitmq-test-deps.pth").write_text(ours + "\n")
    return root


def installed_gitmq(venv: Path, cwd: Path) -> Path:
    """Where ``import gitmq`` leads in ``venv``, from ``cwd`` (not the checkout's)."""
    code = "import gitmq; print(gitmq.__file__)"
    where = ok(run([venv / "bin" / "python", "-c", code], cwd=cwd))
    return Path(where.out.strip())


def test_the_packaged_demo_configs_are_the_checkouts() -> None:
    packaged = CHECKOUT / "gitmq" / "demo_config"
    assert CONFIGS == ["node-a.yml", "node-b.yml", "node-c.yml"]
    assert sorted(p.name for p in packaged.glob("*.yml")) == CONFIGS
    for name in CONFIGS:
        source = CHECKOUT / "config" / "demo" / name
        assert (packaged / name).read_bytes() == source.read_bytes(), (
            f"gitmq/demo_config/{name} differs from config/demo/{name}: copy it over"
        )


def test_the_wheel_ships_py_typed_and_the_demo_configs(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "gitmq/py.typed" in names
    assert "gitmq/aio.py" in names
    assert {f"gitmq/demo_config/{name}" for name in CONFIGS} <= names


def test_mypy_strict_checks_user_code_against_the_installed_package(
    venv: Path, tmp_path: Path
) -> None:
    assert installed_gitmq(venv, tmp_path).is_relative_to(venv)
    user = tmp_path / "shop.py"
    user.write_text(USER_CODE)
    mypy = [sys.executable, "-m", "mypy", "--strict", "--config-file", "", "--no-incremental"]
    result = run([*mypy, "--python-executable", venv / "bin" / "python", user.name], cwd=tmp_path)
    # The one error is the planted one: gitmq's own types reached the user's code
    # (without py.typed mypy would refuse to use the package and say so instead).
    assert result.status == 1, str(result)
    assert result.out.splitlines() == [
        'shop.py:16: error: Incompatible types in assignment (expression has type "str", '
        'variable has type "int")  [assignment]',
        "Found 1 error in 1 file (checked 1 source file)",
    ], str(result)


def demo(gitmq_script: Path, cwd: Path) -> Result:
    result = run([gitmq_script, "demo"], cwd=cwd, timeout=DEMO_TIMEOUT)
    assert result.status == 0, str(result)
    assert result.out.splitlines()[-1] == "demo finished: OK", str(result)
    assert sum("received" in line for line in result.out.splitlines()) == 27, str(result)
    return result


@pytest.fixture
def empty_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "empty"
    folder.mkdir()
    yield folder
    assert list(folder.iterdir()) == [], "the demo left files in the current folder"


def test_the_installed_demo_runs_from_an_empty_folder(venv: Path, empty_dir: Path) -> None:
    assert installed_gitmq(venv, empty_dir).is_relative_to(venv)
    demo(venv / "bin" / "gitmq", empty_dir)


def test_the_checkouts_demo_runs_from_the_folder_above_it() -> None:
    demo(Path(sys.executable).parent / "gitmq", CHECKOUT.parent)
