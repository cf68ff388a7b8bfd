"""The run directory under the shared directory: 0700, holding config, secrets (0600), logs and run.json."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ksi.cluster import names
from ksi.errors import EXIT_PREREQUISITE, EXIT_USAGE, PrerequisiteError, Problem
from ksi.host.state import write_json

RUNS = "ksi-runs"
KIND_CONFIG = "kind-config.yaml"
KUBECONFIG = "kubeconfig"
KSI_LOG = "ksi.log"
WORKLOAD_LOG = "workload.log"
RECORD = "run.json"
API_CLIENT_FILES = ".kube-client"  # the kubernetes client's copies of the kubeconfig's certificates and key
SECRETS = (KUBECONFIG, API_CLIENT_FILES)


def check_shared_dir(text: str) -> Path | Problem:
    """Return the absolute shared directory, or the problem with it (probed with a temporary file)."""
    path = Path(text).expanduser().absolute()
    fix = "give an existing directory you can write to, on a filesystem all nodes share"
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        return Problem(EXIT_USAGE, f"shared directory {str(path)!r} {what}", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ksi-probe-"):
            pass
    except OSError as exc:
        return Problem(EXIT_PREREQUISITE, f"shared directory {str(path)!r} is not writable ({exc.strerror})", fix)
    return path


def create(shared_dir: Path, job_id: str | None, attempts: int = 5) -> tuple[str, Path]:
    """Name a cluster for ``job_id`` and create its run directory ``<shared_dir>/ksi-runs/<name>`` (0700).

    mkdir is an atomic claim on every filesystem: a name whose directory exists already (another run drew
    the same random suffix) is never reused; ksi draws another. Returns the name and the directory.
    """
    runs = shared_dir / RUNS
    runs.mkdir(exist_ok=True)
    for _ in range(attempts):
        name = names.cluster_name(job_id)
        path = runs / name
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        if stat.S_IMODE(path.stat().st_mode) != 0o700:  # a default ACL on the parent can widen it
            os.chmod(path, 0o700)
        return name, path
    raise PrerequisiteError(f"{attempts} fresh cluster names in a row had a run directory in {runs} already",
                            step="rundir", fix=f"check what creates directories in {runs}")


def remove_secrets(run_dir: Path) -> list[str]:
    """Delete the kubeconfig and other secrets of a finished run, keeping logs; return what was removed."""
    removed = []
    for name in SECRETS:
        path = run_dir / name
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(name)
    return removed


@dataclass
class RunRecord:
    """Machine-readable summary of a run, rewritten atomically as phases complete (run.json)."""

    path: Path
    cluster: str
    node: str
    job_id: str | None
    port: int | None = None
    api: str | None = None
    state: str = "starting"
    phases: dict[str, float] = field(default_factory=dict)
    exit_status: int | None = None
    stop_signal: str | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    pid: int = field(default_factory=os.getpid)
    lost_nodes: list[str] = field(default_factory=list)  # followers that fell silent during the workload

    def save(self, **changes: Any) -> None:
        """Apply ``changes`` and rewrite run.json."""
        for key, value in changes.items():
            setattr(self, key, value)
        data = asdict(self)
        data.pop("path")
        write_json(self.path, data, mode=0o644)
