"""Image references as container runtimes normalize them (``busybox`` is ``docker.io/library/busybox:latest``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$")
_PATH = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


@dataclass(frozen=True)
class Reference:
    """A parsed reference: registry domain, repository path, tag (``latest`` if neither tag nor digest), digest."""

    domain: str
    path: str
    tag: str
    digest: str

    @property
    def normalized(self) -> str:
        """Return ``domain/path[:tag][@digest]``, the name a containerd image store records."""
        return f"{self.domain}/{self.path}" + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest}" if self.digest else "")

    @property
    def familiar(self) -> str:
        """Return the repository as people write it: ``kindest/node``, ``busybox``, ``ghcr.io/liqotech/ipam``."""
        if self.domain != "docker.io":
            return f"{self.domain}/{self.path}"
        return self.path.removeprefix("library/")


def parse(text: str) -> Reference:
    """Parse ``text`` as the distribution library does; raise ValueError naming what is wrong."""
    rest, at, digest = text.strip().partition("@")
    if at and not _DIGEST.match(digest):
        raise ValueError(f"{text!r} has a malformed digest (expected @sha256: and 64 hex digits)")
    tag = ""
    head, colon, tail = rest.rpartition(":")
    if colon and "/" not in tail:
        rest, tag = head, tail
        if not _TAG.match(tag):
            raise ValueError(f"{text!r} has a malformed tag {tag!r}")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, remainder
    else:
        domain, path = "docker.io", rest if slash else f"library/{rest}"
    if not _PATH.match(path):
        raise ValueError(f"{text!r} is not an image reference (repository names are lowercase letters, digits, "
                         "'.', '_', '-' and '/')")
    return Reference(domain, path, tag if tag or digest else "latest", digest)


def normalize(text: str) -> str:
    """Return the normalized form of ``text`` (``text`` itself when it does not parse)."""
    try:
        return parse(text).normalized
    except ValueError:
        return text


def same_image(a: str, b: str) -> bool:
    """True when references ``a`` and ``b`` name the same image (``busybox`` and ``docker.io/library/busybox``)."""
    return normalize(a) == normalize(b)
