"""What users install: the wheel and the sdist carry every module and data file, and the version is one."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.ksi_helpers import KSI, REPO


@dataclass(frozen=True)
class Built:
    """The wheel and the sdist built from the source tree, as lists of member names."""

    wheel: list[str]
    sdist: list[str]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Build the wheel and the sdist of the source tree (without build isolation: no network needed)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as zf, tarfile.open(sdist) as tf:
        top = tf.getnames()[0].split("/")[0]
        yield Built(wheel=zf.namelist(), sdist=[n.removeprefix(f"{top}/") for n in tf.getnames()])


def _tree(*patterns: str) -> set[str]:
    """Return the source tree's files matching ``patterns``, relative to the repository, without caches."""
    return {str(p.relative_to(REPO)) for pattern in patterns for p in REPO.glob(pattern)
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_holds_every_module_the_template_and_py_typed_and_nothing_else(built: Built) -> None:
    modules = _tree("ksi/**/*.py")
    templates = {f"ksi/templates/{Path(t).name}" for t in _tree("templates/*")}
    expected = modules | templates | {"ksi/py.typed"}
    assert any(name.endswith(".j2") for name in templates) and len(modules) > 30
    payload = {name for name in built.wheel if ".dist-info/" not in name}
    assert sorted(expected - payload) == [], "the wheel lacks these files of the source tree"
    assert sorted(payload - expected) == [], "the wheel carries files that are not ksi's"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in built.wheel)


def test_the_sdist_holds_what_a_build_needs(built: Built) -> None:
    expected = _tree("ksi/**/*.py", "templates/*", "ksi/py.typed") | {
        "pyproject.toml", "setup.py", "README.md", "LICENSE"}
    assert sorted(expected - set(built.sdist)) == [], "the sdist lacks these files of the source tree"


def test_the_version_lives_in_pyproject_and_ksi_reports_it() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version("ksi") == declared
    result = subprocess.run([KSI, "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout) == (0, f"ksi {declared}\n"), result.stderr
