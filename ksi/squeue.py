"""Adapter for squeue: the state Slurm reports for a job. Verbs only; what a state means is ksi.inventory's call."""

from __future__ import annotations

from collections.abc import Mapping

from ksi import proc
from ksi.errors import CommandFailed

_UNKNOWN_JOB = "Invalid job id"  # squeue's stderr (exit 1) for a job the controller has forgotten


class Squeue:
    """Runs squeue with an explicit environment (SLURM_CONF and PATH come from it)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)

    def job_state(self, job_id: str, *, timeout: float = 15.0) -> str | None:
        """Run ``squeue -h -t all -j ID -o %T`` and return the job's state (RUNNING, COMPLETED, ...).

        ``-t all`` matters: without it squeue hides finished jobs that the controller still remembers
        (MinJobAge) and prints nothing. Returns None when Slurm does not know the job (any more). Raises
        KsiError (ToolMissingError, CommandFailed, CommandTimeout) when squeue cannot answer, e.g. off Slurm.
        """
        argv = ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"]
        result = proc.run(argv, env=self._env, timeout=timeout, check=False, step="squeue")
        if result.returncode != 0:
            if _UNKNOWN_JOB in result.stderr:
                return None
            raise CommandFailed(argv, result.returncode, result.stdout, result.stderr, step="squeue")
        states = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        return states[0] if states else None
