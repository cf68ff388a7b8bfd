"""``ksi images list``: what a cache holds, and whether it has everything this ksi's runs need."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ksi import __version__
from ksi.errors import EXIT_PREREQUISITE, UsageError
from ksi.images import manifest
from ksi.images.manifest import LIQO, LIQO_CHART, Entry, Manifest
from ksi.images.plan import SAVE_HINT, liqo_requirements, read_cache, requirements
from ksi.images.verify import STAMPS, Stamps, check_file
from ksi.settings import Settings


@dataclass(frozen=True)
class Listing:
    """A cache's entries with the state of their files, and what it lacks for this ksi."""

    directory: Path
    node_image: str
    liqo_versions: tuple[str, ...]  # judged: liqoctl's here, else every version the cache holds
    entries: tuple[tuple[Entry, str], ...]  # (entry, state of its file)
    missing: tuple[str, ...]
    damaged: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """True when a run of this ksi finds everything it needs in the cache, intact."""
        return not self.missing and not self.damaged

    def as_dict(self) -> dict[str, Any]:
        """Return the listing as the JSON object ``--json`` prints."""
        return {"directory": str(self.directory), "ksi": __version__, "complete": self.complete,
                "node_image": self.node_image, "liqo_versions": list(self.liqo_versions),
                "missing": list(self.missing), "damaged": list(self.damaged),
                "entries": [asdict(entry) | {"state": state} for entry, state in self.entries]}


def human(size: float) -> str:
    """Return ``size`` bytes as ``812 KiB`` or ``1.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit in ("B", "KiB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def file_state(directory: Path, entry: Entry, verify: bool, stamps: Stamps) -> str:
    """Return ``ok``, ``missing``, ``size differs`` or (with ``verify``) ``corrupt``."""
    path = directory / entry.file
    if not path.is_file():
        return "missing"
    if path.stat().st_size != entry.size:
        return "size differs"
    if verify and check_file(directory, entry, stamps) is not None:
        return "corrupt"
    return "ok"


def inspect_cache(found: Manifest, directory: Path, node_image: str, liqo_version: str | None, *, verify: bool,
                  stamps: Stamps) -> Listing:
    """Return the listing of ``found``: liqoctl's Liqo version here if known, else every one it holds."""
    versions = [liqo_version] if liqo_version else sorted({e.liqo_version for e in found.entries
                                                           if e.purpose in (LIQO, LIQO_CHART)})
    needs = requirements(found, directory, node_image, None)
    needed, missing = list(needs.entries), list(needs.missing)
    for version in versions:
        entries, lacking = liqo_requirements(found, directory, version)
        needed += entries
        missing += lacking
    if not versions:
        missing.append("Liqo's chart and images (liqoctl is not on PATH here to say which version; "
                       "`ksi images save` saves those of the liqoctl where it runs)")
    states = {e.file: file_state(directory, e, verify, stamps) for e in found.entries}
    damaged = sorted({f"{directory / e.file} ({e.describe()}): {states[e.file]}" for e in needed
                      if states[e.file] != "ok"})
    return Listing(directory, node_image, tuple(versions), tuple((e, states[e.file]) for e in found.entries),
                   tuple(missing), tuple(damaged))


def _short(entry: Entry) -> str:
    if entry.purpose == LIQO_CHART:
        return f"liqo {entry.liqo_version} chart"
    return entry.reference if len(entry.reference) <= 60 else entry.reference[:57] + "..."


def table(listing: Listing) -> list[str]:
    """Return the listing as aligned text lines, one per entry, with a header."""
    rows = [("PURPOSE", "REFERENCE", "DIGEST", "FILE", "SIZE", "STATE")]
    rows += [(e.purpose, _short(e), e.digest[:19], e.file, human(e.size), state) for e, state in listing.entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
            for row in rows]


def verdict(listing: Listing) -> str:
    """Return one line: complete for this ksi, or what is missing or damaged and how to fix it."""
    if listing.complete:
        liqo = ", ".join(listing.liqo_versions)
        return (f"images: {listing.directory} is complete for ksi {__version__}: the kind node image "
                f"{listing.node_image} and Liqo {liqo} (chart and images)")
    what = "; ".join([*(f"no {m}" for m in listing.missing), *listing.damaged])
    return (f"images: {listing.directory} is not complete for ksi {__version__}: {what}; fix: run `{SAVE_HINT} "
            f"--dir {listing.directory}` where there is internet")


def show(given_dir: str | None, settings: Settings, env: Mapping[str, str], node: str, *, as_json: bool,
         verify: bool) -> int:
    """Run ``ksi images list`` with the tools of ``env``: print the listing; return 0 when complete, 3 when not."""
    from ksi.tools import proc
    from ksi.tools.liqoctl import Liqoctl

    directory = manifest.cache_dir(given_dir, settings.image_cache)
    found = read_cache(directory)
    if not isinstance(found, Manifest):
        raise UsageError(found.message, step="images", fix=found.fix.replace(
            "correct --image-cache / KSI_IMAGE_CACHE", "give the cache's directory with --dir"))
    liqo_version = None
    if proc.which("liqoctl", env) is not None:
        _, shown = Liqoctl(env).version()
        liqo_version = shown if shown.startswith("v") else f"v{shown}"
    stamps = Stamps(settings.state_dir / STAMPS if settings.state_dir.is_dir() else None)
    listing = inspect_cache(found, directory, settings.node_image, liqo_version, verify=verify, stamps=stamps)
    stamps.save()
    if as_json:
        print(json.dumps(listing.as_dict()), flush=True)
    else:
        print("\n".join(table(listing)), flush=True)
        print(f"ksi[{node}] {verdict(listing)}", file=sys.stderr if not listing.complete else sys.stdout,
              flush=True)
    return 0 if listing.complete else EXIT_PREREQUISITE
