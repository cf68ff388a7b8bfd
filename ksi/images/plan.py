"""What a run needs from the image cache, checked before anything is created; and what it needs without one.

With a cache, every node checks that the manifest has the node image ksi will use, Liqo's chart and every
image that chart names for the liqoctl on this node (multi-node runs), and the workload images saved with
them; that each archive has the size and sha256 the manifest gives (:mod:`ksi.images.verify`); and whether
its own image store has the node image already (by digest). Without a cache, the node image must be in the
store or be pulled now, as a check: a node without internet then fails here, naming the image, rather
than inside ``kind create``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ksi import log
from ksi.errors import EXIT_PREREQUISITE, EXIT_USAGE, CommandFailed, KsiError, Problem
from ksi.images import manifest
from ksi.images.manifest import LIQO, LIQO_CHART, NODE, WORKLOAD, Entry, Manifest
from ksi.images.verify import STAMPS, check_files
from ksi.tools.nerdctl import Nerdctl

_log = log.get(__name__)
SAVE_HINT = "ksi images save"


@dataclass(frozen=True)
class Requirements:
    """The entries a run uses from a cache, and what it would need that the cache lacks."""

    entries: tuple[Entry, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class Supply:
    """Where a run's images come from: the cache's entries it uses, or the registries (``cache`` None)."""

    cache: Path | None = None
    node: Entry | None = None
    load_node_image: bool = False  # the node image is not in this node's store: load it from the cache
    chart: Entry | None = None
    liqo: tuple[Entry, ...] = ()
    workload: tuple[Entry, ...] = ()

    def archives(self, entries: tuple[Entry, ...]) -> list[Path]:
        """Return the archive files of ``entries``, each once, in order."""
        assert self.cache is not None
        return [self.cache / name for name in dict.fromkeys(e.file for e in entries)]

    @property
    def chart_path(self) -> str:
        """Return the cached chart's path, or "" when Liqo's chart does not come from the cache."""
        return str(self.cache / self.chart.file) if self.cache is not None and self.chart is not None else ""


def liqo_requirements(found: Manifest, directory: Path, liqo_version: str) -> tuple[list[Entry], list[str]]:
    """Return Liqo's chart and images for ``liqo_version`` in ``found``, and what is missing.

    The images are those the cached chart names (read from the chart, not from the manifest), so a
    manifest that lost an entry is noticed. A chart file that is missing or damaged is reported by the file
    check; the image list is then not known.
    """
    entry = found.find(LIQO_CHART, "", liqo_version)
    if entry is None:
        versions = sorted({e.liqo_version for e in found.entries if e.purpose == LIQO_CHART})
        held = f" (it holds Liqo {', '.join(versions)})" if versions else ""
        return [], [f"Liqo {liqo_version}, the version of liqoctl here{held}"]
    from ksi.images import chart  # tarfile and gzip: only when Liqo is needed

    entries, missing = [entry], list[str]()
    try:
        package = chart.read_package((directory / entry.file).read_bytes(), str(directory / entry.file))
        wanted = chart.images(package, liqo_version)
    except (OSError, KsiError):
        return entries, missing
    for image in wanted:
        saved = found.find(LIQO, image, liqo_version)
        if saved is None:
            missing.append(f"Liqo image {image} (named by the chart of Liqo {liqo_version})")
        else:
            entries.append(saved)
    return entries, missing


def requirements(found: Manifest, directory: Path, node_image: str, liqo_version: str | None) -> Requirements:
    """Return what a run with ``node_image`` (and Liqo ``liqo_version``, multi-node) uses from the cache."""
    entries: list[Entry] = []
    missing: list[str] = []
    node = found.find(NODE, node_image)
    if node is None:
        missing.append(f"archive of the kind node image {node_image}")
    else:
        entries.append(node)
    if liqo_version is not None:
        liqo_entries, liqo_missing = liqo_requirements(found, directory, liqo_version)
        entries += liqo_entries
        missing += liqo_missing
    entries += [e for e in found.entries if e.purpose == WORKLOAD]
    return Requirements(tuple(entries), tuple(missing))


def read_cache(directory: Path) -> Manifest | Problem:
    """Return the cache's manifest, or the problem with it (as a usage problem: the directory given is wrong)."""
    fix = f"run `{SAVE_HINT} --dir {directory}` where there is internet, or correct --image-cache / KSI_IMAGE_CACHE"
    try:
        return manifest.read(directory)
    except FileNotFoundError:
        return Problem(EXIT_USAGE, f"image cache {directory} has no {manifest.MANIFEST} (`{SAVE_HINT}` writes it)",
                       fix, "images")
    except (OSError, UnicodeDecodeError) as exc:
        return Problem(EXIT_USAGE, f"cannot read {directory / manifest.MANIFEST}: {exc}", fix, "images")
    except manifest.ManifestError as exc:
        return Problem(EXIT_USAGE, f"{directory / manifest.MANIFEST} cannot be used: {exc}",
                       f"run `{SAVE_HINT} --dir {directory}` again", "images")


def check_cache(directory: Path, node_image: str, liqo_version: Callable[[], str | None] | None, state_dir: Path,
                nerdctl: Nerdctl) -> tuple[Supply | None, list[Problem]]:
    """Check the cache for a run on this node; return the Supply, or None and every problem found.

    ``liqo_version`` (multi-node runs) returns the version of liqoctl here, None when it is unknown (its
    own check reports why).
    """
    found = read_cache(directory)
    if isinstance(found, Problem):
        return None, [found]
    try:  # looked up while liqoctl's checks, which the Liqo entries wait for, still run
        digests: list[str] | KsiError = nerdctl.image_digests(node_image) or []
    except KsiError as exc:
        digests = exc
    version = liqo_version() if liqo_version is not None else None
    if liqo_version is not None and version is None:
        return None, []  # liqoctl's own check says what is wrong
    needs = requirements(found, directory, node_image, version)
    fix = f"run `{SAVE_HINT} --dir {directory}` where there is internet, with this KSI_NODE_IMAGE and liqoctl"
    problems = [Problem(EXIT_PREREQUISITE, f"image cache {directory} has no {what}", fix, "images")
                for what in needs.missing]
    problems += [Problem(EXIT_PREREQUISITE, f"image cache: {line}",
                         f"run `{SAVE_HINT} --dir {directory}` to fetch it again", "images")
                 for line in check_files(directory, needs.entries, state_dir / STAMPS)]
    if problems:
        return None, problems
    if isinstance(digests, KsiError):
        return None, [Problem(EXIT_PREREQUISITE, f"cannot list this node's images: {digests.message}",
                              "check rootless containerd and nerdctl (`ksi doctor`)", "images")]
    node = next(e for e in needs.entries if e.purpose == NODE)
    supply = Supply(directory, node, node.digest not in digests,
                    next((e for e in needs.entries if e.purpose == LIQO_CHART), None),
                    tuple(e for e in needs.entries if e.purpose == LIQO),
                    tuple(e for e in needs.entries if e.purpose == WORKLOAD))
    _log.info("checks: image cache %s verified: the kind node image (%s), %s%d workload image(s)", directory,
              "to load" if supply.load_node_image else "on this node already",
              f"Liqo {version} (chart and {len(supply.liqo)} images), " if version else "", len(supply.workload))
    return supply, []


def check_registry(node_image: str, nerdctl: Nerdctl, timeout: float) -> list[Problem]:
    """Without a cache: make sure the node image is in this node's store, pulling it now if it is not.

    kind would pull it inside ``kind create`` and, without network, fail there after its retries; pulling
    it as a check makes that failure come first, before anything exists.
    """
    fix = (f"where there is internet, run `{SAVE_HINT} --dir DIR` with DIR on the shared filesystem, then run "
           "with --image-cache DIR (or KSI_IMAGE_CACHE=DIR)")
    try:
        if nerdctl.image_digests(node_image) is not None:
            return []
        _log.info("checks: kind node image %s is not on this node yet; pulling it", node_image)
        nerdctl.pull(node_image, all_platforms=False, timeout=timeout)
    except KsiError as exc:
        return [Problem(EXIT_PREREQUISITE, f"kind node image {node_image} is not on this node and cannot be "
                        f"pulled ({reason(exc)})", fix, "images")]
    return []


def reason(exc: KsiError) -> str:
    """Return why a command failed in its own words: the message of its last log line (logrus ``msg=``)."""
    if not isinstance(exc, CommandFailed):
        return exc.message
    lines = [line for line in (exc.stderr or exc.stdout).splitlines() if line.strip()]
    if not lines:
        return exc.message
    match = re.search(r'msg="((?:[^"\\]|\\.)*)"', lines[-1])
    return f"{exc.argv[0]} {exc.argv[1]}: " + (json.loads(f'"{match[1]}"') if match else lines[-1].strip())
