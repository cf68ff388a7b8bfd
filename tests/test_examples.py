"""The example workloads, run as users run them: `ksi run` (or srun/sbatch on the Slurm bed) with the real
kubectl against the simulated host, each to success and, with a fault injected into its Job, to failure."""

from __future__ import annotations

import json
import subprocess

from tests.ksi_helpers import REPO, KsiRunner
from tests.simhost.plugin import SimHost

EXAMPLES = REPO / "example_workloads"
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
