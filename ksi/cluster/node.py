"""The cluster of this node for one run: ports, the kind config, creation under the node lock, API access.

Every step that creates something registers its undo on the run's :class:`~ksi.cluster.teardown.Teardown`
before it acts, so whatever stops the run, nothing it made outlives it.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ksi.cluster import access, kindconfig, rundir
from ksi.cluster.api import ClusterApi
from ksi.cluster.delete import delete_cluster
from ksi.cluster.kubeconfig import write_cluster_kubeconfig
from ksi.cluster.teardown import Teardown
from ksi.host.ports import PortReservations
from ksi.host.registry import Registry, new_record
from ksi.host.state import create_secret_file, node_lock
from ksi.settings import Settings
from ksi.tools.kind import Kind
from ksi.tools.runtime import runtime_for

CREATE_LOCK = "kind-create.lock"


def reserve_port(state_dir: Path, teardown: Teardown, cluster: str, wanted: int | None, *, udp: bool = False) -> int:
    """Reserve ``wanted`` (a random free port when None) on this node for ``cluster``, released at teardown.

    The release is registered first: a stop signal between the reservation and its registration would
    otherwise leave the reservation behind.
    """
    reservations = PortReservations(state_dir)
    teardown.push(f"release the ports of {cluster}", reservations.release_cluster, cluster)
    return reservations.reserve(wanted, cluster, udp=udp)


class NodeCluster:
    """The cluster of this node for one run; every step registers its undo on ``teardown`` before it acts."""

    def __init__(self, name: str, node: str, job_id: str | None, run_dir: Path, settings: Settings,
                 shared_dir: Path, kind_wrapper: Sequence[str], kind_env: Mapping[str, str],
                 teardown: Teardown) -> None:
        self.name = name
        self.node = node
        self.job_id = job_id
        self.run_dir = run_dir
        self.settings = settings
        self.kubeconfig = run_dir / rundir.KUBECONFIG
        self._shared_dir = shared_dir
        self._kind = Kind(kind_env, kind_wrapper)
        self._runtime = runtime_for(settings.provider, kind_env)
        self._teardown = teardown
        self._registry = Registry(settings.state_dir)
        self._api: ClusterApi | None = None

    def reserve_port(self, wanted: int | None, *, udp: bool = False) -> int:
        """Reserve a port on this node for this cluster (released at teardown)."""
        return reserve_port(self.settings.state_dir, self._teardown, self.name, wanted, udp=udp)

    def create(self, port: int, api_address: str = "127.0.0.1", udp_ports: tuple[int, ...] = (), *,
               started: Callable[[], object] | None = None) -> str:
        """Create the kind cluster (serialised per user and node) and return its API server URL.

        ``started`` is called once ``kind create`` runs: what it starts overlaps with the creation.
        """
        create_secret_file(self.kubeconfig)
        config = kindconfig.write(
            kindconfig.KindConfig(self.name, self._shared_dir, port, self.settings.node_image, api_address,
                                  udp_ports),
            self.run_dir / rundir.KIND_CONFIG)
        self._teardown.push("delete cluster", self._delete)  # before the record: a stop may come between them
        self._registry.add(new_record(self.name, self.job_id, self.run_dir, self.kubeconfig, port, self.node))
        with node_lock(self.settings.state_dir / CREATE_LOCK, self.settings.lock_timeout, "kind create"):
            self._kind.create(self.name, config, self.kubeconfig, wait=self.settings.kind_wait,
                              timeout=self.settings.create_timeout, started=started)
        return write_cluster_kubeconfig(self.kubeconfig, self.name)

    def _delete(self) -> None:
        """Delete the cluster within KSI_TEARDOWN_TIMEOUT, or what a stop signal's budget leaves of it."""
        delete_cluster(self._kind, self._runtime, self._registry, self.name, self.run_dir,
                       self._teardown.time_left(self.settings.teardown_timeout), self.settings.state_dir)

    def api(self) -> ClusterApi:
        """Return the run's one client of this cluster's API (closed at teardown, before the cluster goes)."""
        if self._api is None:
            self._api = ClusterApi(self.kubeconfig, self.name, self.run_dir / rundir.API_CLIENT_FILES)
            self._teardown.push("close the API connection", self._api.close)
        return self._api

    def grant_access(self, job_end: concurrent.futures.Future[int | None]) -> access.Access:
        """Create the admin ServiceAccount and return a token that outlives the job (``job_end``: its end)."""
        return access.grant_admin(self.api(), lambda: access.token_lifetime(time.time(), job_end.result(),
                                                                            self.settings.token_ttl))
