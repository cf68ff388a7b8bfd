"""Adapter for scontrol: Slurm's configuration and a job's batch script. Verbs only, no policy."""

from __future__ import annotations

from collections.abc import Mapping

from ksi.tools import proc


class Scontrol:
    """Runs scontrol with an explicit environment (SLURM_CONF and PATH come from it)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)

    def show_config(self, *, timeout: float = 10.0) -> str:
        """Run ``scontrol show config`` and return its output (the controller's running configuration).

        Raises KsiError (ToolMissingError, CommandFailed, CommandTimeout) when scontrol cannot answer.
        """
        return proc.run(["scontrol", "show", "config"], env=self._env, timeout=timeout, step="scontrol").stdout

    def batch_script(self, job_id: str, *, timeout: float = 10.0) -> str:
        """Run ``scontrol write batch_script ID -`` and return the job's batch script.

        Raises KsiError when there is none (a job started by srun or salloc) or scontrol cannot answer.
        """
        argv = ["scontrol", "write", "batch_script", job_id, "-"]
        return proc.run(argv, env=self._env, timeout=timeout, step="scontrol").stdout
