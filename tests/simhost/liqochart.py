"""Liqo's Helm chart in the simulated world: packaging it for a version, and the images an install pulls.

:func:`package` builds ``liqo-<version>.tgz`` from ``liqo-chart/`` the way ``helm package --version V
--app-version V`` does (deterministic bytes, so its digest is stable). :func:`install_images` plays the
part of Helm rendering the chart for ``liqoctl install``: it evaluates the ``image:`` and
``containerImage:`` lines of every template (``.Values`` paths, ``.Chart`` fields and ``default``
pipelines), skips a template whose first line is an ``if`` on a false value, and skips hook templates that
do not run at install (``pre-delete``). Any other template syntax on those lines is not modelled.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.simhost.common import NotModelled

CHART_DIR = Path(__file__).resolve().parent / "liqo-chart"
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")
_IMAGE_LINE = re.compile(r"^\s*-?\s*(?:image|containerImage):\s*(.*\{\{.*)$")
_IF = re.compile(r"^\{\{-?\s*if\s+(\.Values(?:\.\w+)+)\s*-?\}\}$")


class ChartError(Exception):
    """The chart cannot be read; the message is Helm's."""


@dataclass(frozen=True)
class Chart:
    """A chart's files, by path inside it (``Chart.yaml``, ``templates/x.yaml``, ``charts/sub/...``)."""

    files: dict[str, str]

    @property
    def meta(self) -> dict[str, Any]:
        """Return Chart.yaml."""
        data = yaml.safe_load(self.files.get("Chart.yaml", "")) or {}
        return data if isinstance(data, dict) else {}

    @property
    def values(self) -> dict[str, Any]:
        """Return values.yaml."""
        data = yaml.safe_load(self.files.get("values.yaml", "")) or {}
        return data if isinstance(data, dict) else {}


def package(version: str) -> bytes:
    """Return ``liqo-<version>.tgz``: the chart directory with version and appVersion set to ``version``."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in sorted(p for p in CHART_DIR.rglob("*") if p.is_file()):
            relative = path.relative_to(CHART_DIR).as_posix()
            data = path.read_bytes()
            if relative == "Chart.yaml":
                meta = yaml.safe_load(data)
                meta.update(version=version, appVersion=version)
                data = yaml.safe_dump(meta, sort_keys=False).encode()
            info = tarfile.TarInfo(f"liqo/{relative}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def load_bytes(data: bytes, name: str = "chart") -> dict[str, str]:
    """Return the files of a packaged chart (``<chart>/...`` inside a gzipped tar); raise ChartError."""
    files: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is not None:
                    parts = PurePosixPath(member.name).parts
                    files["/".join(parts[1:])] = extracted.read().decode(errors="replace")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ChartError(f"file '{name}' does not appear to be a gzipped archive; got '{exc}'") from None
    return files


def load(path: str) -> Chart:
    """Read a chart from a directory or a ``.tgz`` as Helm's loader does; raise ChartError."""
    source = Path(path)
    if source.is_dir():
        files = {file.relative_to(source).as_posix(): file.read_text(errors="replace")
                 for file in source.rglob("*") if file.is_file()}
    else:
        files = load_bytes(source.read_bytes(), path)
    if "Chart.yaml" not in files:
        raise ChartError("Chart.yaml file is missing")
    return Chart(files)


def _lookup(values: dict[str, Any], path: str) -> Any:
    current: Any = values
    for key in path.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(key)
    return current


def _term(term: str, values: dict[str, Any], meta: dict[str, Any]) -> Any:
    term = term.strip()
    if term.startswith(".Values."):
        return _lookup(values, term.removeprefix(".Values."))
    if term in (".Chart.AppVersion", ".Chart.Version"):
        return meta.get("appVersion" if term.endswith("AppVersion") else "version")
    if len(term) >= 2 and term[0] == term[-1] == '"':
        return term[1:-1]
    raise NotModelled(f"chart template term {term!r}")


def _evaluate(action: str, values: dict[str, Any], meta: dict[str, Any]) -> str:
    stages = action.split("|")
    result = _term(stages[0], values, meta)
    for stage in stages[1:]:
        words = stage.split(None, 1)
        if len(words) != 2 or words[0] != "default":
            raise NotModelled(f"chart template function {stage.strip()!r}")
        if result in (None, "", False, 0):
            result = _term(words[1], values, meta)
    return "" if result is None else str(result)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with dotted-key ``overrides`` set (Helm's --set)."""
    merged: dict[str, Any] = yaml.safe_load(yaml.safe_dump(base)) or {}
    for key, value in overrides.items():
        current = merged
        *parents, last = key.split(".")
        for parent in parents:
            current = current.setdefault(parent, {})
        current[last] = value
    return merged


def install_images(chart: Chart, overrides: dict[str, Any]) -> dict[str, list[str]]:
    """Return, per template of the top chart, the images an install of ``chart`` pulls."""
    values = merge(chart.values, overrides)
    meta = chart.meta
    found: dict[str, list[str]] = {}
    for name, text in sorted(chart.files.items()):
        if not name.startswith("templates/") or not name.endswith(".yaml"):
            continue
        lines = text.splitlines()
        condition = _IF.match(lines[0].strip()) if lines else None
        if condition and not _lookup(values, condition[1].removeprefix(".Values.")):
            continue
        if re.search(r'"?helm\.sh/hook"?:\s*"?pre-delete', text):
            continue
        images = []
        for line in lines:
            match = _IMAGE_LINE.match(line)
            if match:
                images.append(_ACTION.sub(lambda m: _evaluate(m[1], values, meta), match[1]).strip().strip('"'))
        if images:
            found[PurePosixPath(name).stem] = images
    return found
