"""The real-tools tier: ksi against the real kind, nerdctl and liqoctl on a prepared node.

Run by a site admin with `pytest -m realtools` (inside `salloc -N2` for the multi-node test).
Skipped wherever the real tools are missing; the simulations in tests/simhost never count as real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ksi_helpers import KSI, WORKLOADS

SIMULATED = str((Path(__file__).parent / "simhost" / "bin").resolve())


def real_tool(name: str) -> str | None:
    """Return the path of ``name`` on PATH unless it is missing or one of the simulations."""
    path = shutil.which(name)
    if path is None or str(Path(path).resolve().parent) == SIMULATED:
        return None
    return path


needs_kind = pytest.mark.skipif(not (real_tool("kind") and real_tool("nerdctl")),
                                reason="the real kind and nerdctl are not on PATH")
pytestmark = [pytest.mark.realtools, needs_kind]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("K8S_PORT", None)
    return env


def _clusters() -> set[str]:
    """Return the kind clusters that have node containers here, by kind's label (not `kind get clusters`,
    which fails with the nerdctl provider before kind v0.26: kubernetes-sigs/kind#3813)."""
    from ksi.tools.nerdctl import Nerdctl

    return {c.cluster for c in Nerdctl(os.environ).node_containers(timeout=60)}


LIST_CLUSTERS = ("nerdctl ps -a --no-trunc --filter label=io.x-k8s.kind.cluster --format '{{json .}}' | "
                 "python3 -c 'import json, sys; [print(json.loads(l)[\"Names\"]) for l in sys.stdin if l.strip()]'")


def _clusters_on_every_node(nodes: int) -> set[str]:
    """Return the node containers of kind clusters on every node of the allocation."""
    out = subprocess.run(["srun", f"-N{nodes}", "--ntasks-per-node=1", "sh", "-c", LIST_CLUSTERS],
                         capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_real_single_node_run(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    before = set(_clusters())
    result = subprocess.run([KSI, "run", str(WORKLOADS / "check_env.py"), str(tmp_path),
                             "--", str(report)], env=_env(), capture_output=True, text=True, timeout=900,
                            check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["missing"] == [] and data["api_status"] == 200
    assert data["nodes"] == [f"{data['env']['K8S_CLUSTER_NAME']}-control-plane"]
    assert set(_clusters()) == before, "the cluster outlived its run"


@pytest.mark.skipif(int(os.environ.get("SLURM_JOB_NUM_NODES", "0")) < 2 or not real_tool("liqoctl"),
                    reason="needs an allocation of two or more nodes (salloc -N2) and the real liqoctl")
def test_real_multi_node_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    shared = Path(os.environ.get("KSI_REALTOOLS_SHARED", os.getcwd()))  # must be shared by the nodes
    report = shared / f"ksi-realtools-{os.getpid()}.json"
    nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
    before = _clusters_on_every_node(nodes)
    result = subprocess.run(["srun", f"-N{nodes}", "--ntasks-per-node=1", "-K1", KSI, "run",
                             str(WORKLOADS / "check_env.py"), str(shared), "--", str(report)],
                            env=_env(), capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    report.unlink()
    assert len(data["nodes"]) == nodes
    assert _clusters_on_every_node(nodes) == before, "a cluster outlived its run"


def test_real_node_passes_ksi_doctor(tmp_path: Path) -> None:
    """On a prepared node every prerequisite check passes (setup/README.md says how to get there)."""
    result = subprocess.run([KSI, "doctor", str(tmp_path)], env=_env(), capture_output=True,
                            text=True, timeout=120, check=False)
    failures = [line for line in result.stdout.splitlines() if " FAIL " in line]
    assert result.returncode == 0 and failures == [], "\n".join(failures) or result.stderr
