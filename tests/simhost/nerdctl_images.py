"""The image commands of the simulated nerdctl: ``pull``, ``save``, ``load``, ``image inspect``.

They work on the user's rootless image store on this host (:mod:`tests.simhost.registry`) and contact the
simulated registry only where the real nerdctl does: ``pull``, and ``save`` when content of a platform it
must export is missing locally (nerdctl 2.x fetches it first).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tests.simhost import registry
from tests.simhost.common import Flag, NotModelled, SimError, delay_or_fail, logrus, parse_flags, state_dir

PLATFORM_FLAGS = [Flag("platform", kind="list"), Flag("all-platforms", kind="bool"), Flag("quiet", "q", "bool")]


class NerdctlFailure(SimError):
    """nerdctl failed; ``message`` is its stderr (logrus lines), the exit status is 1."""


def fatal(message: str) -> NerdctlFailure:
    """Return the failure nerdctl reports with ``level=fatal``."""
    return NerdctlFailure(logrus("fatal", message))


def store() -> registry.ImageStore:
    """Return the user's rootless image store on this host."""
    return registry.ImageStore(state_dir())


def apply_fault(op: str) -> None:
    """Apply the KSI_SIM_FAULTS fault of ``op``; a failure looks like a stopped rootless containerd."""
    if delay_or_fail(op):
        raise fatal("rootless containerd not running? (hint: use `containerd-rootless-setuptool.sh install` to "
                    f"start rootless containerd): stat /run/user/{os.getuid()}/containerd-rootless: no such file "
                    "or directory")


def platforms(values: dict[str, Any]) -> list[str]:
    """Return the platforms ``--platform``/``--all-platforms`` select (default: this machine's)."""
    if values.get("all-platforms"):
        return list(registry.PLATFORMS)
    chosen = [p.strip() for item in values.get("platform", []) for p in item.split(",") if p.strip()]
    for platform in chosen:
        if platform not in registry.PLATFORMS:
            raise NotModelled(f"platform {platform!r}")
    return chosen or [registry.local_platform()]


def parse_ref(text: str) -> registry.Reference:
    """Parse ``text`` or fail as nerdctl does on a malformed reference."""
    try:
        return registry.parse(text)
    except registry.RegistryError as exc:
        raise fatal(str(exc)) from None


def inspect_object(image: registry.Image) -> dict[str, Any]:
    """Return the Docker-compatible object ``nerdctl image inspect`` prints for ``image``."""
    ref = registry.parse(image.name)
    local = registry.local_platform()
    shown = local if local in image.platforms else image.platforms[0]
    manifest_digest, blobs = registry.platform_blobs(image.digest, shown)
    config_digest = json.loads(blobs[manifest_digest])["config"]["digest"]
    os_name, _, arch = shown.partition("/")
    return {
        "Id": config_digest,
        "RepoTags": [f"{ref.familiar}:{ref.tag}"] if ref.tag else [],
        "RepoDigests": [f"{ref.familiar}@{image.digest}"],
        "Comment": "", "Created": datetime.fromtimestamp(image.created, UTC).isoformat().replace("+00:00", "Z"),
        "Author": "", "Config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "Architecture": arch, "Os": os_name, "Size": image.size,
        "RootFS": {"Type": "layers", "Layers": [f"sha256:{manifest_digest[7:]}"]},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }


def image_inspect(identifiers: Sequence[str], fmt: str | None) -> None:
    """Print every image ``identifiers`` name; fail after printing, naming those not found."""
    apply_fault("nerdctl-inspect")
    images, missing = store(), []
    objects: list[dict[str, Any]] = []
    for identifier in identifiers:
        found = images.find(identifier)
        if found:
            objects.append(inspect_object(found[0]))
        else:
            missing.append(identifier)
    if fmt:
        sys.stdout.write("".join(json.dumps(o) + "\n" for o in objects))
    else:
        print(json.dumps(objects, indent=4))
    sys.stdout.flush()
    if missing:
        raise fatal(f"{len(missing)} errors:\n" + "\n".join(f"no such image: {m}" for m in missing))


def pull(text: str, chosen: Sequence[str], quiet: bool) -> None:
    """Pull ``text`` from its registry into the user's store (content of ``chosen`` platforms)."""
    apply_fault("nerdctl-pull")
    ref = parse_ref(text)
    try:
        image = registry.pull(store(), text, "nerdctl", chosen)
    except registry.RegistryError as exc:
        raise fatal(str(exc)) from None
    if not quiet:
        print(f"{ref.name}: resolved       |++++++++++++++++++++++++++++++++++++++|", file=sys.stderr)
        print(f"elapsed: 0.1 s{'total:':>38} {image.size / 1024:.1f} Ki (simulated)", file=sys.stderr)


def save(names: Sequence[str], output: str, chosen: Sequence[str]) -> None:
    """Write ``names`` to ``output`` (stdout when empty) like ``nerdctl save``.

    Content of a chosen platform missing from the store is fetched from the registry first (nerdctl 2.x's
    EnsureAllContent). The output file is opened without truncation, as nerdctl does.
    """
    apply_fault("nerdctl-save")
    images = store()
    selected: list[registry.Image] = []
    for text in names:
        ref = parse_ref(text)
        found = images.find(text)
        if not found:
            raise fatal(f'image "{ref.name}": not found')
        image = found[0]
        if not set(chosen) <= set(image.platforms):
            try:
                registry.resolve(registry.parse(image.name), "nerdctl")
            except registry.RegistryError as exc:
                raise fatal(f"failed to fetch content of {image.name}: {exc}") from None
            image = images.add(image.name, image.digest, chosen)
        if image not in selected:
            selected.append(image)
    if output:
        try:
            fd = os.open(output, os.O_CREAT | os.O_WRONLY, 0o644)
        except OSError as exc:
            raise fatal(f"open {output}: {(exc.strerror or str(exc)).lower()}") from None
        with os.fdopen(fd, "wb") as handle:
            registry.write_archive(handle, selected, chosen)
            handle.flush()
            os.fsync(handle.fileno())
    else:
        if sys.stdout.isatty():
            raise fatal("cowardly refusing to save to a terminal. Use the -o flag or redirect")
        registry.write_archive(sys.stdout.buffer, selected, chosen)


def load(source: str, all_platforms: bool, quiet: bool) -> None:
    """Import an archive (``source``, or stdin) into the user's store like ``nerdctl load``."""
    apply_fault("nerdctl-load")
    try:
        handle = open(source, "rb") if source else sys.stdin.buffer  # noqa: SIM115 - closed below
    except OSError as exc:
        raise fatal(f"open {source}: {(exc.strerror or str(exc)).lower()}") from None
    try:
        imported = registry.import_archive(store(), handle, all_platforms)
    except registry.ArchiveError as exc:
        raise fatal(str(exc)) from None
    finally:
        if source:
            handle.close()
    if not quiet:
        sys.stdout.write("".join(f"Loaded image: {image.name}\n" for image in imported))


def run(command: str, rest: list[str]) -> int:
    """Run ``nerdctl pull|save|load|image inspect`` (``command`` is the first word)."""
    if command == "image":
        if rest[:1] != ["inspect"]:
            raise NotModelled(f"image {' '.join(rest[:1])!r}")
        values, names = parse_flags(rest[1:], [Flag("format", "f"), Flag("mode"), Flag("platform")])
        if values.get("mode", "dockercompat") != "dockercompat" or "platform" in values:
            raise NotModelled("image inspect --mode native or --platform")
        if values.get("format") not in (None, "{{json .}}", "json"):
            raise NotModelled(f"image inspect --format {values['format']!r}")
        if not names:
            raise fatal('"nerdctl image inspect" requires at least 1 argument')
        image_inspect(names, values.get("format"))
        return 0
    if command == "pull":
        values, names = parse_flags(rest, [*PLATFORM_FLAGS, Flag("unpack")])
        if len(names) != 1:
            raise fatal(f'"nerdctl pull" requires exactly 1 argument(s), got {len(names)}')
        pull(names[0], platforms(values), bool(values.get("quiet")))
        return 0
    if command == "save":
        values, names = parse_flags(rest, [*PLATFORM_FLAGS, Flag("output", "o")])
        if not names:
            raise fatal('"nerdctl save" requires at least 1 argument')
        save(names, values.get("output", ""), platforms(values))
        return 0
    if command == "load":
        values, extra = parse_flags(rest, [*PLATFORM_FLAGS, Flag("input", "i")])
        if extra:
            raise fatal(f'unknown command "{extra[0]}" for "nerdctl load"')
        if values.get("platform"):
            raise NotModelled("load --platform")
        load(values.get("input", ""), bool(values.get("all-platforms")), bool(values.get("quiet")))
        return 0
    raise NotModelled(f"subcommand {command!r}")
