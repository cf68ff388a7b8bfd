"""The simulated outside world of images: remote registries, image stores, and image archives.

Standard library only: the node-container process (its kubelet pulls images) imports this with ``python -S``.

* **Registries.** Every well-formed reference exists remotely as a two-platform image (linux/amd64 and
  linux/arm64) whose digest is derived from the reference (or is the digest the reference pins). Every
  attempt to reach a registry or chart repository, by any simulated program on any host, is appended to
  ``<KSI_SIM_ROOT>/registry/contacts-<uid>.jsonl``, so tests can assert that a run contacted none. The fault op
  ``registry`` (``KSI_SIM_FAULTS=registry:fail``, or ``registry@HOST:fail`` for one host) takes the network
  away: a contact then fails the way a Go program's request fails without network (a DNS lookup error).
* **Image stores.** A JSON file of image records (name, digest, platforms whose content is present): one
  per host and user for nerdctl (rootless containerd), one per node container for the cluster's containerd.
* **Archives.** What ``nerdctl save`` writes: a real tar in OCI layout (``index.json``, ``blobs/sha256/``)
  plus Docker's ``manifest.json``. Manifests, configs and layers are content-addressed and verified on
  import; an archive saved for one platform names the other platform in its image index without its
  content, so importing it with ``--all-platforms`` (as ``kind load image-archive`` does) fails with
  ``content digest ... not found``, as with the real tools (kubernetes-sigs/kind#3795).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import socket
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.simhost.common import fault_for, hang, locked, sim_root, write_json

PLATFORMS = ("linux/amd64", "linux/arm64")
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
CONTACTS = "contacts-*.jsonl"  # one file per user (each appends only to its own)
ENV_LAYER_BYTES = "KSI_SIM_LAYER_BYTES"  # size of each image's one layer per platform (default 64 KiB)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PATH = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


class RegistryError(Exception):
    """A registry could not be reached, or an image or archive is not what was asked for."""


class ArchiveError(Exception):
    """An image archive cannot be imported; the message is containerd's."""


# ------------------------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Reference:
    """A parsed image reference, normalized as containerd stores it (``docker.io/library/x:latest``)."""

    domain: str
    path: str
    tag: str
    digest: str

    @property
    def repository(self) -> str:
        """Return ``domain/path``."""
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """Return the full name an image store records: ``domain/path[:tag][@digest]``."""
        return self.repository + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def familiar(self) -> str:
        """Return the repository as Docker shows it (``kindest/node``, ``busybox``)."""
        if self.domain != "docker.io":
            return self.repository
        return self.path.removeprefix("library/")

    @property
    def host(self) -> str:
        """Return the host a pull contacts (Docker Hub's registry for docker.io)."""
        return "registry-1.docker.io" if self.domain == "docker.io" else self.domain


def parse(text: str) -> Reference:
    """Parse an image reference as the distribution library does; raise RegistryError when malformed."""
    rest, at, digest = text.partition("@")
    if at and not _DIGEST.match(digest):
        raise RegistryError(f"{text}: invalid reference format")
    tag = ""
    head, colon, tail = rest.rpartition(":")
    if colon and "/" not in tail:
        rest, tag = head, tail
        if not _TAG.match(tag):
            raise RegistryError(f"{text}: invalid reference format")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, remainder
    else:
        domain, path = "docker.io", rest if slash else f"library/{rest}"
    if path != path.lower():
        raise RegistryError(f"{text}: invalid reference format: repository name must be lowercase")
    if not _PATH.match(path):
        raise RegistryError(f"{text}: invalid reference format")
    if not tag and not digest:
        tag = "latest"
    return Reference(domain, path, tag, digest)


def local_platform() -> str:
    """Return this machine's platform as containerd names it (``linux/amd64``)."""
    machine = os.uname().machine
    return "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# ------------------------------------------------------------------------------------------- contacts


def registry_dir(root: Path | None = None) -> Path:
    """Return (creating it, world-writable like /tmp) the directory of the simulated outside world."""
    path = (root or sim_root()) / "registry"
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir()
            path.chmod(0o1777)
    return path


def contacts(root: Path) -> list[dict[str, Any]]:
    """Return every registry contact recorded under the simulation root ``root``, oldest first."""
    lines = [line for path in (root / "registry").glob(CONTACTS) for line in path.read_text().splitlines()]
    return sorted((json.loads(line) for line in lines if line.strip()), key=lambda c: float(c["time"]))


def record_contact(directory: Path, tool: str, host: str, what: str, reached: bool) -> None:
    """Append one contact to ``directory/contacts-<uid>.jsonl``."""
    line = json.dumps({"time": time.time(), "host": socket.gethostname(), "uid": os.getuid(), "tool": tool,
                       "registry": host, "what": what, "reached": reached})
    fd = os.open(directory / CONTACTS.replace("*", str(os.getuid())), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, (line + "\n").encode())  # one write with O_APPEND: lines of concurrent tools stay whole
    finally:
        os.close(fd)


def contact(tool: str, host: str, what: str) -> None:
    """Record that ``tool`` contacts ``host`` for ``what``, then apply the ``registry`` fault.

    Raises RegistryError with Go's wording of a DNS failure when the network is off (``registry:fail``).
    """
    fault = fault_for("registry")
    offline = fault is not None and fault.mode == "fail"
    record_contact(registry_dir(), tool, host, what, not offline)
    if fault is not None and fault.mode == "hang":
        hang()
    if fault is not None and fault.mode == "slow":
        time.sleep(fault.seconds)
    if offline:
        raise RegistryError(f"dial tcp: lookup {host}: no such host")


def resolve(ref: Reference, tool: str) -> str:
    """Contact the registry of ``ref`` and return the digest its tag (or pinned digest) resolves to.

    Raises RegistryError worded as containerd's resolver when the registry cannot be reached.
    """
    target = ref.digest or ref.tag
    try:
        contact(tool, ref.host, ref.name)
    except RegistryError as exc:
        raise RegistryError(f'failed to resolve reference "{ref.name}": failed to do request: Head '
                            f'"https://{ref.host}/v2/{ref.path}/manifests/{target}": {exc}') from None
    return remote_digest(ref)


def remote_digest(ref: Reference) -> str:
    """Return the digest of the image ``ref`` names in the simulated registry (its pin, if it has one)."""
    if ref.digest:
        return ref.digest
    return "sha256:" + hashlib.sha256(f"sim-registry {ref.repository}:{ref.tag}".encode()).hexdigest()


# ------------------------------------------------------------------------------------------- content


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _platform_object(platform: str) -> dict[str, str]:
    os_name, _, arch = platform.partition("/")
    return {"architecture": arch, "os": os_name}


def layer_size() -> int:
    """Return the size of one simulated layer (KSI_SIM_LAYER_BYTES, default 64 KiB)."""
    return int(os.environ.get(ENV_LAYER_BYTES) or 65536)


def platform_blobs(image_digest: str, platform: str) -> tuple[str, dict[str, bytes]]:
    """Return the manifest digest of ``platform`` of an image and its blobs (manifest, config, layer)."""
    seed = hashlib.sha256(f"{image_digest} {platform}".encode()).digest()
    layer = random.Random(seed).randbytes(layer_size())
    config = json.dumps({**_platform_object(platform), "rootfs": {"type": "layers",
                                                                 "diff_ids": [_digest(layer)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                           "config": {"mediaType": CONFIG_TYPE, "digest": _digest(config), "size": len(config)},
                           "layers": [{"mediaType": LAYER_TYPE, "digest": _digest(layer), "size": len(layer)}]},
                          sort_keys=True).encode()
    return _digest(manifest), {_digest(manifest): manifest, _digest(config): config, _digest(layer): layer}


def index_blob(image_digest: str) -> bytes:
    """Return the image index of an image: one manifest per platform the registry holds.

    Stored under the image's digest; its bytes are not hashed to that digest (a pinned digest comes from
    outside the simulation), every blob it leads to is.
    """
    manifests = []
    for platform in PLATFORMS:
        digest, blobs = platform_blobs(image_digest, platform)
        manifests.append({"mediaType": MANIFEST_TYPE, "digest": digest, "size": len(blobs[digest]),
                          "platform": _platform_object(platform)})
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests}, sort_keys=True).encode()


# ------------------------------------------------------------------------------------------- stores


@dataclass(frozen=True)
class Image:
    """An image in a store: its full name, the digest it points at, the platforms whose content is there."""

    name: str
    digest: str
    platforms: tuple[str, ...]
    created: float

    @property
    def size(self) -> int:
        """Return the bytes of content present (one layer per platform)."""
        return layer_size() * len(self.platforms)


class ImageStore:
    """The image records of one containerd namespace, in ``<directory>/images.json`` (locked per change)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "images.json"

    def images(self) -> list[Image]:
        """Return every image, oldest first."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [Image(d["name"], d["digest"], tuple(d["platforms"]), d["created"]) for d in data]

    def find(self, identifier: str) -> list[Image]:
        """Return the images ``identifier`` names, as nerdctl's image inspect looks them up.

        A reference with a digest matches every image with that target digest; a name matches its full name
        (``:latest`` implied); otherwise a hexadecimal prefix matches digests (a short image ID).
        """
        pool = self.images()
        try:
            ref = parse(identifier)
        except RegistryError:
            ref = None
        if ref is not None and ref.digest:
            return [image for image in pool if image.digest == ref.digest]
        if ref is not None:
            named = [image for image in pool if image.name == ref.name]
            if named:
                return named
        prefix = identifier.removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{1,64}", prefix):
            return [image for image in pool if image.digest.removeprefix("sha256:").startswith(prefix)]
        return []

    @contextlib.contextmanager
    def changing(self) -> Iterator[dict[str, Image]]:
        """Hold the store's lock and yield its images by name; what the block leaves there is written back."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with locked(self.directory):
            images = {image.name: image for image in self.images()}
            yield images
            write_json(self.path, [{"name": i.name, "digest": i.digest, "platforms": list(i.platforms),
                                    "created": i.created} for i in sorted(images.values(), key=lambda i: i.created)])

    def add(self, name: str, digest: str, platforms: Sequence[str]) -> Image:
        """Record ``name`` -> ``digest`` with ``platforms`` (merged with what is there for the same digest)."""
        with self.changing() as images:
            old = images.get(name)
            have = set(old.platforms) if old is not None and old.digest == digest else set()
            image = Image(name, digest, tuple(p for p in PLATFORMS if p in have | set(platforms)), time.time())
            images[name] = image
        return image


def pull(store: ImageStore, text: str, tool: str, platforms: Sequence[str]) -> Image:
    """Pull ``text`` from its registry into ``store`` (content of ``platforms``); raise RegistryError."""
    ref = parse(text)
    digest = resolve(ref, tool)
    return store.add(ref.name, digest, platforms)


# ------------------------------------------------------------------------------------------- archives


def write_archive(handle: IO[bytes], images: Sequence[Image], platforms: Sequence[str]) -> None:
    """Write ``images`` as ``nerdctl save`` does: OCI layout with the content of ``platforms`` (when present)."""
    blobs: dict[str, bytes] = {}
    index_entries, docker_entries = [], []
    for image in images:
        index = index_blob(image.digest)
        blobs[image.digest] = index
        ref = parse(image.name)
        index_entries.append({"mediaType": INDEX_TYPE, "digest": image.digest, "size": len(index),
                              "annotations": {NAME_ANNOTATION: image.name, REF_ANNOTATION: ref.tag or image.digest}})
        for platform in platforms:
            if platform not in image.platforms:
                continue
            manifest_digest, content = platform_blobs(image.digest, platform)
            blobs.update(content)
            manifest = json.loads(content[manifest_digest])
            if platform == local_platform():
                docker_entries.append({
                    "Config": "blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:"),
                    "RepoTags": [f"{ref.familiar}:{ref.tag}"] if ref.tag else [],
                    "Layers": ["blobs/sha256/" + layer["digest"].removeprefix("sha256:")
                               for layer in manifest["layers"]]})
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
               ("index.json", json.dumps({"schemaVersion": 2, "mediaType": INDEX_TYPE,
                                          "manifests": index_entries}).encode()),
               ("manifest.json", json.dumps(docker_entries).encode())]
    members += [(f"blobs/sha256/{digest.removeprefix('sha256:')}", data) for digest, data in sorted(blobs.items())]
    with tarfile.open(fileobj=handle, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class Imported:
    """An image an archive held: its name, digest and the platforms whose content was imported."""

    name: str
    digest: str
    platforms: tuple[str, ...]


def read_archive(handle: IO[bytes], all_platforms: bool) -> list[Imported]:
    """Read and verify an archive as containerd's import does; raise ArchiveError with containerd's message.

    With ``all_platforms`` every manifest an image index names must be in the archive (ctr import
    --all-platforms, what kind uses); otherwise only this machine's platform is imported.
    """
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is not None:
                    blobs[member.name] = extracted.read()
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError("unexpected EOF" if "unexpected end" in str(exc) or isinstance(exc, EOFError)
                           else "archive/tar: invalid tar header") from None

    def blob(digest: str, verify: bool = True) -> bytes:
        data = blobs.get(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        if data is None:
            raise ArchiveError(f"content digest {digest}: not found")
        if verify and _digest(data) != digest:
            raise ArchiveError(f"failed to ingest \"blobs/sha256/{digest.removeprefix('sha256:')}\": unexpected "
                               f"commit digest {_digest(data)}, expected {digest}: failed precondition")
        return data

    if "index.json" not in blobs:
        raise ArchiveError("unrecognized image format")
    try:
        index = json.loads(blobs["index.json"])
        found = []
        for entry in index.get("manifests", []):
            name = entry.get("annotations", {}).get(NAME_ANNOTATION)
            image_index = json.loads(blob(entry["digest"], verify=False))
            wanted = [m for m in image_index["manifests"]
                      if all_platforms or f"{m['platform']['os']}/{m['platform']['architecture']}" == local_platform()]
            if not wanted:
                raise ArchiveError(f"no match for platform in manifest {entry['digest']}: not found")
            for manifest_entry in wanted:
                manifest = json.loads(blob(manifest_entry["digest"]))
                for part in (manifest["config"], *manifest["layers"]):
                    blob(part["digest"])
            platforms = tuple(f"{m['platform']['os']}/{m['platform']['architecture']}" for m in wanted)
            if name:
                found.append(Imported(name, entry["digest"], platforms))
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"invalid image archive: {exc}") from None
    return found


def import_archive(store: ImageStore, handle: IO[bytes], all_platforms: bool) -> list[Imported]:
    """Verify an archive and record its images in ``store``; return them."""
    imported = read_archive(handle, all_platforms)
    for image in imported:
        store.add(image.name, image.digest, image.platforms)
    return imported
