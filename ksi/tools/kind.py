"""Adapter for the kind CLI: verbs only, no policy (that lives in ksi.cluster)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ksi.errors import ToolMissingError
from ksi.tools import proc

MIN_VERSION = (0, 23, 0)  # the first kind with the nerdctl provider


def parse_version(text: str) -> tuple[int, int, int] | None:
    """Return (major, minor, patch) from ``kind version`` output such as ``kind v0.27.0 go1.23.4 linux/amd64``."""
    match = re.search(r"\bv(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


class Kind:
    """Runs kind with the provider set explicitly, optionally inside a wrapper such as systemd-run."""

    def __init__(self, env: Mapping[str, str], wrapper: Sequence[str] = ()) -> None:
        self._env = dict(env)
        self._wrapper = list(wrapper)

    def version(self, *, timeout: float = 30.0) -> tuple[int, int, int]:
        """Run ``kind version``; raise ToolMissingError if kind is missing, unparsable or too old."""
        out = proc.run(["kind", "version"], env=self._env, timeout=timeout, step="checks").stdout
        version = parse_version(out)
        wanted = ".".join(map(str, MIN_VERSION))
        if version is None:
            raise ToolMissingError(f"cannot read the kind version from {out.strip()!r}",
                                   fix=f"install kind >= v{wanted}", step="checks")
        if version < MIN_VERSION:
            raise ToolMissingError(
                f"kind v{'.'.join(map(str, version))} is too old (no nerdctl provider before v{wanted})",
                fix=f"install kind >= v{wanted}", step="checks")
        return version

    def create(self, name: str, config: Path, kubeconfig: Path, *, wait: float, timeout: float,
               started: Callable[[], object] | None = None) -> None:
        """Run ``kind create cluster`` writing credentials only into ``kubeconfig``; ``started`` once it runs."""
        argv = [*self._wrapper, "kind", "create", "cluster", "--name", name, "--config", str(config),
                "--kubeconfig", str(kubeconfig), "--wait", f"{int(wait)}s"]
        proc.run(argv, env=self._env, timeout=timeout, step="create", started=started)

    def delete(self, name: str, kubeconfig: Path | None, *, timeout: float) -> proc.Result:
        """Run ``kind delete cluster`` shielded from stop signals; the caller verifies the outcome."""
        argv = ["kind", "delete", "cluster", "--name", name]
        if kubeconfig is not None:
            argv += ["--kubeconfig", str(kubeconfig)]
        return proc.run(argv, env=self._env, timeout=timeout, check=False, shielded=True, step="teardown")

    def load_image_archives(self, name: str, archives: list[Path], *, timeout: float) -> None:
        """Run ``kind load image-archive --name NAME ARCHIVE...`` into every node of cluster ``name``."""
        proc.run(["kind", "load", "image-archive", "--name", name, *map(str, archives)], env=self._env,
                 timeout=timeout, step="images")

    def clusters(self, *, timeout: float = 30.0) -> list[str]:
        """Run ``kind get clusters`` and return the names."""
        out = proc.run(["kind", "get", "clusters"], env=self._env, timeout=timeout, step="list").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
