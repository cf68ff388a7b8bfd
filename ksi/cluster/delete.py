"""Deleting a kind cluster, verified and within a time budget; then forgetting it and removing its secrets."""

from __future__ import annotations

import time
from pathlib import Path

from ksi import log
from ksi.cluster import rundir
from ksi.errors import Interrupted, KsiError
from ksi.host import stopbudget
from ksi.host.registry import Registry
from ksi.tools.kind import Kind
from ksi.tools.runtime import ContainerRuntime

_log = log.get(__name__)
_LIST_TIMEOUT = 5.0


def delete_verified(kind: Kind, runtime: ContainerRuntime, name: str, kubeconfig: Path | None, budget: float) -> None:
    """Delete cluster ``name`` within ``budget`` seconds and make sure no node container of it is left.

    Runs ``kind delete cluster`` (whose exit status is not trusted: it fails on a broken kubeconfig after
    deleting the nodes, and succeeds for a cluster it does not know), then lists containers by kind's
    cluster label and force-removes whatever is left. Raises KsiError if containers survive all of that.
    """
    deadline = time.monotonic() + budget
    # What is kept for listing (and removing) leftovers; a short budget (a short KillWait) goes mostly to kind.
    reserve = min(2 * _LIST_TIMEOUT, budget / 4)

    def remaining() -> float:
        return max(deadline - time.monotonic(), 1.0)

    try:
        result = kind.delete(name, kubeconfig if kubeconfig and kubeconfig.exists() else None,
                             timeout=max(remaining() - reserve, 1.0))
        if result.returncode != 0:
            _log.warning("teardown: `kind delete cluster` exited %d; checking for leftovers", result.returncode)
    except Interrupted:
        raise
    except KsiError as exc:
        _log.warning("teardown: %s; removing the node containers directly", exc.message)
    leftovers = runtime.node_containers(name, timeout=min(_LIST_TIMEOUT, remaining()))
    if leftovers:
        _log.warning("teardown: %d container(s) of %s survived kind delete; removing them: %s",
                     len(leftovers), name, " ".join(c.name for c in leftovers))
        runtime.remove(leftovers, timeout=remaining())
        leftovers = runtime.node_containers(name, timeout=min(_LIST_TIMEOUT, remaining()))
    if leftovers:
        raise KsiError(
            f"cluster {name} still has containers after teardown: {' '.join(c.name for c in leftovers)}",
            fix=f"run `ksi cleanup --all` on this node, or `{runtime.name} rm -f` them", step="teardown")


def delete_cluster(kind: Kind, runtime: ContainerRuntime, registry: Registry, name: str, run_dir: Path,
                   budget: float, state_dir: Path) -> None:
    """Delete ``name`` verified, then forget its record and remove the run's secrets.

    The time the delete took goes into the node's record in ``state_dir``: it is what the next run's stop
    budget reserves for a teardown (ksi.host.stopbudget).
    """
    started = time.monotonic()
    delete_verified(kind, runtime, name, run_dir / rundir.KUBECONFIG, budget)
    stopbudget.record_delete(state_dir, time.monotonic() - started)
    registry.remove(name)
    rundir.remove_secrets(run_dir)
