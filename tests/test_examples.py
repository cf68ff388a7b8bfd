"""The example workloads, run as users run them: `ksi run` (or srun/sbatch on the Slurm bed) with the real
kubectl against the simulated host, each to success and, with a fault injected into its Job, to failure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import test_multinode
from tests.ksi_helpers import REPO, KsiRunner
from tests.simhost.plugin import SimHost
from tests.test_multinode import Multi

EXAMPLES = REPO / "example_workloads"
multi = test_multinode.multi  # the Slurm bed fixture of the multi-node tests
RUN_TIMEOUT = 120.0


def run_example(ksi: KsiRunner, script: str, faults: str = "") -> subprocess.CompletedProcess[str]:
    env = {"KSI_SIM_FAULTS": faults} if faults else {}
    return ksi.run("run", str(EXAMPLES / script), str(ksi.shared), timeout=RUN_TIMEOUT, env=env)


def test_hello_shows_the_nodes_and_runs_a_job(ksi: KsiRunner, simhost: SimHost) -> None:
    result = run_example(ksi, "hello/hello.sh")
    assert result.returncode == 0, result.stderr
    assert "-control-plane   Ready    control-plane" in result.stdout
    assert "Hello from pod hello-" in result.stdout and "job hello completed" in result.stdout
    simhost.assert_clean()


def test_hello_fails_with_its_job_and_says_why(ksi: KsiRunner, simhost: SimHost) -> None:
    result = run_example(ksi, "hello/hello.sh", faults="pod/hello-*:exit=3")
    assert result.returncode == 1, result.stderr
    assert "job hello failed: Job has reached the specified backoff limit" in result.stderr
    assert "Error, exit code 3" in result.stderr
    simhost.assert_clean()


def test_yaml_applies_its_manifest_and_waits(ksi: KsiRunner, simhost: SimHost) -> None:
    (ksi.shared / "visible.txt").write_text("from the shared directory\n")
    result = run_example(ksi, "yaml/yaml.sh")
    assert result.returncode == 0, result.stderr
    assert "job.batch/yaml-example created" in result.stdout
    assert "visible.txt" in result.stdout and "job yaml-example completed" in result.stdout
    simhost.assert_clean()


def test_yaml_fails_when_its_job_is_oom_killed(ksi: KsiRunner, simhost: SimHost) -> None:
    result = run_example(ksi, "yaml/yaml.sh", faults="pod/yaml-example-*:oom")
    assert result.returncode == 1, result.stderr
    assert "job yaml-example failed" in result.stderr and "OOMKilled, exit code 137" in result.stderr
    simhost.assert_clean()


def test_kube_api_uses_the_rest_api_with_the_token_and_verified_tls(ksi: KsiRunner, simhost: SimHost) -> None:
    result = run_example(ksi, "kube-api/kube-api.py")
    assert result.returncode == 0, result.stderr
    assert "Kubernetes v1." in result.stdout and "created through the REST API, running on ksi-" in result.stdout
    assert "job kube-api-example completed" in result.stdout
    simhost.assert_clean()


def test_kube_api_fails_with_its_job(ksi: KsiRunner, simhost: SimHost) -> None:
    result = run_example(ksi, "kube-api/kube-api.py", faults="pod/kube-api-example-*:exit=4")
    assert result.returncode == 1, result.stderr
    assert "job kube-api-example failed: BackoffLimitExceeded" in result.stderr
    assert "Error, exit code 4" in result.stderr
    simhost.assert_clean()


def test_training_reads_its_input_from_app_and_checkpoints_there(ksi: KsiRunner, simhost: SimHost) -> None:
    result = run_example(ksi, "training/training.sh")
    assert result.returncode == 0, result.stderr
    checkpoint = json.loads((ksi.shared / "ksi-training" / "checkpoint.json").read_text())
    assert checkpoint["epoch"] == 300 and abs(checkpoint["w"] - 3) < 0.3, checkpoint
    again = run_example(ksi, "training/training.sh")  # resumes: nothing left to train
    assert again.returncode == 0 and "resuming from epoch 300" in again.stdout, again.stderr
    simhost.assert_clean()


def test_training_fails_when_oom_killed_and_keeps_no_checkpoint(ksi: KsiRunner, simhost: SimHost) -> None:
    result = run_example(ksi, "training/training.sh", faults="pod/training-*:oom")
    assert result.returncode == 1, result.stderr
    assert "OOMKilled, exit code 137" in result.stderr and "none written" in result.stdout
    simhost.assert_clean()


def test_nodeport_on_one_node_serves_k8s_port(ksi: KsiRunner, simhost: SimHost) -> None:
    result = run_example(ksi, "nodeport/nodeport.sh")
    assert result.returncode == 0, result.stderr
    assert "hello from pod nodeport-web-" in result.stdout and "job nodeport-client completed" in result.stdout
    simhost.assert_clean()


def test_nodeport_fails_with_its_client_job(ksi: KsiRunner, simhost: SimHost) -> None:
    result = run_example(ksi, "nodeport/nodeport.sh", faults="pod/nodeport-client-*:exit=7")
    assert result.returncode == 1, result.stderr
    assert "job nodeport-client failed" in result.stderr and "Error, exit code 7" in result.stderr
    simhost.assert_clean()


# ------------------------------------------------------------------------------------------ on the Slurm bed


@pytest.fixture
def bed_examples(multi: Multi) -> Path:
    """The examples, copied into the bed's shared directory (every node sees it; it becomes /app)."""
    target = multi.shared / "example_workloads"
    shutil.copytree(EXAMPLES, target)
    return target


def test_multinode_runs_a_pod_on_every_node(multi: Multi, bed_examples: Path) -> None:
    result = multi.srun(bed_examples / "multinode" / "multinode.sh", timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = re.findall(r"runs on node (\S+)", result.stdout)
    assert len(reports) == 3 and len(set(reports)) == 3, result.stdout  # a kind node per Slurm node
    placed = re.search(r"pods ran on: (.*)", result.stdout)
    assert placed and len(placed[1].split()) == 3, result.stdout
    multi.assert_clean()


def test_multinode_fails_with_its_job(multi: Multi, bed_examples: Path) -> None:
    result = multi.srun(bed_examples / "multinode" / "multinode.sh", timeout=RUN_TIMEOUT,
                        env={"KSI_SIM_FAULTS": "pod/multinode-*:exit=5"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "job multinode failed: Job has reached the specified backoff limit" in result.stderr
    assert "Error, exit code 5" in result.stderr
    multi.assert_clean()


def test_nodeport_is_reached_from_another_node(multi: Multi, bed_examples: Path) -> None:
    result = multi.srun(bed_examples / "nodeport" / "nodeport.sh", nodes=2, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    client = re.search(r"\[pod/nodeport-client-\S+/fetch\] hello from pod nodeport-web-\S+ on (\S+)", result.stdout)
    assert client and client[1].endswith("-control-plane"), result.stdout
    multi.assert_clean(idle=multi.bed.node_names[2:])


def test_nodeport_fails_when_the_other_node_cannot_fetch(multi: Multi, bed_examples: Path) -> None:
    result = multi.srun(bed_examples / "nodeport" / "nodeport.sh", nodes=2, timeout=RUN_TIMEOUT,
                        env={"KSI_SIM_FAULTS": "pod/nodeport-client-*:exit=7"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "job nodeport-client failed" in result.stderr and "Error, exit code 7" in result.stderr
    multi.assert_clean(idle=multi.bed.node_names[2:])


def sbatch_wait(multi: Multi, script: Path, faults: str = "") -> tuple[int, str]:
    """Submit ``script`` from the shared directory, wait for the job; return its exit code and output."""
    out = multi.shared / "slurm-example.out"
    env = {**multi.env, **({"KSI_SIM_FAULTS": faults} if faults else {})}
    result = subprocess.run(["sbatch", "--wait", "-o", str(out), str(script)], cwd=multi.shared, env=env,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT + 60, check=False)
    return result.returncode, out.read_text() if out.exists() else result.stderr


def test_sbatch_one_node_trains_and_checkpoints(multi: Multi, bed_examples: Path) -> None:
    code, output = sbatch_wait(multi, bed_examples / "sbatch" / "one-node.sh")
    assert code == 0, output
    assert "job training completed" in output
    assert json.loads((multi.shared / "ksi-training" / "checkpoint.json").read_text())["epoch"] == 300
    multi.assert_clean(idle=multi.bed.node_names[1:])


def test_sbatch_one_node_fails_with_its_job(multi: Multi, bed_examples: Path) -> None:
    code, output = sbatch_wait(multi, bed_examples / "sbatch" / "one-node.sh", faults="pod/training-*:oom")
    assert code == 1, output
    assert "OOMKilled, exit code 137" in output
    multi.assert_clean(idle=multi.bed.node_names[1:])


def test_sbatch_multinode_spans_three_nodes(multi: Multi, bed_examples: Path) -> None:
    code, output = sbatch_wait(multi, bed_examples / "sbatch" / "multinode.sh")
    assert code == 0, output
    assert len(set(re.findall(r"runs on node (\S+)", output))) == 3, output
    multi.assert_clean()


def test_sbatch_multinode_fails_with_its_job(multi: Multi, bed_examples: Path) -> None:
    code, output = sbatch_wait(multi, bed_examples / "sbatch" / "multinode.sh", faults="pod/multinode-*:exit=5")
    # srun -K1: no node exits before every node's teardown is over, so Slurm kills none and the job's
    # status is the workload's.
    assert code == 1, output
    assert "Error, exit code 5" in output
    for node in multi.bed.node_names:
        assert f"ksi[{node}] teardown: done" in output, output
    multi.assert_clean()
