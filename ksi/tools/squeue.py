"""Adapter for squeue: the state Slurm reports for a job. Verbs only; ksi.admin.inventory says what a state means."""

from __future__ import annotations

from collections.abc import Mapping

from ksi.errors import CommandFailed, KsiError
from ksi.tools import proc

_UNKNOWN_JOB = "Invalid job id"  # squeue's stderr (exit 1) for a job the controller has forgotten


class Squeue:
    """Runs squeue with an explicit environment (SLURM_CONF and PATH come from it)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)

    def job_state(self, job_id: str, *, timeout: float = 15.0) -> str | None:
        """Run ``squeue -h -t all -j ID -o '%A %T'`` and return the job's state (RUNNING, COMPLETED, ...).

        ``-t all`` matters: without it squeue hides finished jobs that the controller still remembers
        (MinJobAge) and prints nothing. ``%A`` is each job's own id: ``-j`` with the id of an array's first
        task lists every task of the array, and only the line of ``job_id`` answers. Returns None when Slurm
        does not know the job (any more). Raises KsiError (ToolMissingError, CommandFailed, CommandTimeout)
        when squeue cannot answer, e.g. off Slurm.
        """
        argv = ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%A %T"]
        result = proc.run(argv, env=self._env, timeout=timeout, check=False, step="squeue")
        if result.returncode != 0:
            if _UNKNOWN_JOB in result.stderr:
                return None
            raise CommandFailed(argv, result.returncode, result.stdout, result.stderr, step="squeue")
        return parse_job_state(result.stdout, job_id)

    def end_time(self, job_id: str, *, timeout: float = 15.0) -> int | None:
        """Run ``squeue -h -j ID -o %e`` and return when the job's time limit hits (epoch seconds).

        None when the job has no limit, Slurm does not say, or squeue cannot answer (never raises: a token
        lifetime falls back to its default).
        """
        env = {**self._env, "SLURM_TIME_FORMAT": "%Y-%m-%dT%H:%M:%S"}
        try:
            result = proc.run(["squeue", "-h", "-j", job_id, "-o", "%e"], env=env, timeout=timeout, check=False,
                              step="squeue")
        except KsiError:
            return None
        return parse_end_time(result.stdout) if result.returncode == 0 else None


    def state_and_end(self, job_id: str, *, timeout: float = 15.0) -> tuple[str, int | None] | None:
        """Run ``squeue -h -j ID -o '%A %T %e'``: the job's state and when its time limit hits (as now set).

        None when squeue cannot answer or does not list the job (never raises).
        """
        env = {**self._env, "SLURM_TIME_FORMAT": "%Y-%m-%dT%H:%M:%S"}
        try:
            result = proc.run(["squeue", "-h", "-j", job_id, "-o", "%A %T %e"], env=env, timeout=timeout,
                              check=False, step="squeue")
        except KsiError:
            return None
        return parse_state_and_end(result.stdout, job_id) if result.returncode == 0 else None


def parse_state_and_end(text: str, job_id: str) -> tuple[str, int | None] | None:
    """Return (state, end time) from the line of ``job_id`` in squeue's ``%A %T %e`` output, or None."""
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == job_id:
            return words[1], parse_end_time(words[2])
    return None


def parse_job_state(text: str, job_id: str) -> str | None:
    """Return the state on the line of ``job_id`` in squeue's ``%A %T`` output, or None if it has none."""
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == job_id:
            return words[1]
    return None


def parse_end_time(text: str) -> int | None:
    """Return the epoch seconds of squeue's ``%e`` (local time), or None for N/A, Unknown or garbage."""
    import time

    try:
        return int(time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None
