"""The simulated kubelet: runs the containers of the pods bound to this node as local processes.

A container's command runs with the pod's environment in its own process group, in the node container's
session, so that removing the node container kills it (as the runtime kills a container's pid namespace).
Volume paths are rewritten: a ``hostPath`` volume maps through the node's mounts
(kind's extraMounts, e.g. the shared directory at /app) to a path on this host, an ``emptyDir`` to a
directory of the pod; the container's command, arguments, environment values and working directory get,
wherever they name the mount path, a link to that host path (under the node's state directory, a path
without spaces or quotes, so that shell scripts keep their words). stdout and stderr go to the container's log file
(``pods/log``). Faults come from KSI_SIM_FAULTS (``pod/GLOB[@HOST]:MODE``, see common.PodFault). Before
its containers start, their images must be in the node's store or be pulled (:mod:`tests.simhost.pulls`).
Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.simhost import pulls
from tests.simhost.apimodel import NODES, PODS, ApiError, Obj, glob_match, not_modelled, rfc3339
from tests.simhost.common import PodFault, pod_faults
from tests.simhost.registry import ImageStore

if TYPE_CHECKING:
    from tests.simhost.apistore import Store

PR_SET_PDEATHSIG = 1
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TERMINAL = ("Succeeded", "Failed")
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the child before exec: SIGKILL when the kubelet thread that started it goes away."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def pod_ip() -> str:
    """Return a fresh pod address: one of 127.0.0.0/8, where each pod's listening processes can bind."""
    return f"127.{random.randint(16, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


def container_id() -> str:
    """Return a containerd container ID as the kubelet reports it."""
    return "containerd://" + secrets.token_hex(32)


@dataclass
class Running:
    """A pod this kubelet started: its container processes and what happened to them."""

    namespace: str
    name: str
    uid: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopping: float | None = None  # grace period asked for by a deletion
    lost: bool = False
    oom: set[str] = field(default_factory=set)


def rewrite(text: str, mapping: list[tuple[str, str]]) -> str:
    """Replace each mount path (longest first) by its host path where it stands as a path in ``text``."""
    for inside, outside in mapping:
        pattern = r"(?<![\w.\-/])" + re.escape(inside.rstrip("/") or "/") + r"(?=/|$|[^\w.\-])"
        text = re.sub(pattern, outside.replace("\\", "\\\\"), text)
    return text


class Kubelet:
    """Runs the pods that the scheduler binds to ``node_name``; reports their status through the store."""

    def __init__(self, store: Store, node_name: str, cdir: Path, mounts: list[dict[str, Any]],
                 log: Any = None) -> None:
        self.store = store
        self.node_name = node_name
        self.dir = cdir / "pods"
        self.mounts = sorted(mounts, key=lambda m: -len(m["container_path"]))
        self.running: dict[str, Running] = {}  # pod uid -> run
        self.lost = False
        self.log = log
        self.faults: list[PodFault] = pod_faults()
        self.images = ImageStore(cdir)  # the node's containerd (k8s.io namespace)

    # -- helpers ---------------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        """Write one line to the node log."""
        if self.log is not None:
            self.log(f"kubelet: {line}")

    def pod_dir(self, pod: Obj) -> Path:
        """Return the directory of a pod's logs and emptyDir volumes."""
        meta = pod["metadata"]
        return self.dir / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"

    def log_path(self, pod: Obj, container: str) -> Path:
        """Return the log file of one container of a pod."""
        return self.pod_dir(pod) / f"{container}.log"

    def fault(self, name: str) -> PodFault | None:
        """Return the (last) fault KSI_SIM_FAULTS injects into the pod ``name`` on this host."""
        found = None
        for candidate in self.faults:
            if glob_match(name, candidate.pattern):
                found = candidate
        return found

    def host_path(self, node_path: str) -> str:
        """Return where a path of the node container lives on this host (through the node's mounts)."""
        for mount in self.mounts:
            inside = mount["container_path"].rstrip("/")
            if node_path == inside or node_path.startswith(inside + "/"):
                return str(mount["host_path"]) + node_path[len(inside):]
        return str(self.dir.parent / "rootfs") + node_path  # the node container's own filesystem

    def volume_mapping(self, pod: Obj, container: Obj) -> list[tuple[str, str]]:
        """Return (mount path in the container, host path) for the container's volume mounts."""
        volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
        mapping: list[tuple[str, str]] = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name"))
            if volume is None:
                raise RuntimeError(f"volume {mount.get('name')!r} not found")
            if "hostPath" in volume:
                path = self.host_path(volume["hostPath"]["path"])
                kind = volume["hostPath"].get("type") or ""
                if kind in ("Directory", "DirectoryOrCreate") and not os.path.isdir(path):
                    if kind == "Directory":
                        raise RuntimeError(f"hostPath type check failed: {volume['hostPath']['path']} is not a "
                                           "directory")
                    os.makedirs(path, exist_ok=True)
            elif "emptyDir" in volume:
                path = str(self.pod_dir(pod) / "volumes" / volume["name"])
                os.makedirs(path, exist_ok=True)
            else:
                raise RuntimeError(f"volume {volume['name']!r}: only hostPath and emptyDir volumes are simulated")
            if mount.get("subPath"):
                path = os.path.join(path, mount["subPath"])
            # The command sees the volume through a link whose path has no spaces or quotes, so a shell
            # script naming the mount path keeps its words when the path is rewritten.
            link = self.pod_dir(pod) / "mounts" / str(len(mapping))
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(path)
            mapping.append((mount["mountPath"], str(link)))
        return sorted(mapping, key=lambda m: -len(m[0]))

    def environment(self, pod: Obj, container: Obj, mapping: list[tuple[str, str]]) -> dict[str, str]:
        """Return a container's environment: the image's PATH, the pod's names and the container's env."""
        meta, status = pod["metadata"], pod.get("status") or {}
        env = {"PATH": os.environ.get("PATH") or IMAGE_PATH, "HOSTNAME": pod["spec"].get("hostname") or meta["name"],
               "HOME": "/root", "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
        root = os.environ.get("KSI_SIM_ROOT")
        if root:  # how the test suite finds what a simulated host left running
            env["KSI_SIM_ROOT"] = root
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "metadata.uid": meta["uid"], "spec.nodeName": self.node_name,
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName") or "default",
                  "status.podIP": status.get("podIP", ""), "status.hostIP": status.get("hostIP", "")}
        for item in container.get("env") or []:
            name = item.get("name")
            if "valueFrom" not in item:
                env[name] = rewrite(str(item.get("value", "")), mapping)
                continue
            ref = item["valueFrom"].get("fieldRef")
            if ref is None:
                raise RuntimeError(f"env {name}: only valueFrom.fieldRef is simulated")
            path = ref.get("fieldPath", "")
            annotation = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
            if annotation:
                env[name] = str((meta.get(annotation[1]) or {}).get(annotation[2], ""))
            elif path in fields:
                env[name] = fields[path]
            else:
                raise RuntimeError(f"env {name}: fieldRef {path!r} is not simulated")
        return env

    # -- status ----------------------------------------------------------------------------------------

    def set_status(self, pod: Obj, change: Any) -> None:
        """Apply ``change(status)`` to the stored pod's status (if the pod is still the same one)."""
        meta = pod["metadata"]

        def apply(obj: Obj) -> None:
            if obj["metadata"]["uid"] == meta["uid"]:
                change(obj.setdefault("status", {}))

        with self.store.lock:
            self.store.update(PODS, meta["namespace"], meta["name"], apply)

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, pod: Obj) -> None:
        """Start a pod just bound here: ContainerCreating, then its containers in a thread of their own."""
        uid = pod["metadata"]["uid"]
        if uid in self.running:
            return
        run = Running(pod["metadata"]["namespace"], pod["metadata"]["name"], uid)
        self.running[uid] = run
        now = rfc3339()
        ip = pod_ip()

        def creating(status: Obj) -> None:
            status.update(hostIP="172.18.0.2", hostIPs=[{"ip": "172.18.0.2"}], podIP=ip, podIPs=[{"ip": ip}],
                          startTime=now)
            set_condition(status, "PodReadyToStartContainers", "True", now)
            set_condition(status, "Initialized", "True", now)
            set_condition(status, "Ready", "False", now, "ContainersNotReady",
                          "containers with unready status: [" + " ".join(
                              c["name"] for c in pod["spec"]["containers"]) + "]")
            set_condition(status, "ContainersReady", "False", now, "ContainersNotReady",
                          status["conditions"][-1]["message"])
            status["containerStatuses"] = [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                 "restartCount": 0, "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
                for c in pod["spec"]["containers"]]

        self.set_status(pod, creating)
        stored = self.store.get(PODS, run.namespace, run.name) or pod
        threading.Thread(target=self._run, args=(stored, run), daemon=True,
                         name=f"pod {run.namespace}/{run.name}").start()

    def _run(self, pod: Obj, run: Running) -> None:
        """Run the pod's containers to their end and report every transition (the pod's own thread)."""
        name = pod["metadata"]["name"]
        fault = self.fault(name)
        if fault and fault.mode == "slow":
            time.sleep(fault.value)
        self.pod_dir(pod).mkdir(parents=True, exist_ok=True)
        missing = pulls.unavailable(pod, self.images)
        if missing:  # Pending with ErrImagePull, for good (no back-off in the simulation)
            self.set_status(pod, lambda status: pulls.waiting_status(status, missing))
            self.say(f"pod {run.namespace}/{name}: " + "; ".join(f"{c}: {r}: {m}" for c, (r, m) in missing.items()))
            self.running.pop(run.uid, None)
            return
        started = rfc3339()
        failures: dict[str, tuple[int, str, str]] = {}
        for container in pod["spec"]["containers"]:
            cname = container["name"]
            argv: list[str] = []
            log = open(self.log_path(pod, cname), "ab")  # noqa: SIM115 - owned by the process below
            try:
                mapping = self.volume_mapping(pod, container)
                argv = [rewrite(str(a), mapping) for a in (container.get("command") or []) + (
                    container.get("args") or [])]
                if not container.get("command"):
                    raise RuntimeError("the simulated kubelet does not know the image's entrypoint: give the "
                                       "container a command")
                workdir = rewrite(container.get("workingDir") or "", mapping)
                if not workdir:
                    workdir = str(self.pod_dir(pod) / "root")
                    os.makedirs(workdir, exist_ok=True)
                env = self.environment(pod, container, mapping)
                if run.stopping is not None or run.lost:
                    break
                run.processes[cname] = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                    process_group=0, preexec_fn=_die_with_parent, close_fds=True)
            except (OSError, RuntimeError) as exc:
                message = str(exc)
                if isinstance(exc, FileNotFoundError):
                    message = (f"failed to create containerd task: failed to create shim task: OCI runtime create "
                               f"failed: runc create failed: unable to start container process: exec: "
                               f"\"{argv[0] if argv else ''}\": executable file not found in $PATH")
                failures[cname] = (128, "StartError", message)
                self.say(f"pod {run.namespace}/{name} container {cname} did not start: {message}")
            finally:
                log.close()
        self.set_status(pod, lambda status: running_status(status, pod, run, started, failures))
        self.say(f"pod {run.namespace}/{name} running ({', '.join(run.processes) or 'no container started'})")
        if fault and fault.mode == "oom" and not fault.value:  # killed as it starts, however short it runs
            self._inject(run, "oom", everyone=True)
        elif fault and fault.mode in ("oom", "node-lost") and run.processes:
            threading.Timer(fault.value, self._inject, args=(run, fault.mode)).start()
        results: dict[str, tuple[int, str, str, str]] = {}
        for cname, process in run.processes.items():
            code = process.wait()
            code = 128 - code if code < 0 else code  # killed by a signal: what containerd reports
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what it left behind dies with the container
            reason = "Completed" if code == 0 else "Error"
            if cname in run.oom:
                code, reason = 137, "OOMKilled"
            elif fault and fault.mode == "exit" and run.stopping is None:
                code, reason = int(fault.value), "Error"
            results[cname] = (code, reason, "", rfc3339())
        for cname, (code, reason, message) in failures.items():
            results[cname] = (code, reason, message, rfc3339())
        if run.lost:
            return  # node_lost() wrote what a lost node's pods look like
        self.set_status(pod, lambda status: finished_status(status, pod, results, started))
        self.say(f"pod {run.namespace}/{name} finished: " + ", ".join(
            f"{c} exit {r[0]} ({r[1]})" for c, r in results.items()))
        if run.stopping is not None:
            with self.store.lock:
                current = self.store.get(PODS, run.namespace, name)
                if current is not None and current["metadata"]["uid"] == run.uid:
                    self.store.remove(PODS, run.namespace, name)
        self.running.pop(run.uid, None)

    def _inject(self, run: Running, mode: str, everyone: bool = False) -> None:
        """Fire an ``oom`` or ``node-lost`` fault: kill the containers still running (``everyone``: all), or
        lose the whole node."""
        if mode == "node-lost":
            self.node_lost()
            return
        for cname, process in run.processes.items():
            if everyone or process.poll() is None:
                run.oom.add(cname)
                self.say(f"pod {run.namespace}/{run.name} container {cname} OOM-killed (KSI_SIM_FAULTS)")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    def stop(self, pod: Obj, grace: float) -> bool:
        """Stop a pod being deleted: SIGTERM, SIGKILL after ``grace`` s; return False if it runs nowhere here."""
        run = self.running.get(pod["metadata"]["uid"])
        if run is None:
            return False
        run.stopping = grace

        def terminate() -> None:
            for process in list(run.processes.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            deadline = time.monotonic() + grace
            for process in list(run.processes.values()):
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)

        threading.Thread(target=terminate, daemon=True).start()
        return True

    def node_lost(self) -> None:
        """This node stops: NotReady and tainted; every pod on it is lost (processes killed, phase Failed)."""
        self.lost = True
        now = rfc3339()
        self.say("node lost (KSI_SIM_FAULTS): every pod on it fails with reason NodeLost")
        for run in list(self.running.values()):
            run.lost = True
            for process in run.processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        with self.store.lock:
            self.store.update(NODES, None, self.node_name, lambda node: mark_node_lost(node, now))
            for pod in self.store.select(PODS, None):
                if pod["spec"].get("nodeName") == self.node_name and pod.get("status", {}).get("phase") \
                        not in TERMINAL:
                    self.store.update(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"],
                                      lambda obj: lost_status(obj, self.node_name, now))
        self.running.clear()

    def remove_files(self, pod: Obj) -> None:
        """Remove a deleted pod's logs and volumes."""
        shutil.rmtree(self.pod_dir(pod), ignore_errors=True)


# ------------------------------------------------------------------------------------------- statuses


def set_condition(status: Obj, kind: str, value: str, now: str, reason: str = "", message: str = "") -> None:
    """Set one pod condition (keeping its transition time when its status does not change)."""
    conditions = status.setdefault("conditions", [])
    found = next((c for c in conditions if c["type"] == kind), None)
    entry: Obj = {"type": kind, "status": value, "lastProbeTime": None, "lastTransitionTime": now}
    if reason:
        entry["reason"] = reason
    if message:
        entry["message"] = message
    if found is None:
        conditions.append(entry)
    else:
        if found["status"] == value:
            entry["lastTransitionTime"] = found["lastTransitionTime"]
        found.clear()
        found.update(entry)


def running_status(status: Obj, pod: Obj, run: Running, started: str,
                   failures: dict[str, tuple[int, str, str]]) -> None:
    """Write the status of a pod whose containers started (those in ``failures`` did not)."""
    if not run.processes:
        return
    status["phase"] = "Running"
    ready = not failures
    set_condition(status, "Ready", "True" if ready else "False", started,
                  "" if ready else "ContainersNotReady")
    set_condition(status, "ContainersReady", "True" if ready else "False", started,
                  "" if ready else "ContainersNotReady")
    for entry in status.get("containerStatuses", []):
        if entry["name"] in run.processes:
            entry.update(ready=True, started=True, containerID=container_id(),
                         state={"running": {"startedAt": started}})
    for cond in status["conditions"]:
        if cond["status"] == "True":
            cond.pop("message", None)


def finished_status(status: Obj, pod: Obj, results: dict[str, tuple[int, str, str, str]], started: str) -> None:
    """Write the terminal status of a pod whose containers all ended."""
    succeeded = all(r[0] == 0 for r in results.values())
    now = rfc3339()
    status["phase"] = "Succeeded" if succeeded else "Failed"
    reason = "PodCompleted" if succeeded else "PodFailed"
    set_condition(status, "Ready", "False", now, reason)
    set_condition(status, "ContainersReady", "False", now, reason)
    set_condition(status, "PodReadyToStartContainers", "False", now)
    for entry in status.get("containerStatuses", []):
        code, why, message, finished = results.get(entry["name"], (137, "Error", "", now))
        terminated: Obj = {"exitCode": code, "reason": why, "startedAt": started, "finishedAt": finished,
                           "containerID": entry.get("containerID") or container_id()}
        if message:
            terminated["message"] = message
        entry.update(ready=False, started=False, state={"terminated": terminated})
        entry.setdefault("containerID", terminated["containerID"])


def lost_status(pod: Obj, node: str, now: str) -> None:
    """Write what a pod on a lost node looks like: Failed, reason NodeLost, a DisruptionTarget condition."""
    status = pod.setdefault("status", {})
    name = pod["metadata"]["name"]
    status.update(phase="Failed", reason="NodeLost",
                  message=f"Node {node} which was running pod {name} is unresponsive")
    set_condition(status, "DisruptionTarget", "True", now, "DeletionByTaintManager",
                  "Taint manager: deleting due to NoExecute taint")
    set_condition(status, "Ready", "False", now, "PodFailed")
    set_condition(status, "ContainersReady", "False", now, "PodFailed")
    for entry in status.get("containerStatuses", []):
        state = entry.get("state") or {}
        started = (state.get("running") or {}).get("startedAt")
        terminated: Obj = {"exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": now,
                           "message": "The container could not be located when the pod was terminated"}
        if started:
            terminated["startedAt"] = started
        entry.update(ready=False, started=False, state={"terminated": terminated})


def mark_node_lost(node: Obj, now: str) -> None:
    """Make a Node NotReady (Unknown: its kubelet stopped posting status) and taint it unreachable."""
    for cond in node.get("status", {}).get("conditions", []):
        cond.update(status="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.",
                    lastTransitionTime=now)
    taints = node.setdefault("spec", {}).setdefault("taints", [])
    for effect in ("NoSchedule", "NoExecute"):
        taint = {"key": "node.kubernetes.io/unreachable", "effect": effect}
        if effect == "NoExecute":
            taint["timeAdded"] = now
        if not any(t.get("key") == taint["key"] and t.get("effect") == effect for t in taints):
            taints.append(taint)


def require_runnable(pod: Obj) -> None:
    """Refuse (501) pod features the simulated kubelet would otherwise silently ignore."""
    spec = pod.get("spec") or {}
    for key in ("initContainers", "ephemeralContainers", "hostNetwork", "hostPID", "hostIPC", "affinity",
                "resourceClaims", "overhead", "os", "readinessGates", "schedulingGates"):
        if spec.get(key):
            raise not_modelled(f"pods with spec.{key}")
    if spec.get("restartPolicy", "Always") != "Never":
        raise not_modelled(f"restartPolicy {spec.get('restartPolicy', 'Always')!r} (containers that restart); "
                           "use restartPolicy Never")
    for container in spec.get("containers") or []:
        for key in ("envFrom", "lifecycle", "livenessProbe", "readinessProbe", "startupProbe", "stdin", "tty",
                    "volumeDevices", "restartPolicy"):
            if container.get(key):
                raise not_modelled(f"containers with {key}")
        for item in container.get("env") or []:
            source = item.get("valueFrom")
            if source is not None and set(source) != {"fieldRef"}:
                raise not_modelled(f"env valueFrom {sorted(source)} (only fieldRef)")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= {"hostPath", "emptyDir"}:
            raise not_modelled(f"volume {volume.get('name')!r} of type {sorted(kinds)} (only hostPath, emptyDir)")


__all__ = ["ApiError", "Kubelet", "require_runnable"]
