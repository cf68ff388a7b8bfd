"""Liqo's Helm chart: getting the packaged chart of a release, and the images that chart makes a node pull.

The image list is read from the chart itself, never kept in ksi, so it follows the chart of every release.
Liqo's chart names each image in its values as ``<component>.image: {name, version}``; its templates use
``name:version``, or ``name:tag`` when ``version`` is empty, and ``liqoctl install`` sets ``tag`` to its
own version (pkg/liqoctl/install: preProviderValues). An ``image`` given as a plain string is an image
only if a template uses it (Liqo v1.0 keeps an unused ``webhook.patch.image``). Subcharts are read the same
way. liqoctl cannot list the images itself: ``install --only-output-values`` needs a cluster to talk to.

The chart comes from Liqo's Helm repository (``index.yaml`` names each release's package, with its
sha256), or from a local copy (``KSI_LIQO_CHART``: a directory, packaged here, or a ``.tgz``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin

from ksi import yamlio
from ksi.errors import KsiError

DEFAULT_REPO = "https://helm.liqo.io/"  # what liqoctl uses (pkg/liqoctl/install/const.go)
CHART_NAME = "liqo"
SEMVER = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_TIMEOUT = 120.0


@dataclass(frozen=True)
class Chart:
    """A packaged chart's files, by path below the chart's own directory (``values.yaml``, ``charts/x/...``)."""

    files: dict[str, bytes]

    def yaml(self, path: str) -> Any:
        """Return the YAML document at ``path`` (None when absent); raise KsiError when malformed."""
        import yaml

        if path not in self.files:
            return None
        try:
            return yamlio.load(self.files[path])
        except yaml.YAMLError as exc:
            raise KsiError(f"Liqo's chart has a malformed {path}: {exc}", step="images") from None

    @property
    def version(self) -> str:
        """Return the chart's version (Chart.yaml)."""
        meta = self.yaml("Chart.yaml") or {}
        return str(meta.get("version", "")) if isinstance(meta, dict) else ""

    def chart_dirs(self) -> list[str]:
        """Return the top chart (``""``) and every subchart directory (``charts/<name>/``)."""
        subcharts = sorted({"/".join(PurePosixPath(p).parts[:2]) + "/" for p in self.files
                            if p.startswith("charts/") and p.endswith("/Chart.yaml") and p.count("/") == 2})
        return ["", *subcharts]


def read_package(data: bytes, source: str) -> Chart:
    """Return the chart packaged in ``data`` (a gzipped tar holding ``<chart>/...``); raise KsiError."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member) if member.isfile() else None
                parts = PurePosixPath(member.name).parts
                if extracted is not None and len(parts) > 1:
                    files["/".join(parts[1:])] = extracted.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise KsiError(f"{source} is not a packaged Helm chart: {exc}", step="images") from None
    if "Chart.yaml" not in files:
        raise KsiError(f"{source} is not a Helm chart (no Chart.yaml)", step="images")
    return Chart(files)


def package_directory(path: Path) -> bytes:
    """Return the chart directory ``path`` packaged as ``helm package`` would (deterministic bytes)."""
    if not (path / "Chart.yaml").is_file():
        raise KsiError(f"{path} is not a Helm chart (no Chart.yaml)", step="images",
                       fix="point KSI_LIQO_CHART at Liqo's chart (deployments/liqo, or a .tgz from `helm pull`)")
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            data = file.read_bytes()
            info = tarfile.TarInfo(f"{path.name}/{file.relative_to(path).as_posix()}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _image_values(values: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Yield (path, value) for every ``image`` key in the values tree."""
    if not isinstance(values, dict):
        return
    for key, value in values.items():
        if key == "image":
            yield (*path, "image"), value
        elif isinstance(value, dict):
            yield from _image_values(value, (*path, str(key)))


def images(chart: Chart, liqo_version: str) -> list[str]:
    """Return every image ``liqoctl install`` of ``liqo_version`` makes the cluster use, sorted."""
    found: set[str] = set()
    for prefix in chart.chart_dirs():
        values = chart.yaml(f"{prefix}values.yaml")
        templates = b"\n".join(data for name, data in chart.files.items()
                               if name.startswith(f"{prefix}templates/")).decode(errors="replace")
        for path, value in _image_values(values):
            if isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"].strip():
                found.add(f"{value['name'].strip()}:{value.get('version') or liqo_version}")
            elif isinstance(value, str) and value.strip():
                used = re.search(r"\.Values\." + re.escape(".".join(path)) + r"(?![\w.])", templates)
                if used:
                    found.add(value.strip())
    return sorted(found)


def _get(url: str, what: str) -> bytes:
    """Return the body of ``url``; raise KsiError naming ``what`` on any failure."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as response:  # noqa: S310 - http(s) from a setting
            body: bytes = response.read()
            return body
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KsiError(f"cannot download {what} from {url}: {reason}", step="images",
                       fix="check this machine's internet access (or proxy), or set KSI_LIQO_CHART to a local "
                           "copy of the chart") from None


def download(repo: str, version: str) -> tuple[bytes, str]:
    """Download the chart of Liqo ``version`` from the Helm repository ``repo``; return (package, URL).

    The package's sha256 must match the digest the repository's index gives for it.
    """
    import yaml

    base = repo if repo.endswith("/") else repo + "/"
    index_url = urljoin(base, "index.yaml")
    try:
        index = yamlio.load(_get(index_url, "the index of Liqo's Helm repository"))
    except yaml.YAMLError as exc:
        raise KsiError(f"{index_url} is not a Helm repository index: {exc}", step="images") from None
    entries = (index or {}).get("entries", {}).get(CHART_NAME, []) if isinstance(index, dict) else []
    entry = next((e for e in entries if isinstance(e, dict) and str(e.get("version", "")).lstrip("v")
                  == version.lstrip("v")), None)
    if entry is None or not entry.get("urls"):
        shown = ", ".join(str(e.get("version")) for e in entries[:8] if isinstance(e, dict))
        raise KsiError(f"{index_url} has no chart of Liqo {version}" + (f" (it has {shown}, ...)" if shown else ""),
                       step="images", fix="give the Liqo version your liqoctl installs (--liqo-version)")
    url = urljoin(base, str(entry["urls"][0]))
    data = _get(url, f"Liqo's chart {version}")
    digest = str(entry.get("digest", ""))
    if digest and hashlib.sha256(data).hexdigest() != digest.removeprefix("sha256:"):
        raise KsiError(f"the chart downloaded from {url} does not match the sha256 the repository's index gives",
                       step="images", fix="try again; if it persists, the download is being tampered with")
    return data, url
