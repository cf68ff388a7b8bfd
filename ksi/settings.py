"""Every setting of ksi in one place: one declaration each, with its environment variable, parser, default, doc.

Precedence is command line > environment > default; the CLI passes its flags as overrides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ksi.errors import EXIT_USAGE, Problem

# The node image pinned by digest: the default image of kind v0.33.0 (its release notes list it).
DEFAULT_NODE_IMAGE = (
    "kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5"
)
PROVIDERS = ("nerdctl",)  # container runtimes with an adapter in ksi.tools.runtime
SCOPE_CHOICES = ("auto", "always", "never")
MIN_TOKEN_TTL = 600
T = TypeVar("T")


def default_state_dir(uid: int | None = None) -> Path:
    """Return the node-local directory for locks, port reservations and cluster records of one user."""
    return Path("/tmp") / f"ksi-{os.getuid() if uid is None else uid}"  # noqa: S108 - node-local by design


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


def _ttl(text: str) -> int:
    value = int(text)
    if value < MIN_TOKEN_TTL:
        raise ValueError(f"must be at least {MIN_TOKEN_TTL} seconds")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _state_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def _chart(text: str) -> str:
    path = Path(text)
    if not (path.is_dir() or (path.is_file() and path.name.endswith((".tgz", ".tar.gz")))):
        raise ValueError("is neither a directory nor a .tgz (a local copy of Liqo's Helm chart)")
    return text


def _cache_dir(text: str) -> str:
    # `ksi images save` creates it; a run finds out whether it holds a cache (its manifest) in the checks.
    return str(Path(_not_empty(text)).expanduser().absolute())


def _url(text: str) -> str:
    if not text.startswith(("https://", "http://")):
        raise ValueError("is not an http(s) URL")
    return text


def _ipv4(text: str) -> str:
    import ipaddress

    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError("is not an IPv4 address") from None
    if address.is_loopback or address.is_unspecified:
        raise ValueError("must be an address other nodes can reach, not loopback or 0.0.0.0")
    return text


_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _namespaces(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for name in names:
        if len(name) > 63 or not _NAMESPACE.match(name):
            raise ValueError(f"{name!r} is not a namespace name (lower-case letters, digits and '-', at most 63)")
        if name.startswith("kube-") or name.startswith("liqo"):
            raise ValueError(f"{name!r} is a system namespace; Liqo's pods and Kubernetes' own stay local")
    return names


def _not_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def setting(env: str, parse: Callable[[str], T], default: T | Callable[[], T], doc: str) -> T:
    """Declare a field of Settings: the variable ``env`` sets it, ``parse`` checks its value, ``doc`` says what it is.

    ``default`` is the value, or (for a default that depends on the node, like the state directory) a function
    that returns it.
    """
    metadata = {"env": env, "parse": parse, "doc": doc}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Values that shape a run, one declaration each (see :func:`setting`)."""

    provider: str = setting("KIND_EXPERIMENTAL_PROVIDER", _choice(PROVIDERS), "nerdctl", "kind's provider")
    node_image: str = setting("KSI_NODE_IMAGE", _not_empty, DEFAULT_NODE_IMAGE, "kind node image, pinned by digest")
    systemd_scope: str = setting("KSI_SYSTEMD_SCOPE", _choice(SCOPE_CHOICES), "auto",
                                 "run kind under `systemd-run --user --scope`")
    create_timeout: float = setting("KSI_CREATE_TIMEOUT", _seconds, 600.0,
                                    "seconds for `kind create cluster` (and for each image pull, save or load)")
    kind_wait: float = setting("KSI_KIND_WAIT", _seconds, 180.0, "seconds kind waits for the control plane (--wait)")
    teardown_timeout: float = setting("KSI_TEARDOWN_TIMEOUT", _seconds, 20.0, "seconds for deleting a cluster")
    grace_period: float = setting("KSI_GRACE_PERIOD", _seconds, 5.0,
                                  "seconds a signalled workload gets before SIGKILL")
    token_ttl: int = setting("KSI_TOKEN_TTL", _ttl, 86400, "token lifetime when the job's end time is unknown")
    lock_timeout: float = setting("KSI_LOCK_TIMEOUT", _seconds, 900.0,
                                  "seconds to wait for the node-local `kind create` lock")
    state_dir: Path = setting("KSI_STATE_DIR", _state_dir, default_state_dir,  # noqa: RUF009 - a field(), immutable
                              "node-local state: locks, port reservations, cluster records (/tmp/ksi-UID)")
    clean_stale: bool = setting("KSI_CLEAN_STALE", _bool, True,
                                "remove this user's stale clusters on this node before creating one")
    # Multi-node runs (srun -N2 and more):
    rendezvous_timeout: float = setting("KSI_RENDEZVOUS_TIMEOUT", _seconds, 120.0,
                                        "seconds for every node to appear in the run directory")
    leader_timeout: float = setting("KSI_LEADER_TIMEOUT", _seconds, 60.0,
                                    "seconds of heartbeat silence after which a node is declared dead")
    install_timeout: float = setting("KSI_INSTALL_TIMEOUT", _seconds, 600.0, "seconds for `liqoctl install kind`")
    peer_timeout: float = setting("KSI_PEER_TIMEOUT", _seconds, 600.0,
                                  "seconds for `liqoctl peer` and the virtual node becoming Ready")
    offload_namespaces: tuple[str, ...] = setting(
        "KSI_OFFLOAD_NAMESPACES", _namespaces, ("default",),
        "comma-separated namespaces whose pods may run on the other nodes (Liqo namespace offloading)")
    liqo_chart: str = setting("KSI_LIQO_CHART", _chart, "",
                              "local copy of Liqo's Helm chart (a directory or .tgz) instead of the online one")
    node_address: str = setting("KSI_NODE_ADDRESS", _ipv4, "",
                                "the address other nodes reach this node at (default: that of the default route)")
    # Images from shared storage (`ksi images save`, `ksi run --image-cache`):
    image_cache: str = setting("KSI_IMAGE_CACHE", _cache_dir, "",
                               "image cache written by `ksi images save`; runs load every image from it")
    liqo_chart_repo: str = setting("KSI_LIQO_CHART_REPO", _url, "https://helm.liqo.io/",
                                   "Helm repository `ksi images save` downloads Liqo's chart from")


def env_name(name: str) -> str:
    """Return the environment variable that sets the setting ``name``."""
    return str(_declared()[name].metadata["env"])


def _declared() -> dict[str, Any]:
    return {f.name: f for f in fields(Settings)}


def load(environ: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> tuple[Settings, list[Problem]]:
    """Build Settings from defaults, ``environ`` and command-line ``overrides``; report every bad value."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for declared in fields(Settings):
        name, env = declared.name, declared.metadata["env"]
        source, raw = "", None
        if overrides and overrides.get(name) is not None:
            source, raw = f"--{name.replace('_', '-')}", overrides[name]
        elif environ.get(env, "") != "":
            source, raw = env, environ[env]
        if raw is None:
            continue
        try:
            values[name] = declared.metadata["parse"](raw)
        except ValueError as exc:
            problems.append(
                Problem(EXIT_USAGE, f"{source}={raw!r} {exc}", f"correct or unset {source}", "settings")
            )
    return Settings(**values), problems
