"""``ksi images save``: fetch every image a run needs into a cache directory on shared storage.

Run where there is internet. It saves the kind node image ksi uses (for this machine's platform: it is
loaded with ``nerdctl load``), Liqo's chart for the liqoctl here and every image that chart names (one
archive, all platforms: ``kind load image-archive`` imports every platform an image index names and fails
on an archive saved for one, kubernetes-sigs/kind#3795), and each workload image named (one archive each,
all platforms), then records them in the manifest. What is already saved and verifies (size, sha256, the
digest a reference pins) is kept without contacting any registry. Saves of one directory are serialised by
a lock file; every file appears under its name only once complete.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ksi import __version__, log
from ksi.errors import KsiError, ToolMissingError, UsageError
from ksi.host.state import ensure_private_dir
from ksi.images import chart, manifest
from ksi.images.manifest import LIQO, LIQO_CHART, NODE, WORKLOAD, Entry, Manifest
from ksi.images.plan import reason
from ksi.images.reference import parse, same_image
from ksi.images.report import human
from ksi.images.verify import STAMPS, Stamps, check_file, sha256_file
from ksi.settings import Settings
from ksi.tools import proc
from ksi.tools.liqoctl import Liqoctl
from ksi.tools.nerdctl import Nerdctl

_log = log.get(__name__)
LOCK = ".ksi-images.lock"
PULL_WORKERS = 4


@dataclass(frozen=True)
class Group:
    """Images saved together into one archive."""

    purpose: str
    images: tuple[str, ...]
    all_platforms: bool
    liqo_version: str = ""
    file: str = ""  # fixed name; else named after the (single) image and its digest


class Saver:
    """One run of ``ksi images save`` into ``directory``."""

    def __init__(self, directory: Path, nerdctl: Nerdctl, stamps: Stamps, timeout: float, total: int) -> None:
        self.directory = directory
        self.nerdctl = nerdctl
        self.stamps = stamps
        self.timeout = timeout
        self.total = total
        self.done = 0
        self.fetched = 0

    def progress(self, image: str, purpose: str, what: str) -> None:
        """Log the progress line of one image."""
        self.done += 1
        _log.info("images: [%d/%d] %s (%s): %s", self.done, self.total, image, manifest.PURPOSES[purpose], what)

    def kept(self, current: Manifest, group: Group) -> list[Entry] | None:
        """Return the group's entries if its archive is saved, complete and intact; else None."""
        entries = [current.find(group.purpose, image, group.liqo_version) for image in group.images]
        if any(e is None for e in entries):
            return None
        found = [e for e in entries if e is not None]
        if len({e.file for e in found}) != 1 or (group.file and found[0].file != group.file):
            return None
        for image, entry in zip(group.images, found, strict=True):
            pinned = parse(image).digest
            if pinned and entry.digest != pinned:
                return None
        return found if check_file(self.directory, found[0], self.stamps) is None else None

    def pull(self, group: Group) -> dict[str, str]:
        """Pull the group's images side by side; return each one's digest."""
        def one(image: str) -> str:
            self.nerdctl.pull(image, all_platforms=group.all_platforms, timeout=self.timeout)
            digests = self.nerdctl.image_digests(image) or []
            pinned = parse(image).digest
            if not digests or (pinned and pinned not in digests):
                raise KsiError(f"after `nerdctl pull {image}` the image store has "
                               f"{'no such image' if not digests else 'digest ' + digests[0]}", step="images")
            return pinned or digests[0]

        digests: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=PULL_WORKERS, thread_name_prefix="pull") as pool:
            futures = {pool.submit(one, image): image for image in group.images}
            for future in concurrent.futures.as_completed(futures):
                image = futures[future]
                try:
                    digests[image] = future.result()
                except KsiError as exc:
                    for other in futures:
                        other.cancel()
                    raise KsiError(f"cannot pull {image} ({manifest.PURPOSES[group.purpose]}): {reason(exc)}",
                                   step="images", fix="check this machine's internet access and the image's name"
                                   ) from None
                self.progress(image, group.purpose, f"pulled {digests[image]}")
        return digests

    def save(self, current: Manifest, group: Group) -> tuple[list[Entry], list[str]]:
        """Save the group unless kept; return its entries and the files no longer needed."""
        kept = self.kept(current, group)
        if kept is not None:
            for image in group.images:
                self.progress(image, group.purpose, f"kept ({kept[0].file} verified)")
            return kept, []
        digests = self.pull(group)
        name = group.file or manifest.file_name(group.purpose, group.images[0], digests[group.images[0]])
        with manifest.staging(self.directory, name) as temp:
            self.nerdctl.save(list(group.images), temp, all_platforms=group.all_platforms, timeout=self.timeout)
            size, sha = temp.stat().st_size, sha256_file(temp)
        self.stamps.remember(self.directory / name, (self.directory / name).stat(), sha)
        self.fetched += len(group.images)
        _log.info("images: saved %s (%s, %d image%s)", name, human(size), len(group.images),
                  "s" if len(group.images) > 1 else "")
        entries = [Entry(group.purpose, image, digests[image], name, size, sha, group.liqo_version)
                   for image in group.images]
        replaced = {e.file for image in group.images
                    if (e := current.find(group.purpose, image, group.liqo_version)) is not None}
        return entries, sorted(replaced - {name})


def liqo_version_here(env: Mapping[str, str], given: str | None) -> str:
    """Return the Liqo release to save: ``given``, else the version of liqoctl on PATH."""
    if not given:
        if proc.which("liqoctl", env) is None:
            raise UsageError("cannot tell which Liqo release to save: liqoctl is not on PATH here", step="images",
                             fix="give --liqo-version with the version of liqoctl on the compute nodes (v1.0.1)")
        _, shown = Liqoctl(env).version()
        given = shown
    version = given if given.startswith("v") else f"v{given}"
    if not chart.SEMVER.match(version) or not version.startswith("v1."):
        raise UsageError(f"Liqo version {given!r} is not a Liqo v1 release (vX.Y.Z)", step="images",
                         fix="give --liqo-version with the version of liqoctl on the compute nodes (v1.0.1)")
    return version


def fetch_chart(saver: Saver, current: Manifest, version: str, local: str, repo: str) -> tuple[Entry, bytes]:
    """Return Liqo's chart entry and package: kept, packaged from ``local``, or downloaded from ``repo``."""
    entry = current.find(LIQO_CHART, "", version)
    if entry is not None and check_file(saver.directory, entry, saver.stamps) is None:
        _log.info("images: Liqo's chart %s: kept (%s verified)", version, entry.file)
        return entry, (saver.directory / entry.file).read_bytes()
    if local:
        source = Path(local)
        data = chart.package_directory(source) if source.is_dir() else source.read_bytes()
        origin = str(source.absolute())
    else:
        data, origin = chart.download(repo, version)
    chart.read_package(data, origin)  # refuse what is not a chart before it gets into the cache
    name = f"liqo-chart-{version}.tgz"
    with manifest.staging(saver.directory, name) as temp:
        temp.write_bytes(data)
    sha = sha256_file(saver.directory / name)
    _log.info("images: Liqo's chart %s: saved %s from %s (%s)", version, name, origin, human(len(data)))
    return Entry(LIQO_CHART, origin, f"sha256:{sha}", name, len(data), sha, version), data


def groups_for(current: Manifest, node_image: str, version: str, liqo_images: list[str],
               workload: Sequence[str]) -> list[Group]:
    """Return the archives to have: node image, Liqo's images, each workload image (saved before or named)."""
    wanted: list[str] = []
    for image in [*(e.reference for e in current.entries if e.purpose == WORKLOAD), *workload]:
        if not any(same_image(image, other) for other in wanted):
            wanted.append(image)
    return [Group(NODE, (node_image,), all_platforms=False),
            Group(LIQO, tuple(liqo_images), all_platforms=True, liqo_version=version,
                  file=f"liqo-{version}-images.tar"),
            *(Group(WORKLOAD, (image,), all_platforms=True) for image in wanted)]


def save(given_dir: str | None, workload: Sequence[str], liqo_version: str | None, settings: Settings,
         env: Mapping[str, str]) -> int:
    """Run ``ksi images save`` with the tools of ``env``; return 0 (errors are raised)."""
    from filelock import FileLock, Timeout

    bad = []
    for image in workload:
        try:
            parse(image)
        except ValueError as exc:
            bad.append(str(exc))
    if bad:
        raise UsageError("; ".join(bad), step="images", fix="name images as nerdctl pull takes them")
    for image in workload:
        ref = parse(image)
        if ref.tag == "latest" and not ref.digest:
            _log.warning("images: %s is tagged latest: Kubernetes pulls such an image whenever a pod starts (pull "
                         "policy Always), cache or not; give it another tag, or set imagePullPolicy: IfNotPresent",
                         image)
    if proc.which("nerdctl", env) is None:
        raise ToolMissingError("nerdctl not found on PATH (it pulls and saves the images)", step="images",
                               fix="run `ksi images save` where rootless nerdctl is installed and has internet")
    version = liqo_version_here(env, liqo_version)
    directory = manifest.cache_dir(given_dir, settings.image_cache)
    directory.mkdir(parents=True, exist_ok=True)
    stamps = Stamps(ensure_private_dir(settings.state_dir) / STAMPS)
    started = time.monotonic()
    try:
        with FileLock(str(directory / LOCK), timeout=settings.lock_timeout):
            return _save_locked(directory, settings, version, workload, env, stamps, started)
    except Timeout:
        raise KsiError(f"another `ksi images save` holds {directory / LOCK} for {settings.lock_timeout:g} s",
                       step="images", fix="wait for it to finish (or remove the lock file if none runs)") from None


def _save_locked(directory: Path, settings: Settings, version: str, workload: Sequence[str],
                 env: Mapping[str, str], stamps: Stamps, started: float) -> int:
    """Do the save, holding the directory's lock."""
    for name in manifest.remove_leftovers(directory):
        _log.info("images: removed %s, left by a save that did not finish", name)
    try:
        current = manifest.read(directory)
    except FileNotFoundError:
        current = Manifest()
    except (manifest.ManifestError, OSError, UnicodeDecodeError) as exc:
        raise KsiError(f"cannot use {directory / manifest.MANIFEST}: {exc}", step="images",
                       fix=f"move {directory / manifest.MANIFEST} aside and save again") from None
    _log.info("images: saving into %s: the kind node image, Liqo %s (chart and images)%s", directory, version,
              f", {len(workload)} workload image(s)" if workload else "")
    written_by = f"ksi {__version__}"
    saver = Saver(directory, Nerdctl(env), stamps, settings.create_timeout, 0)
    chart_entry, package = fetch_chart(saver, current, version, settings.liqo_chart, settings.liqo_chart_repo)
    current = current.with_entries([chart_entry], written_by)
    manifest.write(directory, current)
    groups = groups_for(current, settings.node_image, version,
                        chart.images(chart.read_package(package, chart_entry.file), version), workload)
    saver.total = sum(len(g.images) for g in groups)
    try:
        for group in groups:
            entries, obsolete = saver.save(current, group)
            current = current.with_entries(entries, written_by)
            manifest.write(directory, current)
            for name in obsolete:
                if not any(e.file == name for e in current.entries):
                    (directory / name).unlink(missing_ok=True)
    finally:
        stamps.save()
    size = sum({e.file: e.size for e in current.entries}.values())
    _log.info("images: %s holds %d entries (%s); %d image(s) fetched now, the rest kept, in %.1f s; use it with "
              "`ksi run --image-cache %s` or KSI_IMAGE_CACHE", directory, len(current.entries), human(size),
              saver.fetched, time.monotonic() - started, directory)
    return 0
