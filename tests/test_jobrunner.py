"""The simulated host's job runner, through the official kubernetes client: Jobs whose pods really run.

Pods are processes on the simulated node they are scheduled to (the provider's, for a Liqo virtual node);
these tests check what a client of a real cluster sees: phases, container states, exit codes, logs, watch
events, Job conditions, scheduling on resources, deletion, and the faults KSI_SIM_FAULTS injects.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch

from tests.simhost.plugin import SimHost
from tests.test_simhost import create, free_port, kind_config, run

WAIT = 30.0  # seconds any wait of these tests may take at most
VIRTUAL_TOLERATION = {"key": "virtual-node.liqo.io/not-allowed", "operator": "Exists", "effect": "NoExecute"}


class Cluster:
    """A simulated cluster seen through the official client."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)

    def job(self, name: str, command: list[str], **spec: Any) -> dict[str, Any]:
        """Create a Job running ``command`` with /app mounted from the node's /app; return it."""
        pod_spec = {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "busybox:1.36", "command": command,
            "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "GREETING", "value": "hello"}],
            "volumeMounts": [{"name": "shared", "mountPath": "/app"}]}],
            "volumes": [{"name": "shared", "hostPath": {"path": "/app", "type": "Directory"}}]}
        pod_spec |= spec.pop("pod", {})
        labels = spec.pop("labels", {})
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": pod_spec}} | spec}
        created = self.batch.create_namespaced_job("default", body)  # type: ignore[arg-type]
        return self.api.sanitize_for_serialization(created)  # type: ignore[no-any-return]

    def wait_job(self, name: str, condition: str = "") -> dict[str, Any]:
        """Watch the Job until it has a Complete or Failed condition (``condition`` if given); return it."""
        stream = new_watch()
        for event in stream.stream(self.batch.list_namespaced_job, "default", field_selector=f"metadata.name={name}",
                                   timeout_seconds=int(WAIT)):
            job = self.api.sanitize_for_serialization(event["object"])
            done = [c["type"] for c in (job.get("status") or {}).get("conditions") or []
                    if c["type"] in ("Complete", "Failed") and c["status"] == "True"]
            if done and (not condition or condition in done):
                stream.stop()
                return job  # type: ignore[no-any-return]
        raise AssertionError(f"job {name} did not finish within {WAIT} s")

    def pods(self, job: str) -> list[dict[str, Any]]:
        """Return the pods of a Job (as JSON)."""
        found = self.core.list_namespaced_pod("default", label_selector=f"batch.kubernetes.io/job-name={job}")
        return self.api.sanitize_for_serialization(found)["items"]  # type: ignore[no-any-return]


def new_watch() -> Any:
    """Return a watch of the official client (untyped)."""
    return watch.Watch()  # type: ignore[no-untyped-call]


def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Return the first truthy ``check()``; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def state(pod: dict[str, Any]) -> dict[str, Any]:
    """Return the state of the pod's first container."""
    return pod["status"]["containerStatuses"][0]["state"]  # type: ignore[no-any-return]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    shared = tmp_path / "shared dir"
    shared.mkdir()
    return shared


def one_cluster(simhost: SimHost, tmp_path: Path, app: Path, name: str = "solo", **env: str) -> Cluster:
    kubeconfig = tmp_path / f"{name}.kubeconfig"
    create(simhost, name, kubeconfig, "--config", str(kind_config(tmp_path, f"""nodes:
- role: control-plane
  extraMounts:
  - {{hostPath: {json.dumps(str(app))}, containerPath: /app}}
""")), env=env)
    return Cluster(kubeconfig)


def peer_pair(simhost: SimHost, tmp_path: Path, app: Path, provider_faults: str = "") -> tuple[Cluster, Cluster]:
    """A consumer cluster with a virtual node for a provider cluster (Liqo peering), both on this host.

    The provider's node process gets ``provider_faults`` (KSI_SIM_FAULTS).
    """
    faults = {"KSI_SIM_FAULTS": provider_faults} if provider_faults else {}
    gateway = free_port(socket.SOCK_DGRAM)
    consumer, provider = tmp_path / "consumer", tmp_path / "provider"
    mounts = f"""  extraMounts:
  - {{hostPath: {json.dumps(str(app))}, containerPath: /app}}
"""
    create(simhost, "cons", consumer, "--config",
           str(kind_config(tmp_path, "nodes:\n- role: control-plane\n" + mounts)))
    (tmp_path / "p").mkdir()
    create(simhost, "prov", provider, "--config", str(kind_config(tmp_path / "p", f"""nodes:
- role: control-plane
{mounts}  extraPortMappings:
  - {{containerPort: 30051, hostPort: {gateway}, protocol: UDP}}
""")), env=faults)
    for kubeconfig, cluster_id in ((consumer, "milan"), (provider, "rome")):
        server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        installed = run(simhost, "liqoctl", "install", "kind", "--cluster-id", cluster_id, "--kubeconfig",
                        str(kubeconfig), "--set", f"apiServer.address={server}")
        assert installed.returncode == 0, installed.stderr
    peered = run(simhost, "liqoctl", "peer", "--kubeconfig", str(consumer), "--remote-kubeconfig", str(provider),
                 "--gw-server-service-type", "NodePort", "--gw-server-service-nodeport", "30051",
                 "--gw-client-address", "127.0.0.1", "--gw-client-port", str(gateway), "--cpu", "2")
    assert peered.returncode == 0, peered.stderr
    # Liqo reflects only pods of offloaded namespaces; ksi's leader offloads `default` the same way.
    offloaded = run(simhost, "liqoctl", "offload", "namespace", "default", "--kubeconfig", str(consumer),
                    "--namespace-mapping-strategy", "DefaultName", "--pod-offloading-strategy", "LocalAndRemote")
    assert offloaded.returncode == 0, offloaded.stderr
    return Cluster(consumer), Cluster(provider)


def test_a_job_runs_its_command_with_the_pod_environment_and_the_shared_directory(
        simhost: SimHost, tmp_path: Path, app: Path) -> None:
    cluster = one_cluster(simhost, tmp_path, app)
    (app / "input.txt").write_text("41\n")
    events: list[tuple[str, str, str]] = []

    since = cluster.api.sanitize_for_serialization(cluster.core.list_namespaced_pod("default"))["metadata"][
        "resourceVersion"]

    def follow_pods() -> None:  # a watch from before the Job, as a client following the Job's pods would
        stream = new_watch()
        for event in stream.stream(cluster.core.list_namespaced_pod, "default", resource_version=since,
                                   timeout_seconds=int(WAIT)):
            pod = cluster.api.sanitize_for_serialization(event["object"])
            states = [next(iter(s["state"])) for s in pod["status"].get("containerStatuses") or []]
            events.append((event["type"], pod["status"]["phase"], ",".join(states)))
            if pod["status"]["phase"] in ("Succeeded", "Failed"):
                stream.stop()

    watcher = threading.Thread(target=follow_pods)
    watcher.start()
    cluster.job("calc", ["sh", "-c", 'echo "$GREETING from $HOSTNAME on $NODE"; echo $(( $(cat /app/input.txt) + 1 ))'
                         ' > /app/output.txt; echo done >&2'])
    job = cluster.wait_job("calc")
    watcher.join(WAIT)
    assert [c["type"] for c in job["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert job["status"]["succeeded"] == 1 and job["status"].get("completionTime")
    assert (app / "output.txt").read_text() == "42\n"
    [pod] = cluster.pods("calc")
    assert pod["metadata"]["name"].startswith("calc-") and pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert pod["spec"]["nodeName"] == "solo-control-plane" and pod["status"]["phase"] == "Succeeded"
    terminated = state(pod)["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert terminated["startedAt"] <= terminated["finishedAt"]
    log = cluster.core.read_namespaced_pod_log(pod["metadata"]["name"], "default")
    assert log == f"hello from {pod['metadata']['name']} on solo-control-plane\ndone\n"
    assert ("ADDED", "Pending", "") in events and events[-1] == ("MODIFIED", "Succeeded", "terminated")
    phases = [phase for _, phase, _ in events]
    assert phases.index("Running") > phases.index("Pending")
    assert ("MODIFIED", "Pending", "waiting") in events  # ContainerCreating


def test_exit_codes_oom_kills_and_deadlines_fail_the_job_with_kubernetes_reasons(
        simhost: SimHost, tmp_path: Path, app: Path) -> None:
    cluster = one_cluster(simhost, tmp_path, app, KSI_SIM_FAULTS="pod/oom-*:oom=0.2,pod/injected-*:exit=3")
    cluster.job("exits", ["sh", "-c", "echo failing; exit 7"])
    cluster.job("oom", ["sleep", "60"])
    cluster.job("injected", ["sh", "-c", "echo ran anyway"])
    cluster.job("slow", ["sleep", "60"], activeDeadlineSeconds=1)
    cluster.job("missing", ["no-such-command-here"])
    expected = {"exits": (7, "Error"), "oom": (137, "OOMKilled"), "injected": (3, "Error"),
                "missing": (128, "StartError")}
    for name, (code, reason) in expected.items():
        job = cluster.wait_job(name, "Failed")
        failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "BackoffLimitExceeded", job
        assert job["status"]["failed"] == 1
        [pod] = cluster.pods(name)
        assert pod["status"]["phase"] == "Failed"
        terminated = state(pod)["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (code, reason), pod
    assert "executable file not found" in state(cluster.pods("missing")[0])["terminated"]["message"]
    assert cluster.core.read_namespaced_pod_log(cluster.pods("injected")[0]["metadata"]["name"], "default") == \
        "ran anyway\n"
    job = cluster.wait_job("slow", "Failed")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert (failed["reason"], failed["message"]) == (
        "DeadlineExceeded", "Job was active longer than specified deadline")
    until(lambda: not cluster.pods("slow"), "the pod of the Job past its deadline to be deleted")


def test_backoff_limit_retries_failed_pods_then_fails(simhost: SimHost, tmp_path: Path, app: Path) -> None:
    cluster = one_cluster(simhost, tmp_path, app, KSI_SIM_JOB_BACKOFF="0.1")
    (app / "count").write_text("")
    cluster.job("retry", ["sh", "-c", "echo x >> /app/count; exit 1"], backoffLimit=2)
    job = cluster.wait_job("retry", "Failed")
    assert job["status"]["failed"] == 3 and len(cluster.pods("retry")) == 3
    assert (app / "count").read_text() == "x\nx\nx\n"


def test_pods_wait_pending_until_their_requests_fit(simhost: SimHost, tmp_path: Path, app: Path) -> None:
    cluster = one_cluster(simhost, tmp_path, app)
    resources = {"requests": {"cpu": "1000", "memory": "1Gi"}}
    cluster.job("huge", ["true"], pod={"containers": [{"name": "main", "image": "x", "command": ["true"],
                                                       "resources": resources}]})

    def unschedulable() -> str:
        pods = cluster.pods("huge")
        conditions = pods[0]["status"].get("conditions") or [] if pods else []
        return next((c["message"] for c in conditions if c.get("reason") == "Unschedulable"), "")

    message = until(unschedulable, "the pod to be reported unschedulable")
    assert message.startswith("0/1 nodes are available: 1 Insufficient cpu.")
    [pod] = cluster.pods("huge")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    _, code, headers = cluster.batch.delete_namespaced_job_with_http_info("huge", "default")
    assert code == 200 and "child pods are preserved" in headers.get("Warning", "")
    assert cluster.pods("huge") and not pods_owned(cluster.pods("huge"))  # orphaned, as by default for Jobs


def pods_owned(pods: list[dict[str, Any]]) -> list[str]:
    return [p["metadata"]["name"] for p in pods if p["metadata"].get("ownerReferences")]


def test_deleting_a_job_in_the_background_stops_its_pods(simhost: SimHost, tmp_path: Path, app: Path) -> None:
    cluster = one_cluster(simhost, tmp_path, app)
    cluster.job("forever", ["sh", "-c", "echo $$ > /app/pid; exec sleep 300"])
    until(lambda: (app / "pid").exists() and (app / "pid").read_text().strip(), "the pod to start")
    pid = int((app / "pid").read_text())
    cluster.batch.delete_namespaced_job("forever", "default", propagation_policy="Background")
    until(lambda: not cluster.pods("forever"), "the pods of the deleted Job to be gone")
    until(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
          "the pod's process to end")


def test_pod_processes_die_with_the_cluster(simhost: SimHost, tmp_path: Path, app: Path) -> None:
    cluster = one_cluster(simhost, tmp_path, app)
    cluster.job("orphan", ["sh", "-c", "sleep 300 & sleep 300"])
    until(lambda: any(p["status"]["phase"] == "Running" for p in cluster.pods("orphan")), "the pod to run")
    assert any("sleep" in " ".join(argv) for argv in simhost.leftover_processes().values())
    deleted = run(simhost, "kind", "delete", "cluster", "--name", "solo", "--kubeconfig", str(cluster.kubeconfig))
    assert deleted.returncode == 0, deleted.stderr
    simhost.assert_clean()


def test_pods_on_a_virtual_node_run_in_the_provider(simhost: SimHost, tmp_path: Path, app: Path) -> None:
    consumer, provider = peer_pair(simhost, tmp_path, app)
    pod = {"nodeSelector": {"liqo.io/type": "virtual-node"}, "tolerations": [VIRTUAL_TOLERATION]}
    consumer.job("away", ["sh", "-c", "echo on $NODE as $HOSTNAME; echo away > /app/away.txt"], pod=pod)
    consumer.wait_job("away", "Complete")
    [local] = consumer.pods("away")
    assert local["spec"]["nodeName"] == "rome" and local["status"]["phase"] == "Succeeded"
    remote = provider.api.sanitize_for_serialization(provider.core.list_namespaced_pod("default-milan"))["items"]
    assert [p["spec"]["nodeName"] for p in remote] == ["prov-control-plane"]
    name = local["metadata"]["name"]
    assert consumer.core.read_namespaced_pod_log(name, "default") == f"on prov-control-plane as {name}\n"
    assert (app / "away.txt").read_text() == "away\n"
    consumer.batch.delete_namespaced_job("away", "default", propagation_policy="Foreground")
    until(lambda: not provider.core.list_namespaced_pod("default-milan").items, "the reflected pod to be deleted")


def test_a_lost_provider_node_fails_its_pods_and_takes_the_virtual_node_down(
        simhost: SimHost, tmp_path: Path, app: Path) -> None:
    consumer, _ = peer_pair(simhost, tmp_path, app, "pod/lost-*:node-lost=0.2")
    pod = {"nodeSelector": {"liqo.io/type": "virtual-node"}, "tolerations": [VIRTUAL_TOLERATION]}
    consumer.job("lost", ["sleep", "60"], pod=pod)
    job = consumer.wait_job("lost", "Failed")
    assert job["status"]["failed"] == 1
    [lost] = consumer.pods("lost")
    assert lost["status"]["phase"] == "Failed" and lost["status"]["reason"] == "NodeLost"
    assert any(c["type"] == "DisruptionTarget" for c in lost["status"]["conditions"])
    node = consumer.api.sanitize_for_serialization(consumer.core.read_node("rome"))
    assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == ["Unknown"]
    assert {t["key"] for t in node["spec"]["taints"]} >= {"node.kubernetes.io/unreachable"}
    consumer.job("after", ["true"], pod={"tolerations": [VIRTUAL_TOLERATION]})  # goes to the node left
    consumer.wait_job("after", "Complete")
    assert [p["spec"]["nodeName"] for p in consumer.pods("after")] == ["cons-control-plane"]


def test_pods_spread_over_the_nodes_and_watch_resumes_from_a_resource_version(
        simhost: SimHost, tmp_path: Path, app: Path) -> None:
    consumer, _ = peer_pair(simhost, tmp_path, app)
    since = consumer.api.sanitize_for_serialization(consumer.batch.list_namespaced_job("default"))["metadata"][
        "resourceVersion"]
    spread = {"tolerations": [VIRTUAL_TOLERATION], "topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "spread"}}}]}
    consumer.job("spread", ["sh", "-c", "echo $NODE"], parallelism=4, completions=4, pod=spread,
                 labels={"app": "spread"})
    job = consumer.wait_job("spread", "Complete")
    assert job["status"]["succeeded"] == 4
    nodes = sorted(p["spec"]["nodeName"] for p in consumer.pods("spread"))
    assert nodes == ["cons-control-plane", "cons-control-plane", "rome", "rome"]
    types = []
    stream = new_watch()
    for event in stream.stream(consumer.batch.list_namespaced_job, "default", resource_version=since,
                               timeout_seconds=2):
        types.append(event["type"])
        if len(types) >= 3:
            stream.stop()
    assert types[0] == "ADDED" and set(types[1:]) == {"MODIFIED"}
