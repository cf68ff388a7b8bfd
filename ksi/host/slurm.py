"""Reading the Slurm environment of a task: pure functions from environment variables to values."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SlurmContext:
    """Where this ksi process runs: standalone, in a batch script, or as one task of a step."""

    job_id: str | None
    step_id: str | None
    procid: int
    ntasks: int
    step_nodes: int
    nodename: str | None
    step_nodelist: str | None
    restart_count: int
    end_time: int | None

    @property
    def in_job(self) -> bool:
        """True inside a Slurm job (batch script or step)."""
        return self.job_id is not None

    @property
    def in_step(self) -> bool:
        """True inside an srun step (a batch script without srun has no step id)."""
        return self.step_id is not None


def node_name(environ: Mapping[str, str]) -> str:
    """Return this node's name as ksi prints and records it: SLURMD_NODENAME, else the short hostname."""
    return environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def node_names(environ: Mapping[str, str]) -> frozenset[str]:
    """Return every name this node goes by: SLURMD_NODENAME, the hostname and the short hostname."""
    host = socket.gethostname()
    return frozenset(filter(None, {environ.get("SLURMD_NODENAME", ""), host, host.split(".")[0]}))


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(environ.get(name, ""))
    except ValueError:
        return default


def context(environ: Mapping[str, str]) -> SlurmContext:
    """Return the SlurmContext the variables in ``environ`` describe."""
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or None
    step_id = environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID") or None
    if job_id is None:
        step_id = None
    ntasks = _int(environ, "SLURM_STEP_NUM_TASKS", 0) or _int(environ, "SLURM_NTASKS", 1) if step_id else 1
    end_raw = _int(environ, "SLURM_JOB_END_TIME", 0)
    return SlurmContext(
        job_id=job_id if job_id and re.fullmatch(r"[0-9]{1,20}", job_id) else None,  # array tasks have their own
        step_id=step_id,
        procid=_int(environ, "SLURM_PROCID", 0) if step_id else 0,
        ntasks=max(ntasks, 1),
        step_nodes=max(_int(environ, "SLURM_STEP_NUM_NODES", 1), 1) if step_id else 1,
        nodename=environ.get("SLURMD_NODENAME") or None,
        step_nodelist=environ.get("SLURM_STEP_NODELIST") if step_id else None,
        restart_count=_int(environ, "SLURM_RESTART_COUNT", 0),
        end_time=end_raw or None,
    )


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist such as ``n[01-03,7],gpu1`` into node names (zero padding kept)."""
    names: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if match is None:
            names.append(item)
            continue
        prefix, ranges, rest = match.groups()
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            width = len(low)
            for number in range(int(low), int(high or low) + 1):
                names.extend(f"{prefix}{number:0{width}d}{tail}" for tail in expand_nodelist(rest) or [""])
    return names
