"""On the real Slurm test bed: the Epilog removes the cluster of a job whose ksi was SIGKILLed, and
`srun -N3 ksi doctor` reports per node.

kind, nerdctl and liqoctl are the simulated ones; the node containers they start outlive the job exactly
as rootless containers under the user's systemd do. Each bed node has a private directory (its own
tmpfs); ksi's node-local state lives there, as /tmp would on real compute nodes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ksi_helpers import KSI, REPO, wait_for
from tests.simhost.plugin import SimHost
from tests.testbed.plugin import SlurmBed

pytestmark = pytest.mark.slurm

LABEL = "io.x-k8s.kind.cluster"
HELD = """\
#!/bin/bash
# The workload's parent is ksi's guardian of its process group; ksi is the guardian's parent.
read -r _ _ _ ksi _ < /proc/$PPID/stat
echo "$ksi $$" > "$MARKS/$K8S_CLUSTER_NAME.tmp" && mv "$MARKS/$K8S_CLUSTER_NAME.tmp" "$MARKS/$K8S_CLUSTER_NAME"
for _ in $(seq 1200); do [ -e "$MARKS/release" ] && exit 0; sleep 0.05; done
exit 9
"""


@dataclass(frozen=True)
class Setup:
    """A shared directory with the ksi wrapper, a held workload and the marks directory, plus the env."""

    shared: Path
    ksi: Path
    workload: Path
    marks: Path
    state_pattern: str  # node-local state directory, %u for the uid
    env: dict[str, str]


def write(path: Path, text: str, mode: int = 0o755) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def setup(slurm_bed: SlurmBed, simhost: SimHost) -> Iterator[Setup]:
    shared = slurm_bed.shared_dir("ksi-epilog")
    ksi = write(shared / "ksi", f'#!/bin/sh\nexec {KSI} "$@"\n')
    workload = write(shared / "held.sh", HELD)
    marks = shared / "marks"
    marks.mkdir()
    state_pattern = f"{slurm_bed.private_dir}/ksi-state-%u"
    env = slurm_bed.env(simhost.env(KSI_STATE_DIR=state_pattern.replace("%u", str(os.getuid())),
                                    KSI_SYSTEMD_SCOPE="never", MARKS=str(marks)))
    for name in ("KUBECONFIG", "K8S_PORT", "KSI_SIM_FAULTS"):
        env.pop(name, None)
    yield Setup(shared, ksi, workload, marks, state_pattern, env)
    (marks / "release").write_text("")


def live_nodes(simhost: SimHost, host: str, name: str) -> list[str]:
    return [str(c["name"]) for c in simhost.containers(host) if c["labels"].get(LABEL) == name and c["alive"]]


def test_epilog_removes_the_cluster_of_a_job_whose_ksi_was_sigkilled(slurm_bed: SlurmBed, simhost: SimHost,
                                                                      setup: Setup) -> None:
    node = slurm_bed.node_names[0]
    hook = slurm_bed.epilog_dir / f"50-ksi-{uuid.uuid4().hex[:8]}"
    write(hook, "#!/bin/sh\n" + "".join(f"export {k}='{v}'\n" for k, v in {
        "KSI_EPILOG_KSI": setup.ksi,
        "KSI_EPILOG_PATH": f"{simhost.bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "KSI_EPILOG_STATE_DIR": setup.state_pattern,
        "KSI_EPILOG_PASS": "KSI_SIM_ROOT",
        "KSI_SIM_ROOT": simhost.root,
        "KSI_EPILOG_TIMEOUT": "40",
    }.items()) + f"exec {REPO / 'setup' / 'ksi-epilog.sh'}\n")
    try:
        batch = write(setup.shared / "job.sh",
                      f"#!/bin/sh\nsrun -N1 -n1 {setup.ksi} run {setup.workload} {setup.shared}\n")
        submitted = slurm_bed.run(["sbatch", "--parsable", "-N1", "-w", node, f"--chdir={setup.shared}",
                                   f"--output={setup.shared}/job.out", str(batch)], env=setup.env)
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip().split(";")[0]
        [name] = wait_for(lambda: [n for n in os.listdir(setup.marks) if not n.endswith(".tmp")], 90,
                          "the workload to start on the node")
        assert name.startswith(f"ksi-{job}-")
        ksi_pid = int((setup.marks / name).read_text().split()[0])
        assert live_nodes(simhost, node, name) == [f"{name}-control-plane"]
        run_dir = setup.shared / "ksi-runs" / name
        assert (run_dir / "kubeconfig").exists()

        os.kill(ksi_pid, signal.SIGKILL)  # as if KillWait ran out: no teardown at all
        log = slurm_bed.state_dir / "log" / f"epilog-{node}.log"
        wait_for(lambda: log.exists() and f"ksi cleanup --job {job} done" in log.read_text(), 90,
                 f"the epilog of job {job}")
        text = log.read_text()
        assert f"cleanup: deleted {name} (job {job}" in text, text
        assert live_nodes(simhost, node, name) == []
        state = setup.state_pattern.replace("%u", str(os.getuid()))
        left = slurm_bed.on_node(node, ["sh", "-c", f"ls -A {state}/clusters {state}/ports"])
        assert left.returncode == 0 and left.stdout.split() == [f"{state}/clusters:", f"{state}/ports:"], left
        assert not (run_dir / "kubeconfig").exists() and (run_dir / "ksi.log").exists()
        assert json.loads((run_dir / "run.json").read_text())["state"] == "cleaned"
    finally:
        hook.unlink()
    slurm_bed.wait_idle()
    simhost.assert_clean()


def _by_node(stdout: str) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        node = line.split("]", 1)[0].removeprefix("ksi[")
        lines.setdefault(node, []).append(line.split(" doctor: ", 1)[1])
    return lines


def test_doctor_over_srun_reports_per_node(slurm_bed: SlurmBed, simhost: SimHost, setup: Setup) -> None:
    nodes = slurm_bed.node_names
    only_on_second = slurm_bed.private_dir / f"doctor-{uuid.uuid4().hex[:8]}"  # a directory only node 2 has
    made = slurm_bed.on_node(nodes[1], ["mkdir", "-m", "777", str(only_on_second)])
    assert made.returncode == 0, made.stderr
    argv = ["srun", f"-N{len(nodes)}", f"--chdir={setup.shared}", str(setup.ksi), "doctor", str(only_on_second)]
    result = slurm_bed.run(argv, env=setup.env, timeout=120)
    per_node = _by_node(result.stdout)
    assert sorted(per_node) == sorted(nodes), result.stdout + result.stderr
    for node, lines in per_node.items():
        assert len(lines) == 18, lines
        assert "PASS cgroup v2: unified hierarchy at /sys/fs/cgroup" in lines
        assert "PASS kind >= v0.23.0: kind v0.27.0" in lines
        shared_line = next(line for line in lines if " shared directory writable" in line)
        if node == nodes[1]:
            assert shared_line == f"PASS shared directory writable: {only_on_second}"
        else:
            assert shared_line.startswith("FAIL shared directory writable: ") and "does not exist" in shared_line
            assert lines[-1].endswith(f"{node} cannot run ksi until the failures are fixed")
    assert result.returncode == 3

    # One JSON object per node: srun forwards output in chunks of about 1 KB, so long lines from different
    # nodes can interleave on its stdout; one file per node (%N) keeps them whole.
    json_argv = [*argv[:2], f"--output={setup.shared}/doctor-%N.json", *argv[2:], "--json"]
    as_json = slurm_bed.run(json_argv, env=setup.env, timeout=120)
    assert as_json.returncode == 3, as_json.stderr
    reports = {}
    for node in nodes:
        [line] = (setup.shared / f"doctor-{node}.json").read_text().splitlines()
        reports[node] = json.loads(line)
    assert {node: report["node"] for node, report in reports.items()} == {node: node for node in nodes}
    for node, report in reports.items():
        shared = next(c for c in report["checks"] if c["name"] == "shared directory writable")
        assert shared["ok"] is (node == nodes[1]) and report["ok"] is False
    slurm_bed.on_node(nodes[1], ["rmdir", str(only_on_second)])
