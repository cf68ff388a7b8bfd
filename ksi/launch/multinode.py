"""``srun -N2.. ksi run``: one cluster per node, joined into one by Liqo peering to the leader's.

The nodes rendezvous through the shared directory; the leader (SLURM_PROCID 0) runs the workload once,
and every node tears down its own cluster.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ksi import log
from ksi import settings as settings_mod
from ksi.admin.cleanup import remove_stale
from ksi.cluster import access, names, rundir, workload
from ksi.cluster.teardown import Teardown
from ksi.errors import Interrupted, KsiError, UsageError
from ksi.host import signals
from ksi.host.signals import SignalGuard
from ksi.host.slurm import SlurmContext, expand_nodelist
from ksi.launch.preflight import Plan, kind_environment, run_checks
from ksi.launch.rendezvous import (
    DONE,
    LEADER,
    PEERED,
    Aborted,
    Heartbeat,
    Liveness,
    Rendezvous,
    hello,
    join,
    ready,
)
from ksi.launch.run import (
    NodeCluster,
    Phases,
    RunOptions,
    finish,
    job_end_lookup,
    reserve_port,
    signame,
    workload_environment,
)
from ksi.settings import Settings
from ksi.tools import proc
from ksi.tools.liqoctl import Endpoint, Liqoctl

_log = log.get(__name__)
_VNODE_POLL = 0.5
T = TypeVar("T")


def check_layout(slurm: SlurmContext, environ: Mapping[str, str]) -> None:
    """Refuse any layout but one task per node of a homogeneous step, saying which srun flags to use."""
    if environ.get("SLURM_HET_SIZE") or environ.get("SLURM_PACK_SIZE"):
        raise UsageError("ksi does not run in a heterogeneous step", step="checks",
                         fix=f"use one homogeneous step: srun -N{slurm.step_nodes} --ntasks-per-node=1 ksi run ...")
    if slurm.ntasks != slurm.step_nodes:
        raise UsageError(f"this step runs {slurm.ntasks} tasks on {slurm.step_nodes} nodes; ksi needs exactly one "
                         "task per node", step="checks",
                         fix=f"use srun -N{slurm.step_nodes} --ntasks-per-node=1 ksi run ...")


@dataclass(frozen=True)
class Member:
    """A node of the run as its ready file describes it."""

    rank: int
    node: str
    cluster: str
    kubeconfig: Path
    address: str


class _Run:
    """State of one rank's multi-node run."""

    def __init__(self, slurm: SlurmContext, node: str, settings: Settings, plan: Plan,
                 kind_env: Mapping[str, str], environ: Mapping[str, str]) -> None:
        assert slurm.job_id is not None and slurm.step_id is not None  # in_step checked by the caller
        self.slurm = slurm
        self.node = node
        self.settings = settings
        self.plan = plan
        self.kind_env = kind_env
        self.environ = environ
        self.rank = slurm.procid
        self.size = slurm.step_nodes
        self.nodes = expand_nodelist(slurm.step_nodelist or "")
        self.name = names.cluster_name(slurm.job_id)
        self.phases = Phases()
        self.teardown = Teardown()
        self.record: rundir.RunRecord | None = None
        self.rdv: Rendezvous | None = None
        self.started = time.time()
        self.liqoctl = Liqoctl(kind_env)
        self.cluster: NodeCluster | None = None

    def node_of(self, rank: int) -> str:
        """Return the node name of ``rank`` (Slurm places rank i on the i-th node of a one-task-per-node step)."""
        return self.nodes[rank] if rank < len(self.nodes) else f"rank {rank}"

    # --- joining --------------------------------------------------------------------------------------------

    def open_rendezvous(self) -> tuple[Rendezvous, int, int]:
        """Create (leader) or join (follower) the run directory; reserve K8S_PORT and the gateway port."""
        assert self.slurm.job_id is not None and self.slurm.step_id is not None
        path = Rendezvous.location(self.plan.shared_dir, self.slurm.job_id, self.slurm.step_id,
                                   self.slurm.restart_count)
        if self.rank == 0:
            rdv = self.rdv = Rendezvous.create(path, self.node)
            try:
                port = self.reserve(self.plan.port)
                gateway = self.reserve(None, udp=True)
            except BaseException:
                rdv.publish(LEADER, {"started": self.started})  # lets the followers join and see the abort
                raise
            rdv.publish(LEADER, {"started": self.started, "port": port, "gateway_port": gateway, "size": self.size})
        else:
            with self.phases.phase("rendezvous"):
                rdv = self.rdv = join(path, self.rank, self.node, self.started, self.settings.rendezvous_timeout,
                                      self.node_of(0))
                leader = rdv.wait("the leader's ports", lambda: d if (d := rdv.read(LEADER)) and "port" in d else None,
                                  self.settings.rendezvous_timeout,
                                  lambda: KsiError("the leader announced the run but no ports", step="rendezvous"))
            try:
                port = self.reserve(int(leader["port"]))
                gateway = self.reserve(int(leader["gateway_port"]), udp=True)
            except KsiError as exc:
                exc.message = f"{exc.message} (the run's port, published by the leader {self.node_of(0)})"
                raise
        return rdv, port, gateway

    def reserve(self, port: int | None, *, udp: bool = False) -> int:
        """Reserve ``port`` (a random free one when None) on this node until teardown."""
        return reserve_port(self.settings.state_dir, self.teardown, self.name, port, udp=udp)

    def members(self, files: Mapping[int, dict[str, Any]]) -> list[Member]:
        """Return the members described by the ready files ``files``."""
        return [Member(rank, str(d["node"]), str(d["cluster"]), Path(str(d["kubeconfig"])), str(d["address"]))
                for rank, d in sorted(files.items())]

    # --- leader ---------------------------------------------------------------------------------------------

    def gather(self, rdv: Rendezvous, what: str, filename: Any, timeout: float, *, watch: bool) -> dict[int, Any]:
        """Wait until every follower has written ``filename(rank)``; name the missing nodes on timeout."""
        followers = range(1, self.size)
        liveness = Liveness(rdv, followers)
        found: dict[int, Any] = {}

        def probe() -> dict[int, Any] | None:
            for rank in followers:
                if rank not in found and (data := rdv.read(filename(rank))) is not None:
                    found[rank] = data
            return found if len(found) == self.size - 1 else None

        def missing() -> str:
            return ", ".join(self.node_of(r) for r in followers if r not in found)

        def silent() -> None:
            if watch and (dead := liveness.silent(self.settings.leader_timeout)):
                raise KsiError(f"{', '.join(self.node_of(r) for r in dead)} stopped responding (no heartbeat "
                               f"for {self.settings.leader_timeout:g} s) while waiting for {what}", step=what)

        return rdv.wait(what, probe, timeout, lambda: KsiError(
            f"{missing()} did not {what} in {rdv.path} within {timeout:g} s",
            fix="the directory may not be shared across nodes (it must be on NFS, Lustre, GPFS...), or those "
                "nodes failed before joining: see their output; raise KSI_RENDEZVOUS_TIMEOUT for slow filesystems",
            step="rendezvous"), check=silent)

    def peer_all(self, me: Member, providers: list[Member], gateway: int) -> None:
        """Peer every provider cluster to this (the leader's) cluster, all at once, then wait for the nodes."""
        consumer = Endpoint(me.kubeconfig, me.cluster, me.cluster)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(len(providers), 1), thread_name_prefix="peer")
        try:
            futures = {pool.submit(self.liqoctl.peer, consumer, Endpoint(p.kubeconfig, p.cluster, p.cluster),
                                   gateway_address=p.address, gateway_port=gateway,
                                   timeout=self.settings.peer_timeout): p for p in providers}
            for future in _completed(futures):
                provider = futures[future]
                try:
                    future.result()
                except KsiError as exc:
                    exc.message = f"peering {provider.node} ({provider.cluster}) failed: {exc.message}"
                    exc.step = "peer"
                    raise
                _log.info("peer: %s (%s) peered", provider.node, provider.cluster)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        wanted = {p.cluster for p in providers}
        deadline = time.monotonic() + self.settings.peer_timeout
        while (ready_ids := access.ready_virtual_nodes(me.kubeconfig, me.cluster)) < wanted:
            if time.monotonic() > deadline:
                raise KsiError(f"virtual nodes of {', '.join(sorted(wanted - ready_ids))} not Ready within "
                               f"{self.settings.peer_timeout:g} s", step="peer",
                               fix="check `liqoctl info` in the leader's cluster; raise KSI_PEER_TIMEOUT")
            assert self.rdv is not None
            self.rdv.check_abort()
            signals.check()
            time.sleep(_VNODE_POLL)

    def lead(self, rdv: Rendezvous, me: Member, grant: access.Access, api: str, port: int, gateway: int) -> int:
        """Gather the followers, peer them, run the workload, announce its status; return it."""
        with self.phases.phase("rendezvous"):
            self.gather(rdv, "join", hello, self.settings.rendezvous_timeout, watch=False)
            readies = self.gather(rdv, "get their cluster ready", ready,
                                  self.settings.create_timeout + self.settings.install_timeout, watch=True)
        providers = self.members(readies)
        with self.phases.phase("peer", self.record, "peering"):
            self.peer_all(me, providers, gateway)
        _log.info("peer: %d cluster(s) peered to %s in %.2f s; the cluster spans %d nodes", len(providers),
                  me.cluster, self.phases.seconds["peer"], self.size)
        rdv.publish(PEERED)
        assert self.record is not None
        assert self.cluster is not None
        env = workload_environment(self.environ, self.cluster, api, port, grant)
        env.update({
            "KSI_RUN_DIR": str(rdv.path),
            "KSI_NODE_COUNT": str(self.size),
            "KSI_NODES": ",".join([me.node, *(p.node for p in providers)]),
            "KSI_PEERED_CLUSTERS": ",".join(p.cluster for p in providers),
        })
        watcher = _FollowerWatch(rdv, {p.rank: p.node for p in providers}, self.settings.leader_timeout, self.record)
        watcher.start()
        try:
            with self.phases.phase("workload", self.record):
                _log.info("workload: starting %s", self.plan.workload.path)
                status, stopped_by = workload.run(self.plan.workload, env, Path.cwd(),
                                                  rdv.path / rundir.WORKLOAD_LOG, self.settings.grace_period)
        finally:
            watcher.stop()
        _log.info("workload: exited with status %d after %.2f s", status, self.phases.seconds["workload"])
        if stopped_by is not None:
            self.record.stop_signal = signame(stopped_by)
        rdv.publish(DONE, {"status": status})
        return status

    # --- follower -------------------------------------------------------------------------------------------

    def follow(self, rdv: Rendezvous) -> int:
        """Wait for the leader's workload to end (or the leader to fall silent); return its status."""
        leader = self.node_of(0)
        liveness = Liveness(rdv, [0])

        def leader_alive() -> None:
            if liveness.silent(self.settings.leader_timeout):
                raise KsiError(f"the leader {leader} stopped updating its heartbeat for "
                               f"{self.settings.leader_timeout:g} s; tearing down", step="wait",
                               fix="see the leader's output; KSI_LEADER_TIMEOUT sets how long to wait")

        assert self.record is not None
        with self.phases.phase("workload", self.record, "serving"):
            _log.info("wait: cluster %s serves the leader %s; waiting for its workload", self.name, leader)
            done = rdv.wait("the workload", lambda: rdv.read(DONE), float("inf"),
                            lambda: KsiError("unreachable"), check=leader_alive)
        status = int(done["status"])
        _log.info("wait: the workload on %s exited with status %d", leader, status)
        return status


def _completed(futures: Mapping[concurrent.futures.Future[T], Any]) -> Iterator[concurrent.futures.Future[T]]:
    """Yield ``futures`` as they finish, checking for a stop signal every quarter second."""
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(pending, timeout=0.25, return_when=concurrent.futures.FIRST_COMPLETED)
        yield from done
        signals.check()


class _FollowerWatch:
    """While the workload runs, reports followers whose heartbeat stops (the workload keeps running)."""

    def __init__(self, rdv: Rendezvous, followers: dict[int, str], timeout: float, record: rundir.RunRecord) -> None:
        self._liveness = Liveness(rdv, followers)
        self._followers = followers
        self._timeout = timeout
        self._record = record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="follower-watch", daemon=True)
        self.lost: list[str] = []

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for rank in self._liveness.silent(self._timeout):
                node = self._followers[rank]
                if node not in self.lost:
                    self.lost.append(node)
                    _log.error("node %s stopped responding (no heartbeat for %g s); its virtual node will turn "
                               "NotReady; the workload keeps running", node, self._timeout)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and note lost nodes in the run record."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._record.lost_nodes = list(self.lost)


def run(  # noqa: PLR0915 - the run reads best as one sequence of phases
    opts: RunOptions, slurm: SlurmContext, node: str, guard: SignalGuard, environ: Mapping[str, str]
) -> int:
    """Run this rank's part of a multi-node run; return the workload's status (on every rank)."""
    started = time.monotonic()
    check_layout(slurm, environ)
    settings, problems = settings_mod.load(environ, opts.overrides)
    kind_env = kind_environment(settings, environ)
    plan = run_checks(opts.workload, opts.args, opts.shared_dir, opts.port, settings, problems, environ, kind_env,
                      multinode=True, runs_workload=slurm.procid == 0)
    state = _Run(slurm, node, settings, plan, kind_env, environ)
    state.phases.seconds["checks"] = round(time.monotonic() - started, 3)
    role = "leader" if state.rank == 0 else f"follower of {state.node_of(0)}"
    _log.info("checks: ok in %.2f s (rank %d of %d, %s, address %s)", state.phases.seconds["checks"], state.rank,
              state.size, role, plan.node_address)
    status: int | None = None
    error: BaseException | None = None
    try:
        if settings.clean_stale:
            remove_stale(settings, kind_env)
        rdv, port, gateway = state.open_rendezvous()
        beat = Heartbeat(rdv)
        beat.start()
        state.teardown.push("stop heartbeat", beat.stop)
        rdv.publish(hello(state.rank), {"address": plan.node_address})
        node_dir = rdv.path / "nodes" / node
        node_dir.mkdir(parents=True, mode=0o700)
        log.attach_file(node_dir / rundir.KSI_LOG)
        _log.info("run directory: %s", rdv.path)
        state.record = rundir.RunRecord(node_dir / rundir.RECORD, state.name, node, slurm.job_id, port=port)
        state.record.save(state="creating", phases=state.phases.seconds)
        cluster = NodeCluster(state.name, node, slurm.job_id, node_dir, settings, plan, kind_env, state.teardown)
        state.cluster = cluster
        importing = access.warm_import() if state.rank == 0 else None
        job_end = job_end_lookup(slurm, environ) if state.rank == 0 else None
        with state.phases.phase("create"):
            api = cluster.create(port, plan.node_address, () if state.rank == 0 else (gateway,))
        _log.info("create: cluster %s ready in %.2f s (K8S_PORT %d, API %s)", state.name,
                  state.phases.seconds["create"], port, api)
        # The leader's API access (a few API calls) goes on while Liqo installs.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="access") as pool:
            granting = None
            if importing is not None:
                loaded = importing

                ending = job_end

                def grant_access() -> access.Access:
                    loaded.join()
                    return cluster.grant_access(ending.result() if ending is not None else None)

                granting = pool.submit(grant_access)
            with state.phases.phase("liqo install", state.record, api=api):
                state.liqoctl.install_kind(Endpoint(cluster.kubeconfig, state.name, state.name), api,
                                           timeout=settings.install_timeout, chart=settings.liqo_chart)
            _log.info("liqo install: done in %.2f s", state.phases.seconds["liqo install"])
            grant = None
            if granting is not None:
                grant = next(iter(_completed({granting: None}))).result()
                _log.info("access: token valid until %s", grant.expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
        rdv.publish(ready(state.rank), {"cluster": state.name, "kubeconfig": str(cluster.kubeconfig),
                                        "address": plan.node_address, "api": api})
        me = Member(state.rank, node, state.name, cluster.kubeconfig, plan.node_address)
        status = state.lead(rdv, me, grant, api, port, gateway) if grant is not None else state.follow(rdv)
        return status
    except BaseException as exc:
        error = exc
        if isinstance(exc, Interrupted):
            exc.step = state.phases.current
            if state.record is not None:
                state.record.stop_signal = signame(exc.signum)
        if state.rdv is not None and not isinstance(exc, Aborted):
            reason = exc.one_line() if isinstance(exc, KsiError) else repr(exc)
            state.rdv.abort(state.phases.current, reason, getattr(exc, "exit_code", 1))
        raise
    finally:
        guard.disarm()
        proc.terminate_all()
        finish(state.teardown, state.phases, state.record, status, error)
