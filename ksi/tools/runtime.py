"""The container-runtime boundary: what ksi needs from the engine kind's nodes run on.

kind picks the runtime through its provider; ksi talks to the same runtime directly only to verify that a
cluster is gone and to remove what kind left behind. A new runtime (podman, docker) is one module here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

CLUSTER_LABEL = "io.x-k8s.kind.cluster"  # set by kind on every node container


@dataclass(frozen=True)
class Container:
    """A kind node container as the runtime lists it."""

    id: str
    name: str
    cluster: str
    running: bool


class ContainerRuntime(Protocol):
    """Verbs ksi needs from a container runtime; adapters hold no policy."""

    name: str

    def node_containers(self, cluster: str | None = None, *, timeout: float = 30.0) -> list[Container]:
        """List kind node containers (of ``cluster``, or of every cluster), running or not."""
        ...

    def remove(self, containers: list[Container], *, timeout: float = 30.0) -> None:
        """Force-remove ``containers``."""
        ...

    def info(self, *, timeout: float = 30.0) -> dict[str, object]:
        """Return the runtime's own description of itself (rootless, cgroup version, data root)."""
        ...

    def version(self, *, timeout: float = 30.0) -> str:
        """Return the runtime client's version (2.0.3); raise KsiError when it cannot be read."""
        ...


def runtime_for(provider: str, env: Mapping[str, str]) -> ContainerRuntime:
    """Return the adapter for kind's ``provider`` (the value of KIND_EXPERIMENTAL_PROVIDER)."""
    if provider == "nerdctl":
        from ksi.tools.nerdctl import Nerdctl

        return Nerdctl(env)
    raise ValueError(f"no container runtime adapter for provider {provider!r}")
