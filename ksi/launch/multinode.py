"""``srun -N2.. ksi run``: one cluster per node, joined into one by Liqo peering to the leader's.

Every node does the same bring-up (rendezvous, ports, its cluster, Liqo); then the rank decides the role:
the leader (SLURM_PROCID 0) gathers the others, peers their clusters to its own, runs the workload once
and publishes its status; every follower serves its cluster until that status appears. Every node tears
down its own cluster.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksi import log
from ksi import settings as settings_mod
from ksi.admin.cleanup import remove_stale
from ksi.cluster import access, names, rundir, workload
from ksi.cluster.node import NodeCluster, reserve_port
from ksi.cluster.peering import Member, offload, peer_all
from ksi.cluster.stopping import Stopping
from ksi.errors import KsiError, UsageError
from ksi.host.poll import completed, poll
from ksi.host.signals import SignalGuard
from ksi.host.slurm import SlurmContext, expand_nodelist
from ksi.images.load import NodeImages
from ksi.launch import warm
from ksi.launch.lifecycle import Lifecycle, Phases, RunOptions, job_end_lookup, workload_environment
from ksi.launch.preflight import Plan, kind_environment, run_checks
from ksi.launch.rendezvous import (
    DONE,
    LEADER,
    PEERED,
    Aborted,
    FollowerWatch,
    Heartbeat,
    Liveness,
    Rendezvous,
    hello,
    join,
    make_directory,
    ready,
    torn_down,
)
from ksi.settings import Settings
from ksi.tools.liqoctl import Liqoctl

_log = log.get(__name__)


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
class NodeRun:
    """What one rank knows once its checks passed: who it is, who the others are, what it was asked for."""

    slurm: SlurmContext
    node: str
    settings: Settings
    plan: Plan
    kind_env: Mapping[str, str]
    environ: Mapping[str, str]
    cluster_name: str
    nodes: tuple[str, ...]
    started: float = field(default_factory=time.time)

    @property
    def rank(self) -> int:
        """The rank of this node (SLURM_PROCID)."""
        return self.slurm.procid

    @property
    def size(self) -> int:
        """How many nodes take part."""
        return self.slurm.step_nodes

    @property
    def leads(self) -> bool:
        """True on the leader, rank 0."""
        return self.rank == 0

    def node_of(self, rank: int) -> str:
        """Return the node name of ``rank`` (Slurm places rank i on the i-th node of a one-task-per-node step)."""
        return self.nodes[rank] if rank < len(self.nodes) else f"rank {rank}"


@dataclass(frozen=True)
class Up:
    """What the bring-up leaves on every node: the rendezvous, this node's cluster, its ports."""

    rdv: Rendezvous
    cluster: NodeCluster
    me: Member
    api: str
    port: int
    gateway: int
    grant: access.Access | None  # the leader's token, issued while Liqo installed


def run(opts: RunOptions, slurm: SlurmContext, node: str, guard: SignalGuard, environ: Mapping[str, str]) -> int:
    """Run this rank's part of a multi-node run; return the workload's status (on every rank)."""
    phases = Phases()
    with phases.phase("checks"):
        check_layout(slurm, environ)
        settings, problems = settings_mod.load(environ, opts.overrides)
        kind_env = kind_environment(settings, environ)
        stopping = Stopping.learn(slurm, settings, environ, guard)  # in the background
        plan = run_checks(opts.workload, opts.args, opts.shared_dir, opts.port, settings, problems, environ,
                          kind_env, multinode=True, runs_workload=slurm.procid == 0, meanwhile=warm.libraries)
        assert slurm.job_id is not None and slurm.step_id is not None  # in_step checked by the caller
        me = NodeRun(slurm, node, settings, plan, kind_env, environ, names.cluster_name(slurm.job_id),
                     tuple(expand_nodelist(slurm.step_nodelist or "")))
    role = "leader" if me.leads else f"follower of {me.node_of(0)}"
    _log.info("checks: ok in %.2f s (rank %d of %d, %s, address %s)", phases.seconds["checks"], me.rank, me.size,
              role, plan.node_address)
    joined: list[Rendezvous] = []
    try:
        with Lifecycle(guard, phases, stopping) as life:
            images = NodeImages(plan.images, kind_env, settings.create_timeout)  # loads the node image now if needed
            if settings.clean_stale:
                remove_stale(settings, kind_env)
            up = bring_up(me, life, images, joined)
            life.status = lead(me, life, up) if me.leads else follow(me, life, up)
    except BaseException:
        if joined:
            await_teardowns(me, joined[0], guard)
        raise
    if life.status and joined:
        await_teardowns(me, joined[0], guard)
    return life.status


def await_teardowns(me: NodeRun, rdv: Rendezvous, guard: SignalGuard) -> None:
    """Before exiting non-zero, wait until every other node has said its teardown is over.

    Under ``srun -K1`` the first task to exit non-zero makes Slurm stop all the others (TERM, KillWait,
    KILL): a node that finished first would cut the others' teardown short and turn their exit status into
    the signal's. A node that stays silent for KSI_LEADER_TIMEOUT is dead and not waited for; a stop signal
    (scancel, the time limit) ends the wait at once, since every node is being stopped anyway.
    """
    guard.settle()  # the node that exits last must not be turned into a signal's status by the others' exit
    others = [rank for rank in range(me.size) if rank != me.rank]
    liveness = Liveness(rdv, others)
    pending = set(others)
    dead: list[int] = []

    def settled() -> bool | None:
        down = rdv.read_many([torn_down(r) for r in pending])  # one listing per round
        pending.difference_update([r for r in pending if torn_down(r) in down])
        dead[:] = [r for r in liveness.silent(me.settings.leader_timeout) if r in pending]
        return True if guard.first is not None or pending <= set(dead) else None

    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        poll("the other nodes' teardown", settled, interval=0.1, expired=TimeoutError,
             timeout=me.settings.leader_timeout + 2 * me.settings.teardown_timeout)
    if dead or pending:
        silent = ", ".join(me.node_of(r) for r in sorted(pending))
        _log.warning("wait: %s did not report the end of its teardown (silent or stopped); exiting", silent)
    else:
        _log.info("wait: every node's teardown is over after %.2f s more; exiting with status %s",
                  time.monotonic() - started, "the workload's" if me.leads else "the leader's")


# --- every node ---------------------------------------------------------------------------------------------

def bring_up(me: NodeRun, life: Lifecycle, images: NodeImages, joined: list[Rendezvous]) -> Up:
    """Join the run, create this node's cluster, load its images, install Liqo, and tell the others it is ready.

    The rendezvous goes into ``joined`` as soon as there is one.
    """
    rdv, port, gateway = open_as_leader(me, life, joined) if me.leads else join_as_follower(me, life, joined)
    beat = Heartbeat(rdv)
    beat.start()
    life.teardown.push("stop heartbeat", beat.stop)
    rdv.publish(hello(me.rank), {"address": me.plan.node_address})
    node_dir = rdv.node_directory(me.node)
    log.attach_file(node_dir / rundir.KSI_LOG)
    _log.info("run directory: %s", rdv.path)
    record = life.record = rundir.RunRecord(node_dir / rundir.RECORD, me.cluster_name, me.node, me.slurm.job_id,
                                            port=port)
    record.save(state="creating", phases=life.phases.seconds)
    cluster = NodeCluster(me.cluster_name, me.node, me.slurm.job_id, node_dir, me.settings, me.plan.shared_dir,
                          me.plan.kind_wrapper, me.kind_env, life.teardown)
    client = warm.Client()  # imported only where the token is issued, the leader
    issue_token = _prepare_access(me, client) if me.leads else None
    with life.phases.phase("create"):
        images.node_image_ready()
        api = cluster.create(port, me.plan.node_address, () if me.leads else (gateway,),
                             started=client.start if me.leads else None)
    _log.info("create: cluster %s ready in %.2f s (K8S_PORT %d, API %s)", me.cluster_name,
              life.phases.seconds["create"], port, api)
    images.start_cluster(me.cluster_name, liqo=True)
    member = Member(me.rank, me.node, me.cluster_name, cluster.kubeconfig, me.plan.node_address)
    # The leader's API access (three requests) goes on while Liqo installs.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="access") as pool:
        granting = None
        if issue_token is not None:
            cluster.api()  # opened here, so that its close joins the teardown from this thread
            granting = pool.submit(issue_token, cluster)
        with life.phases.phase("liqo install", record, api=api):
            images.liqo_ready()
            Liqoctl(me.kind_env).install_kind(member.endpoint, api, timeout=me.settings.install_timeout,
                                              chart=images.chart or me.settings.liqo_chart)
        _log.info("liqo install: done in %.2f s", life.phases.seconds["liqo install"])
        grant = next(completed([granting])).result() if granting is not None else None
        if grant is not None:
            _log.info("access: token valid until %s", grant.expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
    images.ready()
    rdv.publish(ready(me.rank), {"cluster": me.cluster_name, "kubeconfig": str(cluster.kubeconfig),
                                 "address": me.plan.node_address, "api": api})
    return Up(rdv, cluster, member, api, port, gateway, grant)


def joined_run(rdv: Rendezvous, life: Lifecycle, joined: list[Rendezvous]) -> None:
    """Note the rendezvous; the last step of this node's teardown will be to say so in down.<rank>.json."""
    joined.append(rdv)
    life.teardown.push("tell the other nodes this teardown is over", lambda: rdv.publish(torn_down(rdv.rank)))


def open_as_leader(me: NodeRun, life: Lifecycle, joined: list[Rendezvous]) -> tuple[Rendezvous, int, int]:
    """Create the run directory, reserve K8S_PORT and the gateway port, and announce both in leader.json."""
    rdv = Rendezvous.create(_location(me), me.node)
    joined_run(rdv, life, joined)
    life.on_failure = lambda error: _abort(rdv, life.phases, error)
    try:
        port = reserve_port(me.settings.state_dir, life.teardown, me.cluster_name, me.plan.port)
        gateway = reserve_port(me.settings.state_dir, life.teardown, me.cluster_name, None, udp=True)
    except BaseException:
        rdv.publish(LEADER, {"started": me.started})  # lets the followers join and see the abort
        raise
    rdv.publish(LEADER, {"started": me.started, "port": port, "gateway_port": gateway, "size": me.size})
    return rdv, port, gateway


def join_as_follower(me: NodeRun, life: Lifecycle, joined: list[Rendezvous]) -> tuple[Rendezvous, int, int]:
    """Join the run the leader announces and reserve the same K8S_PORT and gateway port on this node."""
    with life.phases.phase("rendezvous"):
        make_directory(_location(me))  # before any lookup in it: see the rendezvous module
        rdv = join(_location(me), me.rank, me.node, me.started, me.settings.rendezvous_timeout, me.node_of(0))
        joined_run(rdv, life, joined)
        life.on_failure = lambda error: _abort(rdv, life.phases, error)
        leader = rdv.wait("the leader's ports", lambda: d if (d := rdv.read(LEADER)) and "port" in d else None,
                          me.settings.rendezvous_timeout,
                          lambda: KsiError("the leader announced the run but no ports", step="rendezvous"))
    try:
        port = reserve_port(me.settings.state_dir, life.teardown, me.cluster_name, int(leader["port"]))
        gateway = reserve_port(me.settings.state_dir, life.teardown, me.cluster_name, int(leader["gateway_port"]),
                               udp=True)
    except KsiError as exc:
        exc.message = f"{exc.message} (the run's port, published by the leader {me.node_of(0)})"
        raise
    return rdv, port, gateway


# --- the leader -----------------------------------------------------------------------------------------------

def lead(me: NodeRun, life: Lifecycle, up: Up) -> int:
    """Gather the followers, peer their clusters to this one, run the workload, announce its status; return it."""
    rdv, settings = up.rdv, me.settings
    assert up.grant is not None and life.record is not None
    guardian = life.guardian()
    guardian.spawn()  # its interpreter starts while the leader waits for the others
    with life.phases.phase("rendezvous"):
        gather(me, rdv, "join", hello, settings.rendezvous_timeout, watch=False)
        readies = gather(me, rdv, "get their cluster ready", ready, settings.create_timeout + settings.install_timeout,
                         watch=True)
    providers = [Member(rank, str(d["node"]), str(d["cluster"]), Path(str(d["kubeconfig"])), str(d["address"]))
                 for rank, d in sorted(readies.items())]
    with life.phases.phase("peer", life.record, "peering"):
        peer_all(Liqoctl(me.kind_env), up.me, up.cluster.api(), providers, up.gateway, settings.peer_timeout,
                 rdv.check_abort)
    _log.info("peer: %d cluster(s) peered to %s in %.2f s; the cluster spans %d nodes", len(providers),
              me.cluster_name, life.phases.seconds["peer"], me.size)
    with life.phases.phase("offload", life.record, "peering"):
        offload(Liqoctl(me.kind_env), up.me, up.cluster.api(), settings.offload_namespaces, settings.peer_timeout)
    _log.info("offload: namespace %s offloaded to the %d peered cluster(s) in %.2f s; their pods may run on any "
              "node", ", ".join(settings.offload_namespaces), len(providers), life.phases.seconds["offload"])
    rdv.publish(PEERED)
    env = workload_environment(me.environ, up.cluster, up.api, up.port, up.grant)
    env.update({
        "KSI_RUN_DIR": str(rdv.path),
        "KSI_NODE_COUNT": str(me.size),
        "KSI_NODES": ",".join([me.node, *(p.node for p in providers)]),
        "KSI_PEERED_CLUSTERS": ",".join(p.cluster for p in providers),
    })
    watcher = FollowerWatch(rdv, {p.rank: p.node for p in providers}, settings.leader_timeout)
    watcher.start()
    try:
        with life.phases.phase("workload", life.record):
            _log.info("workload: starting %s", me.plan.workload.path)
            status, stopped_by = workload.run(me.plan.workload, env, Path.cwd(), rdv.path / rundir.WORKLOAD_LOG,
                                              life.stopping.grace, guardian)
    finally:
        life.record.lost_nodes = watcher.stop()
    life.workload_ended(status, stopped_by)
    rdv.publish(DONE, {"status": status})
    return status


def gather(me: NodeRun, rdv: Rendezvous, what: str, filename: Callable[[int], str], timeout: float, *,
           watch: bool) -> dict[int, dict[str, Any]]:
    """Wait until every follower has written ``filename(rank)``; name the missing nodes on timeout.

    With ``watch``, a follower whose heartbeat stops for KSI_LEADER_TIMEOUT ends the wait at once.
    """
    followers = range(1, me.size)
    liveness = Liveness(rdv, followers)
    found: dict[int, dict[str, Any]] = {}

    def probe() -> dict[int, dict[str, Any]] | None:
        wanted = {filename(rank): rank for rank in followers if rank not in found}
        for name, data in rdv.read_many(wanted).items():  # one listing of the directory per round
            found[wanted[name]] = data
        return found if len(found) == me.size - 1 else None

    def missing() -> str:
        return ", ".join(me.node_of(r) for r in followers if r not in found)

    def silent() -> None:
        if watch and (dead := liveness.silent(me.settings.leader_timeout)):
            raise KsiError(f"{', '.join(me.node_of(r) for r in dead)} stopped responding (no heartbeat "
                           f"for {me.settings.leader_timeout:g} s) while waiting for {what}", step=what)

    return rdv.wait(what, probe, timeout, lambda: KsiError(
        f"{missing()} did not {what} in {rdv.path} within {timeout:g} s",
        fix="the directory may not be shared across nodes (it must be on NFS, Lustre, GPFS...), or those "
            "nodes failed before joining: see their output; raise KSI_RENDEZVOUS_TIMEOUT for slow filesystems",
        step="rendezvous"), check=silent)


# --- a follower ------------------------------------------------------------------------------------------------

def follow(me: NodeRun, life: Lifecycle, up: Up) -> int:
    """Serve this node's cluster until the leader's workload ends (or the leader falls silent); return its status."""
    leader = me.node_of(0)
    liveness = Liveness(up.rdv, [0])

    def leader_alive() -> None:
        if liveness.silent(me.settings.leader_timeout):
            raise KsiError(f"the leader {leader} stopped updating its heartbeat for "
                           f"{me.settings.leader_timeout:g} s; tearing down", step="wait",
                           fix="see the leader's output; KSI_LEADER_TIMEOUT sets how long to wait")

    with life.phases.phase("workload", life.record, "serving"):
        _log.info("wait: cluster %s serves the leader %s; waiting for its workload", me.cluster_name, leader)
        done = up.rdv.wait("the workload", lambda: up.rdv.read(DONE), float("inf"),
                           lambda: KsiError("unreachable"), check=leader_alive)
    status = int(done["status"])
    _log.info("wait: the workload on %s exited with status %d", leader, status)
    return status


# --- helpers -----------------------------------------------------------------------------------------------------

def _location(me: NodeRun) -> Path:
    assert me.slurm.job_id is not None and me.slurm.step_id is not None
    return Rendezvous.location(me.plan.shared_dir, me.slurm.job_id, me.slurm.step_id, me.slurm.restart_count)


def _prepare_access(me: NodeRun, client: warm.Client) -> Callable[[NodeCluster], access.Access]:
    """Start looking up the job's end; return what issues the token (once ``client`` is imported)."""
    job_end = job_end_lookup(me.slurm, me.environ)

    def issue(cluster: NodeCluster) -> access.Access:
        client.join()
        return cluster.grant_access(job_end)

    return issue


def _abort(rdv: Rendezvous, phases: Phases, error: BaseException) -> None:
    """Write the abort file for ``error`` (unless it is another node's abort) so every node stops waiting."""
    if not isinstance(error, Aborted):
        reason = error.one_line() if isinstance(error, KsiError) else repr(error)
        rdv.abort(phases.current, reason, getattr(error, "exit_code", 1))
