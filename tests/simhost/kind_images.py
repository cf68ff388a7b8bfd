"""Images in the simulated kind: the node image ``create cluster`` needs, and ``load image-archive``.

As kind's nerdctl provider does, ``create`` checks the node image with ``nerdctl inspect --type=image`` and
pulls it when missing, retrying four times with growing sleeps (1+2+3+4 s) before it fails.
``load image-archive`` imports each archive into the containerd of every node of the cluster with
``ctr images import --all-platforms``, so an archive lacking a platform its image index names fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tests.simhost import nerdctl_images, registry
from tests.simhost.common import Container, delay_or_fail, logrus

PULL_RETRIES = 4
MULTI_ARCHIVE_WARNING = ("WARNING: It is suggested that you save multiple images into a common archive and load "
                         "that instead of loading multiple archives for better performance")


class Failure(Exception):
    """What kind prints after ``ERROR: `` (the caller wraps it as kind's own error)."""


class Log(Protocol):
    """kind's logger (kind.Log)."""

    def info(self, line: str) -> None:
        """Print a line."""

    def start(self, status: str) -> None:
        """Start a status line."""

    def end(self, ok: bool) -> None:
        """End the status line."""


class Provider(Protocol):
    """The parts of kind's provider (kind.Provider) used here."""

    def call(self, argv: list[str], action: Callable[[], Any]) -> Any:
        """Run a runtime command; raise kind's ExecError."""

    def list_nodes(self, cluster: str) -> list[Container]:
        """Return the cluster's node containers."""


def _present(image: str) -> None:
    if not nerdctl_images.store().find(image):
        raise nerdctl_images.fatal(f"1 errors:\nno such object: {image}")


def _pull(image: str) -> None:
    nerdctl_images.pull(image, [registry.local_platform()], quiet=True)


def ensure_node_image(log: Log, provider: Provider, image: str, exec_error: type[Exception]) -> None:
    """Make sure the node image is in the user's store, pulling it if not; raise Failure as kind words it."""
    friendly = image.split("@sha256:", maxsplit=1)[0]
    log.start(f"Ensuring node image ({friendly}) 🖼")
    try:
        provider.call(["inspect", "--type=image", image], lambda: _present(image))
    except exec_error:
        error: Exception | None = None
        for attempt in range(PULL_RETRIES + 1):
            if attempt:
                time.sleep(attempt)
            try:
                provider.call(["pull", image], lambda: _pull(image))
                error = None
                break
            except exec_error as exc:
                error = exc
        if error is not None:
            log.end(False)
            raise Failure(f'failed to pull image "{image}": {error}') from None
    log.end(True)


def load_image_archive(log: Log, provider: Provider, cluster: str, archives: Sequence[str],
                       only: Sequence[str]) -> None:
    """Run ``kind load image-archive``: every archive into every (or every ``only``) node of ``cluster``."""
    if not archives:
        raise Failure("name of image archive is required")
    if len(archives) > 1:
        log.info(MULTI_ARCHIVE_WARNING)
    for archive in archives:
        try:
            os.stat(archive)
        except OSError as exc:
            raise Failure(f"stat {archive}: {(exc.strerror or str(exc)).lower()}") from None
    if delay_or_fail("kind-load"):
        raise Failure(f'failed to load image: command "nerdctl exec --privileged -i {cluster}-control-plane ctr '
                      '--namespace=k8s.io images import --all-platforms --digests --snapshotter=overlayfs -" failed '
                      "with error: exit status 1 (simulated by KSI_SIM_FAULTS)")
    for archive in archives:
        nodes = provider.list_nodes(cluster)
        if not nodes:
            raise Failure(f'no nodes found for cluster "{cluster}"')
        by_name = {node.name: node for node in nodes}
        for name in only:
            if name not in by_name:
                raise Failure(f"unknown node: {name}")
        for node in [by_name[name] for name in only] or nodes:
            argv = ["nerdctl", "exec", "--privileged", "-i", node.name, "ctr", "--namespace=k8s.io", "images",
                    "import", "--all-platforms", "--digests", "--snapshotter=overlayfs", "-"]
            try:
                with open(archive, "rb") as handle:
                    registry.import_archive(registry.ImageStore(node.dir), handle, all_platforms=True)
            except registry.ArchiveError as exc:
                output = f'ctr: {exc}\n{logrus("fatal", "exec failed with exit code 1")}'
                raise Failure(f'failed to load image: command "{" ".join(argv)}" failed with error: exit status 1'
                              f"\nCommand Output: {output}") from None
