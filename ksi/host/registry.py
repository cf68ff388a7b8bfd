"""Node-local records of the clusters ksi created for this user: what `ksi list` and `ksi cleanup` read.

A record is written before `kind create` starts and removed only after the cluster is verified gone, so a
ksi that was SIGKILLed leaves a record behind that names its run directory and its (dead) process.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ksi.host.state import ProcessId, read_json, write_json


@dataclass(frozen=True)
class ClusterRecord:
    """One cluster ksi created on this node."""

    name: str
    job_id: str | None
    run_dir: str
    kubeconfig: str
    port: int
    pid: int
    pid_start: int
    host: str
    created: float

    @property
    def owner(self) -> ProcessId:
        """The ksi process that created the cluster."""
        return ProcessId(self.pid, self.pid_start)


class Registry:
    """The directory ``<state_dir>/clusters`` with one JSON record per cluster."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "clusters"

    def add(self, record: ClusterRecord) -> None:
        """Write the record of a cluster about to be created."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        write_json(self.dir / f"{record.name}.json", asdict(record))

    def remove(self, name: str) -> None:
        """Forget a cluster that is verified gone."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{name}.json").unlink()

    def get(self, name: str) -> ClusterRecord | None:
        """Return the record of ``name``, or None if it is missing or damaged."""
        return _parse(read_json(self.dir / f"{name}.json"))

    def names(self) -> list[str]:
        """Return the names of every record file, damaged or not."""
        if not self.dir.is_dir():
            return []
        return sorted(p.name.removesuffix(".json") for p in self.dir.glob("*.json"))


def _parse(data: object) -> ClusterRecord | None:
    if not isinstance(data, dict):
        return None
    try:
        return ClusterRecord(
            name=str(data["name"]), job_id=data.get("job_id"), run_dir=str(data["run_dir"]),
            kubeconfig=str(data["kubeconfig"]), port=int(data["port"]), pid=int(data["pid"]),
            pid_start=int(data["pid_start"]), host=str(data["host"]), created=float(data["created"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def new_record(name: str, job_id: str | None, run_dir: Path, kubeconfig: Path, port: int, host: str) -> ClusterRecord:
    """Return the record for a cluster this process is about to create."""
    me = ProcessId.current()
    return ClusterRecord(name, job_id, str(run_dir), str(kubeconfig), port, me.pid, me.start, host, time.time())
