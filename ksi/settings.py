"""Every setting of ksi in one place: defaults, the environment variable that overrides each, validation.

Precedence is command line > environment > default; the CLI passes its flags as overrides.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ksi.errors import EXIT_USAGE, Problem

# The node image pinned by digest: the default image of kind v0.33.0 (its release notes list it).
DEFAULT_NODE_IMAGE = (
    "kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5"
)
PROVIDERS = ("nerdctl",)  # container runtimes with an adapter in ksi.runtimes
SCOPE_CHOICES = ("auto", "always", "never")
MIN_TOKEN_TTL = 600


def default_state_dir(uid: int | None = None) -> Path:
    """Return the node-local directory for locks, port reservations and cluster records of one user."""
    return Path("/tmp") / f"ksi-{os.getuid() if uid is None else uid}"  # noqa: S108 - node-local by design


@dataclass(frozen=True)
class Settings:
    """Values that shape a run; each field lists the environment variable that sets it."""

    provider: str = "nerdctl"  # KIND_EXPERIMENTAL_PROVIDER
    node_image: str = DEFAULT_NODE_IMAGE  # KSI_NODE_IMAGE
    systemd_scope: str = "auto"  # KSI_SYSTEMD_SCOPE: run kind under `systemd-run --user --scope`
    create_timeout: float = 600.0  # KSI_CREATE_TIMEOUT: seconds for `kind create cluster`
    kind_wait: float = 180.0  # KSI_KIND_WAIT: seconds kind waits for the control plane (--wait)
    teardown_timeout: float = 20.0  # KSI_TEARDOWN_TIMEOUT: budget for deleting the cluster
    grace_period: float = 5.0  # KSI_GRACE_PERIOD: seconds a signalled workload gets before SIGKILL
    token_ttl: int = 86400  # KSI_TOKEN_TTL: token lifetime when the job's end time is unknown
    lock_timeout: float = 900.0  # KSI_LOCK_TIMEOUT: wait for the node-local `kind create` lock
    state_dir: Path = Path()  # KSI_STATE_DIR: node-local state (default /tmp/ksi-UID)
    clean_stale: bool = True  # KSI_CLEAN_STALE: remove this user's stale clusters before creating
    # Multi-node runs (srun -N2 and more):
    rendezvous_timeout: float = 120.0  # KSI_RENDEZVOUS_TIMEOUT: for every node to appear in the run directory
    leader_timeout: float = 60.0  # KSI_LEADER_TIMEOUT: a silent leader (or follower) is declared dead after it
    install_timeout: float = 600.0  # KSI_INSTALL_TIMEOUT: `liqoctl install kind`
    peer_timeout: float = 600.0  # KSI_PEER_TIMEOUT: `liqoctl peer` plus the virtual node becoming Ready
    liqo_chart: str = ""  # KSI_LIQO_CHART: local Helm chart for nodes without internet access
    node_address: str = ""  # KSI_NODE_ADDRESS: this node's address (default: the one of its default route)


_ENV: dict[str, str] = {
    "provider": "KIND_EXPERIMENTAL_PROVIDER",
    "node_image": "KSI_NODE_IMAGE",
    "systemd_scope": "KSI_SYSTEMD_SCOPE",
    "create_timeout": "KSI_CREATE_TIMEOUT",
    "kind_wait": "KSI_KIND_WAIT",
    "teardown_timeout": "KSI_TEARDOWN_TIMEOUT",
    "grace_period": "KSI_GRACE_PERIOD",
    "token_ttl": "KSI_TOKEN_TTL",
    "lock_timeout": "KSI_LOCK_TIMEOUT",
    "state_dir": "KSI_STATE_DIR",
    "clean_stale": "KSI_CLEAN_STALE",
    "rendezvous_timeout": "KSI_RENDEZVOUS_TIMEOUT",
    "leader_timeout": "KSI_LEADER_TIMEOUT",
    "install_timeout": "KSI_INSTALL_TIMEOUT",
    "peer_timeout": "KSI_PEER_TIMEOUT",
    "liqo_chart": "KSI_LIQO_CHART",
    "node_address": "KSI_NODE_ADDRESS",
}


def env_name(field: str) -> str:
    """Return the environment variable that sets ``field``."""
    return _ENV[field]


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


def _existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise ValueError("is not an existing directory (a local copy of Liqo's Helm chart)")
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


_PARSERS: dict[str, Callable[[str], Any]] = {
    "provider": _choice(PROVIDERS),
    "node_image": lambda text: text if text.strip() else _raise("must not be empty"),
    "systemd_scope": _choice(SCOPE_CHOICES),
    "create_timeout": _seconds,
    "kind_wait": _seconds,
    "teardown_timeout": _seconds,
    "grace_period": _seconds,
    "token_ttl": _ttl,
    "lock_timeout": _seconds,
    "state_dir": _state_dir,
    "clean_stale": _bool,
    "rendezvous_timeout": _seconds,
    "leader_timeout": _seconds,
    "install_timeout": _seconds,
    "peer_timeout": _seconds,
    "liqo_chart": _existing_dir,
    "node_address": _ipv4,
}


def _raise(message: str) -> Any:
    raise ValueError(message)


def load(environ: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> tuple[Settings, list[Problem]]:
    """Build Settings from defaults, ``environ`` and command-line ``overrides``; report every bad value."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for field in fields(Settings):
        source, raw = "", None
        if overrides and overrides.get(field.name) is not None:
            source, raw = f"--{field.name.replace('_', '-')}", overrides[field.name]
        elif environ.get(_ENV[field.name], "") != "":
            source, raw = _ENV[field.name], environ[_ENV[field.name]]
        if raw is None:
            continue
        try:
            values[field.name] = _PARSERS[field.name](raw)
        except ValueError as exc:
            problems.append(
                Problem(EXIT_USAGE, f"{source}={raw!r} {exc}", f"correct or unset {source}", "settings")
            )
    settings = replace(Settings(), **values)
    if "state_dir" not in values:
        settings = replace(settings, state_dir=default_state_dir())
    return settings, problems
