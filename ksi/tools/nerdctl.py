"""Adapter for nerdctl (rootless containerd), the runtime behind kind's nerdctl provider."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from ksi.errors import CommandFailed, KsiError
from ksi.tools import proc
from ksi.tools.runtime import CLUSTER_LABEL, Container


class Nerdctl:
    """Runs nerdctl; every call goes through :func:`ksi.tools.proc.run`."""

    name = "nerdctl"

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)

    def _run(self, *args: str, timeout: float, shielded: bool = False) -> str:
        return proc.run(["nerdctl", *args], env=self._env, timeout=timeout, shielded=shielded,
                        step="nerdctl").stdout

    def node_containers(self, cluster: str | None = None, *, timeout: float = 30.0) -> list[Container]:
        """Run ``nerdctl ps -a --filter label=io.x-k8s.kind.cluster[=NAME]`` and parse its JSON lines."""
        selector = f"{CLUSTER_LABEL}={cluster}" if cluster else CLUSTER_LABEL
        out = self._run("ps", "-a", "--no-trunc", "--filter", f"label={selector}", "--format", "{{json .}}",
                        timeout=timeout, shielded=True)
        containers = []
        for line in out.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as exc:
                raise KsiError(f"cannot parse `nerdctl ps` output line {line[:80]!r}", step="nerdctl") from exc
            labels = _labels(entry.get("Labels", ""))
            containers.append(Container(
                id=str(entry.get("ID", "")),
                name=str(entry.get("Names", "")),
                cluster=labels.get(CLUSTER_LABEL, ""),
                running=str(entry.get("Status", "")).startswith("Up"),
            ))
        return containers

    def remove(self, containers: list[Container], *, timeout: float = 30.0) -> None:
        """Run ``nerdctl rm -f -v`` on ``containers`` (shielded from stop signals: it is teardown)."""
        if containers:
            self._run("rm", "-f", "-v", *[c.id or c.name for c in containers], timeout=timeout, shielded=True)

    def image_digests(self, image: str, *, timeout: float = 30.0) -> list[str] | None:
        """Run ``nerdctl image inspect IMAGE``; return its repository digests, or None when it is not stored.

        A reference with ``@sha256:`` is looked up by that digest (nerdctl matches the image's target).
        """
        result = proc.run(["nerdctl", "image", "inspect", "--format", "{{json .}}", image], env=self._env,
                          timeout=timeout, check=False, step="images")
        if result.returncode != 0:
            if "no such image" in result.stderr:
                return None
            raise CommandFailed(result.argv, result.returncode, result.stdout, result.stderr, step="images")
        try:
            data = json.loads(result.stdout.splitlines()[0])
        except (ValueError, IndexError) as exc:
            raise KsiError(f"cannot parse `nerdctl image inspect` output for {image}", step="images") from exc
        return [str(d).rpartition("@")[2] for d in data.get("RepoDigests") or []]

    def pull(self, image: str, *, all_platforms: bool, timeout: float) -> None:
        """Run ``nerdctl pull [--all-platforms] IMAGE``."""
        proc.run(["nerdctl", "pull", *(["--all-platforms"] if all_platforms else []), image], env=self._env,
                 timeout=timeout, step="images")

    def save(self, images: list[str], output: Path, *, all_platforms: bool, timeout: float) -> None:
        """Run ``nerdctl save -o OUTPUT [--all-platforms] IMAGE...`` (nerdctl does not truncate OUTPUT)."""
        proc.run(["nerdctl", "save", *(["--all-platforms"] if all_platforms else []), "-o", str(output), *images],
                 env=self._env, timeout=timeout, step="images")

    def load(self, archive: Path, *, timeout: float) -> None:
        """Run ``nerdctl load -i ARCHIVE`` into the user's image store (this machine's platform)."""
        proc.run(["nerdctl", "load", "-i", str(archive)], env=self._env, timeout=timeout, step="images")

    def info(self, *, timeout: float = 30.0) -> dict[str, object]:
        """Run ``nerdctl info --format '{{json .}}'`` and return the parsed object."""
        out = self._run("info", "--format", "{{json .}}", timeout=timeout)
        try:
            data = json.loads(out)
        except ValueError as exc:
            raise KsiError("cannot parse `nerdctl info` output", step="nerdctl") from exc
        return data if isinstance(data, dict) else {}

    def version(self, *, timeout: float = 30.0) -> str:
        """Run ``nerdctl --version`` and return the version it prints (2.0.3)."""
        out = self._run("--version", timeout=timeout)
        match = re.search(r"(\d+\.\d+\.\d+\S*)", out)
        if match is None:
            raise KsiError(f"cannot read the version from {out.strip()[:80]!r}", step="nerdctl",
                           fix="install a released nerdctl")
        return match[1]


def _labels(value: object) -> dict[str, str]:
    """Return nerdctl's labels, printed as a dict or as ``k=v,k2=v2``, as a dict."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    labels = {}
    for item in str(value).split(","):
        key, sep, val = item.partition("=")
        if sep:
            labels[key.strip()] = val
    return labels
