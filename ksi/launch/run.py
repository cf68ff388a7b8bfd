"""``ksi run`` on one node: the policy that orders checks, creation, access, the workload and teardown."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksi import log
from ksi import settings as settings_mod
from ksi.admin.cleanup import remove_stale
from ksi.cluster import access, kindconfig, rundir, workload
from ksi.cluster.delete import delete_verified
from ksi.cluster.kubeconfig import add_cluster_context, server
from ksi.cluster.teardown import Teardown
from ksi.errors import Interrupted, KsiError, UsageError
from ksi.host.ports import PortReservations
from ksi.host.registry import Registry, new_record
from ksi.host.signals import SignalGuard
from ksi.host.slurm import SlurmContext
from ksi.host.state import create_secret_file, node_lock
from ksi.launch.preflight import Plan, kind_environment, run_checks
from ksi.settings import Settings
from ksi.tools.kind import Kind
from ksi.tools.runtime import ContainerRuntime, runtime_for
from ksi.tools.squeue import Squeue

_log = log.get(__name__)


@dataclass(frozen=True)
class RunOptions:
    """What the user asked for on the command line."""

    workload: str
    args: tuple[str, ...] = ()
    shared_dir: str = "."
    port: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)


class Phases:
    """Times the phases of a run and keeps the durations for run.json; knows the phase in progress."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = "checks"

    @contextlib.contextmanager
    def phase(self, name: str, record: rundir.RunRecord | None = None, state: str | None = None,
              **changes: Any) -> Iterator[None]:
        """Time the block as phase ``name``; with ``record``, first write ``state`` (default: the name) to run.json.

        The phase is current before run.json says so: a stop signal that arrives once run.json shows the
        state is always reported as stopping that phase.
        """
        self.current = name
        if record is not None:
            record.save(state=state or name, phases=self.seconds, **changes)
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 3)


def write_cluster_kubeconfig(path: Path, cluster: str) -> str:
    """Add a context named ``cluster`` to kind's kubeconfig at ``path`` (atomically, 0600); return the API URL."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    updated = add_cluster_context(data, cluster)
    fd, tmp = tempfile.mkstemp(prefix=".kubeconfig.", dir=path.parent)  # mkstemp creates 0600
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(updated, handle, default_flow_style=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return server(updated, cluster)


def delete_cluster(kind: Kind, runtime: ContainerRuntime, registry: Registry, name: str, run_dir: Path,
                   budget: float) -> None:
    """Delete ``name`` verified, then forget its record and remove the run's secrets."""
    delete_verified(kind, runtime, name, run_dir / rundir.KUBECONFIG, budget)
    registry.remove(name)
    rundir.remove_secrets(run_dir)


def reserve_port(state_dir: Path, teardown: Teardown, cluster: str, wanted: int | None, *, udp: bool = False) -> int:
    """Reserve ``wanted`` (a random free port when None) on this node for ``cluster``, released at teardown."""
    reservations = PortReservations(state_dir)
    port = reservations.reserve(wanted, cluster, udp=udp)
    teardown.push(f"release port {port}", reservations.release, port, cluster)
    return port


class NodeCluster:
    """The cluster of this node for one run; every step registers its undo on ``teardown`` before it acts."""

    def __init__(self, name: str, node: str, job_id: str | None, run_dir: Path, settings: Settings,
                 plan: Plan, kind_env: Mapping[str, str], teardown: Teardown) -> None:
        self.name = name
        self.node = node
        self.job_id = job_id
        self.run_dir = run_dir
        self.settings = settings
        self.kubeconfig = run_dir / rundir.KUBECONFIG
        self._plan = plan
        self._kind = Kind(kind_env, plan.kind_wrapper)
        self._runtime = runtime_for(settings.provider, kind_env)
        self._teardown = teardown
        self._registry = Registry(settings.state_dir)

    def reserve_port(self, wanted: int | None) -> int:
        """Reserve K8S_PORT on this node (released at teardown)."""
        return reserve_port(self.settings.state_dir, self._teardown, self.name, wanted)

    def create(self, port: int, api_address: str = "127.0.0.1", udp_ports: tuple[int, ...] = ()) -> str:
        """Create the kind cluster (serialised per user and node) and return its API server URL."""
        create_secret_file(self.kubeconfig)
        config = kindconfig.write(
            kindconfig.KindConfig(self.name, self._plan.shared_dir, port, self.settings.node_image,
                                  api_address, udp_ports),
            self.run_dir / rundir.KIND_CONFIG)
        self._registry.add(new_record(self.name, self.job_id, self.run_dir, self.kubeconfig, port, self.node))
        self._teardown.push("delete cluster", delete_cluster, self._kind, self._runtime, self._registry,
                            self.name, self.run_dir, self.settings.teardown_timeout)
        lock = self.settings.state_dir / "kind-create.lock"
        with node_lock(lock, self.settings.lock_timeout, "kind create"):
            self._kind.create(self.name, config, self.kubeconfig, wait=self.settings.kind_wait,
                              timeout=self.settings.create_timeout)
        return write_cluster_kubeconfig(self.kubeconfig, self.name)

    def grant_access(self, job_end: int | None) -> access.Access:
        """Create the admin ServiceAccount and return a token that outlives the job."""
        lifetime = access.token_lifetime(time.time(), job_end, self.settings.token_ttl)
        return access.grant_admin(self.kubeconfig, self.name, lifetime)


def job_end_lookup(slurm: SlurmContext, environ: Mapping[str, str]) -> concurrent.futures.Future[int | None]:
    """Find out in the background when the job's time limit hits (for the token's lifetime).

    SLURM_JOB_END_TIME exists from Slurm 23.02; before that, squeue knows.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-end")
    if slurm.end_time is not None or slurm.job_id is None:
        future = pool.submit(lambda: slurm.end_time)
    else:
        future = pool.submit(Squeue(environ).end_time, slurm.job_id)
    pool.shutdown(wait=False)
    return future


def workload_environment(environ: Mapping[str, str], cluster: NodeCluster, api: str, port: int,
                         grant: access.Access) -> dict[str, str]:
    """Return the workload's environment: the caller's plus the cluster's variables."""
    env = dict(environ)
    env.update({
        "K8S_CLUSTER_NAME": cluster.name,
        "K8S_CLUSTER_API": api,
        "K8S_CLUSTER_API_TOKEN": grant.token,
        "K8S_PORT": str(port),
        "KUBECONFIG": str(cluster.kubeconfig),
        "KSI_RUN_DIR": str(cluster.run_dir),
    })
    return env


def signame(signum: int) -> str:
    """Return the name of signal ``signum`` (SIGTERM)."""
    return signal.Signals(signum).name


def run(  # noqa: PLR0915 - the run reads best as one sequence of phases
    opts: RunOptions, slurm: SlurmContext, node: str, guard: SignalGuard, environ: Mapping[str, str]
) -> int:
    """Run the workload against a fresh cluster on this node and tear everything down; return the status."""
    phases = Phases()
    started = time.monotonic()
    if slurm.ntasks > 1:
        raise UsageError(f"this step runs {slurm.ntasks} tasks on one node; ksi needs exactly one task per node",
                         fix="use srun -N1 -n1 ksi run ... (or -N<nodes> --ntasks-per-node=1)", step="checks")
    settings, setting_problems = settings_mod.load(environ, opts.overrides)
    kind_env = kind_environment(settings, environ)
    plan = run_checks(opts.workload, opts.args, opts.shared_dir, opts.port, settings, setting_problems,
                      environ, kind_env)
    phases.seconds["checks"] = round(time.monotonic() - started, 3)
    _log.info("checks: ok in %.2f s (kind v%s, %s%s)", phases.seconds["checks"],
              ".".join(map(str, plan.kind_version)), settings.provider,
              ", under systemd-run --scope" if plan.kind_wrapper else "")

    teardown = Teardown()
    record: rundir.RunRecord | None = None
    status: int | None = None
    error: BaseException | None = None
    try:
        name, run_dir = rundir.create(plan.shared_dir, slurm.job_id)
        log.attach_file(run_dir / rundir.KSI_LOG)
        _log.info("run directory: %s", run_dir)
        record = rundir.RunRecord(run_dir / rundir.RECORD, name, node, slurm.job_id)
        record.save(state="creating", phases=phases.seconds)
        if settings.clean_stale:
            remove_stale(settings, kind_env)
        cluster = NodeCluster(name, node, slurm.job_id, run_dir, settings, plan, kind_env, teardown)
        port = cluster.reserve_port(plan.port)
        record.save(port=port)

        importing = access.warm_import()
        job_end = job_end_lookup(slurm, environ)
        with phases.phase("create"):
            api = cluster.create(port)
        _log.info("create: cluster %s ready in %.2f s (K8S_PORT %d, API %s)", name, phases.seconds["create"],
                  port, api)
        with phases.phase("access", record, api=api):
            importing.join()
            grant = cluster.grant_access(job_end.result())
        _log.info("access: token for %s/%s valid until %s (%.2f s)", access.NAMESPACE, access.SERVICE_ACCOUNT,
                  grant.expires.strftime("%Y-%m-%dT%H:%M:%SZ"), phases.seconds["access"])

        with phases.phase("workload", record):
            _log.info("workload: starting %s", plan.workload.path)
            status, stopped_by = workload.run(plan.workload, workload_environment(environ, cluster, api, port, grant),
                                              Path.cwd(), run_dir / rundir.WORKLOAD_LOG, settings.grace_period)
        _log.info("workload: exited with status %d after %.2f s", status, phases.seconds["workload"])
        if stopped_by is not None:
            record.stop_signal = signame(stopped_by)
        return status
    except BaseException as exc:
        error = exc
        if isinstance(exc, Interrupted):
            exc.step = phases.current
            if record is not None:
                record.stop_signal = signame(exc.signum)
        raise
    finally:
        guard.disarm()
        finish(teardown, phases, record, status, error)


def finish(teardown: Teardown, phases: Phases, record: rundir.RunRecord | None, status: int | None,
           error: BaseException | None) -> None:
    """Run the teardown, log its outcome, finalise run.json and close the log file.

    Raises KsiError when the teardown failed after an otherwise successful run: a cluster that may have
    outlived the run must not look like success.
    """
    with phases.phase("teardown", record):
        ok = teardown.run()
    if ok:
        _log.info("teardown: done in %.2f s", phases.seconds["teardown"])
    else:
        _log.error("teardown: incomplete after %.2f s: %s", phases.seconds["teardown"], "; ".join(teardown.failures))
    if record is not None:
        message = (error.one_line() if isinstance(error, KsiError) else repr(error) if error is not None
                   else None if ok else "teardown: " + "; ".join(teardown.failures))
        record.save(state="done" if ok and error is None else "failed", phases=phases.seconds,
                    exit_status=status, ended=time.time(), error=message)
    if error is not None:
        _log.debug("run ended with %r", error)
    log.detach_file()
    if not ok and error is None and status == 0:
        raise KsiError("teardown did not complete: " + "; ".join(teardown.failures), step="teardown",
                       fix="run `ksi cleanup` on this node")
