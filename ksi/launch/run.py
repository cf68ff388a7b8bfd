"""``ksi run`` on one node: the policy that orders checks, creation, access, the workload and teardown."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ksi import log
from ksi import settings as settings_mod
from ksi.admin.cleanup import remove_stale
from ksi.cluster import access, rundir, workload
from ksi.cluster.node import NodeCluster
from ksi.cluster.stopping import Stopping
from ksi.errors import UsageError
from ksi.host.signals import SignalGuard
from ksi.host.slurm import SlurmContext
from ksi.images.load import NodeImages
from ksi.launch import warm
from ksi.launch.lifecycle import Lifecycle, Phases, RunOptions, job_end_lookup, workload_environment
from ksi.launch.preflight import kind_environment, run_checks

_log = log.get(__name__)


def run(opts: RunOptions, slurm: SlurmContext, node: str, guard: SignalGuard, environ: Mapping[str, str]) -> int:
    """Run the workload against a fresh cluster on this node and tear everything down; return the status."""
    phases = Phases()
    with phases.phase("checks"):
        if slurm.ntasks > 1:
            raise UsageError(f"this step runs {slurm.ntasks} tasks on one node; ksi needs exactly one task per "
                             "node", fix="use srun -N1 -n1 ksi run ... (or -N<nodes> --ntasks-per-node=1)",
                             step="checks")
        settings, setting_problems = settings_mod.load(environ, opts.overrides)
        kind_env = kind_environment(settings, environ)
        stopping = Stopping.learn(slurm, settings, environ, guard)  # in the background
        plan = run_checks(opts.workload, opts.args, opts.shared_dir, opts.port, settings, setting_problems,
                          environ, kind_env, meanwhile=warm.libraries)
    _log.info("checks: ok in %.2f s (kind v%s, %s%s)", phases.seconds["checks"],
              ".".join(map(str, plan.kind_version)), settings.provider,
              ", under systemd-run --scope" if plan.kind_wrapper else "")

    with Lifecycle(guard, phases, stopping) as life:
        images = NodeImages(plan.images, kind_env, settings.create_timeout)  # loads the node image now if needed
        name, run_dir = rundir.create(plan.shared_dir, slurm.job_id)
        log.attach_file(run_dir / rundir.KSI_LOG)
        _log.info("run directory: %s", run_dir)
        record = life.record = rundir.RunRecord(run_dir / rundir.RECORD, name, node, slurm.job_id)
        record.save(state="creating", phases=phases.seconds)
        if settings.clean_stale:
            remove_stale(settings, kind_env)
        cluster = NodeCluster(name, node, slurm.job_id, run_dir, settings, plan.shared_dir, plan.kind_wrapper,
                              kind_env, life.teardown)
        port = cluster.reserve_port(plan.port)
        record.save(port=port)

        job_end = job_end_lookup(slurm, environ)
        client, guardian = warm.Client(), life.guardian()

        def while_creating() -> None:  # kind create runs: the client's import and the guardian's start overlap it
            client.start()
            guardian.spawn()

        with phases.phase("create"):
            images.node_image_ready()
            api = cluster.create(port, started=while_creating)
        _log.info("create: cluster %s ready in %.2f s (K8S_PORT %d, API %s)", name, phases.seconds["create"],
                  port, api)
        images.start_cluster(name, liqo=False)
        with phases.phase("access", record, api=api):
            client.join()
            grant = cluster.grant_access(job_end)
        _log.info("access: token for %s/%s valid until %s (%.2f s)", access.NAMESPACE, access.SERVICE_ACCOUNT,
                  grant.expires.strftime("%Y-%m-%dT%H:%M:%SZ"), phases.seconds["access"])

        images.ready()
        with phases.phase("workload", record):
            _log.info("workload: starting %s", plan.workload.path)
            status, stopped_by = workload.run(plan.workload, workload_environment(environ, cluster, api, port, grant),
                                              Path.cwd(), run_dir / rundir.WORKLOAD_LOG, stopping.grace, guardian)
        life.workload_ended(status, stopped_by)
    return status
