"""The image cache on shared storage: its manifest (``manifest.json``) and how files get into it.

A cache directory holds archives and Liqo's packaged chart, and ``manifest.json`` listing each image with
its reference, digest, file, size, sha256 and purpose. Every file, the manifest included, is written to a
temporary name in the same directory and renamed into place once complete and flushed, so a save that is
killed leaves no half file under a listed name; leftover temporary files start with ``.tmp-``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ksi.images.reference import normalize, parse

MANIFEST = "manifest.json"
FORMAT = 1
TEMP_PREFIX = ".tmp-"
DEFAULT_DIR = "ksi-images"  # under the current (shared) directory when neither --dir nor KSI_IMAGE_CACHE says

NODE = "node"
LIQO_CHART = "liqo-chart"
LIQO = "liqo"
WORKLOAD = "workload"
PURPOSES = {NODE: "kind node image", LIQO_CHART: "Liqo's Helm chart", LIQO: "Liqo image", WORKLOAD: "workload image"}
_HEX = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(Exception):
    """A manifest that cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class Entry:
    """One image (or Liqo's chart) in the cache; several images may share one archive file."""

    purpose: str  # NODE, LIQO_CHART, LIQO or WORKLOAD
    reference: str  # as saved (a chart: the URL or path it came from)
    digest: str  # the image's digest (a chart: sha256 of the package)
    file: str  # name in the cache directory
    size: int  # bytes of the file
    sha256: str  # hex sha256 of the file
    liqo_version: str = ""  # the Liqo release a chart or Liqo image belongs to

    def describe(self) -> str:
        """Return ``kind node image kindest/node:v1...`` or ``Liqo's Helm chart v1.0.1``."""
        if self.purpose == LIQO_CHART:
            return f"{PURPOSES[self.purpose]} {self.liqo_version}"
        return f"{PURPOSES[self.purpose]} {self.reference}"

    def key(self) -> tuple[str, str, str]:
        """Return what makes an entry unique: purpose, normalized reference, Liqo version."""
        if self.purpose == LIQO_CHART:  # one chart per Liqo release, wherever it came from
            return self.purpose, "", self.liqo_version
        return self.purpose, normalize(self.reference), self.liqo_version


@dataclass(frozen=True)
class Manifest:
    """Every entry of a cache, and which ksi wrote it when."""

    entries: tuple[Entry, ...] = ()
    written_by: str = ""
    updated: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # fields a newer ksi wrote: kept as they are

    def find(self, purpose: str, reference: str = "", liqo_version: str = "") -> Entry | None:
        """Return the entry for ``purpose`` and ``reference`` (and Liqo version), if there is one."""
        wanted = Entry(purpose, reference, "", "", 0, "", liqo_version).key()
        return next((e for e in self.entries if e.key() == wanted), None)

    def with_entries(self, entries: Sequence[Entry], written_by: str) -> Manifest:
        """Return this manifest with ``entries`` added, replacing entries with the same key."""
        keys = {e.key() for e in entries}
        kept = [e for e in self.entries if e.key() not in keys]
        return replace(self, entries=tuple([*kept, *entries]), written_by=written_by,
                       updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_json(self) -> str:
        """Return the manifest as the JSON text of manifest.json."""
        data = {**self.extra, "format": FORMAT, "written_by": self.written_by, "updated": self.updated,
                "entries": [asdict(e) for e in self.entries]}
        return json.dumps(data, indent=2) + "\n"


def _entry_problems(index: int, raw: object) -> list[str]:
    where = f"entries[{index}]"
    if not isinstance(raw, dict):
        return [f"{where} is not an object"]
    problems = []
    checks: dict[str, Callable[[Any], bool]] = {
        "purpose": lambda v: v in PURPOSES, "reference": lambda v: isinstance(v, str) and bool(v.strip()),
        "digest": lambda v: isinstance(v, str) and v.startswith("sha256:") and bool(_HEX.match(v[7:])),
        "file": lambda v: isinstance(v, str) and bool(v) and "/" not in v and not v.startswith(".") and v != MANIFEST,
        "size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "sha256": lambda v: isinstance(v, str) and bool(_HEX.match(v)),
        "liqo_version": lambda v: isinstance(v, str),
    }
    for name, valid in checks.items():
        if name not in raw and name != "liqo_version":
            problems.append(f"{where} has no {name}")
        elif name in raw and not valid(raw[name]):
            problems.append(f"{where}.{name} = {raw[name]!r} is not valid")
    if not problems and raw["purpose"] in (LIQO, LIQO_CHART) and not raw.get("liqo_version"):
        problems.append(f"{where} ({raw['purpose']}) has no liqo_version")
    if not problems and raw["purpose"] != LIQO_CHART:
        try:
            parse(raw["reference"])
        except ValueError as exc:
            problems.append(f"{where}.reference: {exc}")
    return problems


def parse_manifest(data: object) -> Manifest:
    """Return the Manifest ``data`` (decoded JSON) describes; raise ManifestError listing every problem."""
    if not isinstance(data, dict):
        raise ManifestError("it is not a JSON object")
    if data.get("format") != FORMAT:
        raise ManifestError(f"format {data.get('format')!r} is not {FORMAT} (written by {data.get('written_by')!r}; "
                            "a newer ksi?)")
    raw_entries = data.get("entries")
    if not isinstance(raw_entries, list):
        raise ManifestError("it has no list of entries")
    problems = [p for i, raw in enumerate(raw_entries) for p in _entry_problems(i, raw)]
    if problems:
        raise ManifestError("; ".join(problems))
    entries = tuple(Entry(**{k: raw[k] for k in ("purpose", "reference", "digest", "file", "size", "sha256")},
                          liqo_version=raw.get("liqo_version", "")) for raw in raw_entries)
    extra = {k: v for k, v in data.items() if k not in ("format", "written_by", "updated", "entries")}
    return Manifest(entries, str(data.get("written_by", "")), str(data.get("updated", "")), extra)


def read(directory: Path) -> Manifest:
    """Read ``directory/manifest.json``; raise FileNotFoundError when absent, ManifestError when unusable."""
    path = directory / MANIFEST
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"it is not valid JSON ({exc})") from None
    return parse_manifest(data)


def write(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest`` to ``directory/manifest.json`` atomically."""
    with staging(directory, MANIFEST) as temp:
        temp.write_text(manifest.to_json(), encoding="utf-8")


@contextlib.contextmanager
def staging(directory: Path, name: str) -> Iterator[Path]:
    """Yield a new empty temporary file in ``directory``; on success flush it and rename it to ``name``.

    The file gets the mode a new file gets under the umask (tools write into it by path). On failure the
    temporary file is removed.
    """
    fd, temp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{name}.", dir=directory)
    os.close(fd)
    path = Path(temp)
    try:
        yield path
        umask = os.umask(0)
        os.umask(umask)
        path.chmod(0o666 & ~umask)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(path, directory / name)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def remove_leftovers(directory: Path) -> list[str]:
    """Delete the temporary files of saves that were killed; return their names (call with the lock held)."""
    removed = []
    for path in directory.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.name)
    return removed


def cache_dir(given: str | None, setting: str) -> Path:
    """Return the cache directory: ``--dir``, else KSI_IMAGE_CACHE, else ``./ksi-images``."""
    return Path(given or setting or DEFAULT_DIR).expanduser().absolute()


def file_name(purpose: str, reference: str, digest: str) -> str:
    """Return the archive name for one image: ``node-kindest-node-v1.37.0-a1ed56cf0b7e.tar``."""
    try:
        ref = parse(reference)
        readable = ref.familiar + (f"-{ref.tag}" if ref.tag else "")
    except ValueError:
        readable = reference
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", readable).strip("-.")[:80]
    return f"{purpose}-{readable}-{digest.removeprefix('sha256:')[:12]}.tar"
