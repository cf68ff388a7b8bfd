"""Loading a run's images from the cache while the run goes on.

The node image goes into this node's rootless store (``nerdctl load``) only when the checks found it
missing, starting right after the checks, while the run directory, the stale-cluster cleanup, the port
reservations and the rendezvous go on; ``kind create`` waits for it. Once the cluster exists, Liqo's
images and the workload's images go into it (``kind load image-archive``, one call per group, the
groups side by side); ``liqoctl install`` waits for Liqo's, the workload (and a follower's "ready") for
all of them. Each load runs in a thread; waiting for one looks for stop signals meanwhile
(:func:`ksi.host.poll.poll`), and a run that ends kills the loads still running with every other command.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ksi import log
from ksi.errors import KsiError
from ksi.host.poll import poll
from ksi.tools.kind import Kind
from ksi.tools.nerdctl import Nerdctl

if TYPE_CHECKING:
    from ksi.images.plan import Supply

_log = log.get(__name__)


class _Task:
    """One load running in a daemon thread; keeps its error for whoever waits."""

    def __init__(self, what: str, work: Callable[[], None]) -> None:
        self.what = what
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(work,), name=f"load {what}", daemon=True)
        self.thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
        finally:
            self.done.set()

    def wait(self) -> None:
        """Wait until the load finished, looking for stop signals meanwhile; raise its error, if any."""
        poll(f"loading {self.what}", lambda: True if self.done.is_set() else None, pause=self.done.wait)
        if isinstance(self.error, KsiError):
            raise self.error
        if self.error is not None:
            raise KsiError(f"loading {self.what} failed: {self.error!r}", step="images") from self.error


class NodeImages:
    """The loads of one node's run; a run without a cache (``supply`` None) has none."""

    def __init__(self, supply: Supply | None, kind_env: Mapping[str, str], timeout: float) -> None:
        self.supply = supply
        self._kind = Kind(kind_env)
        self._nerdctl = Nerdctl(kind_env)
        self._timeout = timeout
        self._node: _Task | None = None
        self._liqo: _Task | None = None
        self._workload: _Task | None = None
        if supply is not None and supply.load_node_image and supply.node is not None:
            self._node = _Task("the node image", self._load_node_image)

    @property
    def chart(self) -> str:
        """Return the path of Liqo's chart in the cache, or "" when there is no cache."""
        return self.supply.chart_path if self.supply is not None else ""

    def _load_node_image(self) -> None:
        assert self.supply is not None and self.supply.node is not None
        archive = self.supply.archives((self.supply.node,))[0]
        started = time.monotonic()
        try:
            self._nerdctl.load(archive, timeout=self._timeout)
        except KsiError as exc:
            raise KsiError(f"loading the kind node image from {archive} failed: {exc.message}", step="images",
                           fix=f"check the archive (`ksi images list --dir {archive.parent}`)") from None
        _log.info("images: kind node image %s loaded into this node's store in %.2f s",
                  self.supply.node.reference, time.monotonic() - started)

    def _load_into(self, cluster: str, archives: list[Path], what: str, count: int) -> None:
        started = time.monotonic()
        try:
            self._kind.load_image_archives(cluster, archives, timeout=self._timeout)
        except KsiError as exc:
            raise KsiError(f"loading {what} into cluster {cluster} failed: {exc.message}", step="images") from None
        _log.info("images: %s (%d) loaded into cluster %s in %.2f s", what, count, cluster, time.monotonic() - started)

    def node_image_ready(self) -> None:
        """Wait until the node image is in this node's store (at once when it was there, or without a cache)."""
        if self._node is not None:
            self._node.wait()

    def start_cluster(self, cluster: str, *, liqo: bool) -> None:
        """Start loading Liqo's images (when ``liqo``) and the workload's images into ``cluster``."""
        supply = self.supply
        if supply is None:
            return
        if liqo and supply.liqo:
            archives = supply.archives(supply.liqo)
            self._liqo = _Task("Liqo's images", lambda: self._load_into(cluster, archives, "Liqo images",
                                                                        len(supply.liqo)))
        if supply.workload:
            archives = supply.archives(supply.workload)
            self._workload = _Task("the workload's images", lambda: self._load_into(
                cluster, archives, "workload images", len(supply.workload)))

    def liqo_ready(self) -> None:
        """Wait until Liqo's images are in the cluster."""
        if self._liqo is not None:
            self._liqo.wait()

    def ready(self) -> None:
        """Wait until every image of the run is in the cluster."""
        self.liqo_ready()
        if self._workload is not None:
            self._workload.wait()
