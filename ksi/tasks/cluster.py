"""The cluster executor: each attempt a Kubernetes Job, followed through watches of Jobs, pods and nodes.

Three watch threads (Jobs and pods of the experiment by label, and the nodes) feed one inbox that the main
thread drains in :meth:`ClusterExecutor.wait`; nothing polls per task. A small pool of workers creates the
Jobs and works out how each attempt ended; the log of every running container is followed
(:mod:`ksi.tasks.podlog`); the runner's recorders collect that log and delete the Job once the attempt's
log and result are written. ksi places every pod on a node itself (the leader's node or a Liqo virtual
node) so that tasks spread over all of them within what each node can hold.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ksi import log
from ksi.errors import KsiError, UsageError
from ksi.tasks import clusterio, jobs, kube, podlog
from ksi.tasks import results as res
from ksi.tasks.jobs import NodeInfo, PodEnd
from ksi.tasks.runner import Attempt, Ended, task_environment
from ksi.tasks.spec import Spec

_log = log.get(__name__)
NAMESPACE = "default"
NODES = "/api/v1/nodes"
ALL_PODS = "/api/v1/pods"
WORKERS = 8
POOL = 64  # connections kept for reuse (more are opened when needed, and closed after use)
FOLLOW_AFTER = 1.0  # seconds a container runs before its log is streamed (a shorter one's is fetched once)
JOB_END_GRACE = 2.0  # seconds a finished Job waits for its pod's last event before ksi looks the pod up
LEFTOVER_TIMEOUT = 30.0  # seconds to wait for the Jobs a killed earlier run left behind to go away
CLOSE_TIMEOUT = 20.0  # seconds close() waits for Job deletions still in flight
_DRAIN = 1000  # reports applied at most per wait(), so that the runner gets back to starting attempts
_CREATE_RETRY = 30.0  # seconds a create retries while an earlier attempt's Job (same name) is still going


@dataclass
class Live:
    """An attempt whose Job ksi created (or is creating), and what the watches told about it."""

    attempt: Attempt
    node: str
    pod: str | None = None
    pod_node: str | None = None
    started: float | None = None
    job_seen: bool = False
    job_ended: float | None = None  # monotonic time the Job reached Complete or Failed
    deadline: bool = False
    finishing: bool = False
    waiting_said: bool = False  # the scheduler's reason to keep the pod Pending was logged
    running_since: float | None = None  # monotonic time the watch first showed its container running
    followed: bool = False  # its log is being streamed


@dataclass
class NodeState:
    """A node tasks may run on, what it holds for ksi, and the attempts placed there."""

    info: NodeInfo
    others: dict[str, Decimal] = field(default_factory=dict)  # requests of pods that are not this experiment's
    slots: int = 0
    placed: set[str] = field(default_factory=set)


class ClusterExecutor:
    """Runs attempts as Jobs in the cluster of ``api``; see the module docstring."""

    def __init__(self, spec: Spec, api: kube.Api, partial_dir: Path, namespace: str = NAMESPACE) -> None:
        self.spec = spec
        self.api = api
        self.partial_dir = partial_dir
        self.namespace = namespace
        self.jobs_path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
        self.pods_path = f"/api/v1/namespaces/{namespace}/pods"
        self._wanted = jobs.requests_of(dict(spec.resources))
        self._nodes: dict[str, NodeState] = {}
        self._live: dict[str, Live] = {}
        self._inbox: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self.stopping = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="tasks-api")
        self._deleting: dict[str, concurrent.futures.Future[None]] = {}
        self._followers: dict[str, podlog.Follower] = {}  # the log streams of running attempts, by log file
        self._turn = 0

    @classmethod
    def connect(cls, spec: Spec, environ: Mapping[str, str], partial_dir: Path) -> ClusterExecutor:
        """Connect with the run's KUBECONFIG (first file) and context (K8S_CLUSTER_NAME, else current)."""
        paths = [p for p in environ.get("KUBECONFIG", "").split(":") if p]
        if not paths:
            raise UsageError("KUBECONFIG is not set", step="tasks", fix="run inside a ksi workload, or add --local")
        connections = POOL  # workers, recorders, watches, the runner's thread, log streams (reused when done)
        return cls(spec, kube.connect(Path(paths[0]), environ.get("K8S_CLUSTER_NAME"), connections), partial_dir)

    # -- before the first attempt ----------------------------------------------------------------------

    def prepare(self) -> tuple[int, str]:
        """Remove Jobs an earlier (killed) run left, read the nodes, start the watches; return the capacity."""
        clusterio.remove_leftovers(self, LEFTOVER_TIMEOUT)
        nodes = self.api.json("GET", NODES).get("items") or []
        others = jobs.held_by_others(self.api.json("GET", ALL_PODS).get("items") or [], self.spec.name)
        for item in nodes:
            info = jobs.node_info(item)
            self._nodes[info.name] = NodeState(info, others.get(info.name, {}))
            self._nodes[info.name].slots = jobs.slots(info, self._wanted, self._nodes[info.name].others)
        total = sum(n.slots for n in self._nodes.values())
        if total == 0:
            lines = "; ".join(f"{n.info.name}: {n.info.why or 'too small'}" for n in self._nodes.values())
            raise KsiError(f"no node can hold a task requesting {jobs.describe_requests(dict(self.spec.resources))}"
                           f" ({lines or 'the cluster has no nodes'})", step="tasks",
                           fix="lower the SPEC's resources, or run on bigger (or more) nodes")
        self._follow()
        held = ", ".join(f"{n.info.name} {n.slots}" for n in self._nodes.values() if n.slots)
        requests = jobs.describe_requests(dict(self.spec.resources))
        return total, f"what {len(self._nodes)} node(s) hold with {requests}: {held}"

    def _follow(self) -> None:
        """Start the three watches and wait until each has listed what exists."""
        selector = jobs.selector(self.spec.name)
        followers = [
            kube.Follower(self.api, "jobs", self.jobs_path, selector, self._deliver, self.stopping),
            kube.Follower(self.api, "pods", self.pods_path, selector, self._deliver, self.stopping),
            kube.Follower(self.api, "nodes", NODES, "", self._deliver, self.stopping)]
        for follower in followers:
            follower.start()
        for follower in followers:
            if not follower.synced.wait(60):
                raise KsiError(f"could not list the cluster's {follower.kind} within 60 s", step="tasks",
                               fix="check the cluster's API server (kubectl get --raw /readyz)")

    def _deliver(self, kind: str, event: str, obj: Any) -> None:
        self._inbox.put((kind, event, obj))

    # -- the runner's interface --------------------------------------------------------------------------

    def free_slots(self) -> int:
        """Return how many more attempts fit on the usable nodes now."""
        return sum(max(n.slots - len(n.placed), 0) for n in self._nodes.values() if n.info.usable)

    def _place(self) -> NodeState:
        """Return the usable node with the largest share of free slots (ties taken in turn)."""
        usable = [n for n in self._nodes.values() if n.info.usable and n.slots > len(n.placed)]
        self._turn += 1
        order = {n.info.name: (i - self._turn) % len(usable) for i, n in enumerate(usable)}
        return max(usable, key=lambda n: ((n.slots - len(n.placed)) / n.slots, -order[n.info.name]))

    def start(self, attempt: Attempt) -> None:
        """Place the attempt on a node and create its Job (in a worker)."""
        node = self._place()
        live = Live(attempt, node.info.name)
        node.placed.add(attempt.task.name)
        self._live[attempt.task.name] = live
        self._pool.submit(self._create, live)

    def wait(self, timeout: float) -> list[Ended]:
        """Apply what the watches and workers reported; return the attempts that ended.

        Waits up to ``timeout`` seconds for the first report, then takes only what is already queued: an
        ended attempt frees its slot at once, however busy the watches are.
        """
        ended: list[Ended] = []
        deadline = time.monotonic() + timeout
        for _ in range(_DRAIN):
            try:
                if ended:
                    kind, event, obj = self._inbox.get_nowait()
                else:
                    kind, event, obj = self._inbox.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if kind == "ended":
                ended.append(obj)
            else:
                self._apply(kind, event, obj)
        self._look_after()
        return ended

    def forget(self, ended: Ended) -> None:
        """Free the attempt's slot; a new attempt of the task waits until :meth:`discard` deleted this Job."""
        name = ended.attempt.task.name
        live = self._live.pop(name, None)
        if live is not None and live.node in self._nodes:
            self._nodes[live.node].placed.discard(name)
        self._deleting[name] = concurrent.futures.Future()

    def collect_log(self, ended: Ended) -> tuple[bytes | Path | None, str]:
        """Return the attempt's complete log: followed while it ran, else fetched now (a recorder thread)."""
        follower = self._followers.pop(self._log_file(ended.attempt).name, None)
        if ended.ref is None:
            return None, ""
        path = f"{self.pods_path}/{ended.ref}/log"

        def fetch(target: Path) -> tuple[Path | None, str]:
            return podlog.fetch(self.api, path, jobs.CONTAINER, target)

        if follower is None or follower.pod != ended.ref:  # it ended before the watch saw it run
            return fetch(self._log_file(ended.attempt))
        return follower.collect(ended.end, fetch, wait=ended.reason != res.STOPPED)

    def _log_file(self, attempt: Attempt) -> Path:
        return self.partial_dir / f"{attempt.task.name}.{attempt.number}.log"

    def _follow_log(self, live: Live) -> None:
        """Start following the log of an attempt whose container runs."""
        assert live.pod is not None
        follower = podlog.Follower(self.api, f"{self.pods_path}/{live.pod}/log", jobs.CONTAINER,
                                   self._log_file(live.attempt))
        follower.pod = live.pod
        self._followers[follower.target.name] = follower
        follower.start()

    def discard(self, ended: Ended) -> None:
        """Have a worker delete the attempt's Job (its pod goes with it); its log and result are written."""
        self._pool.submit(self._delete, ended.attempt.task.name)

    def _delete(self, name: str) -> None:
        try:
            clusterio.delete(self, name)
        finally:
            deleted = self._deleting.get(name)
            if deleted is not None and not deleted.done():
                deleted.set_result(None)

    def interrupt(self, budget: float) -> list[Ended]:
        """Report every running attempt ``Interrupted`` (its log and Job are the recorders' to handle)."""
        deadline = time.monotonic() + budget
        waiting = set(self._live)
        for live in self._live.values():
            if not live.finishing:
                self._finish(live, PodEnd(res.STOPPED, None, "stopped by a signal to ksi", live.started, None))
        ended: list[Ended] = []
        while waiting and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                kind, _, obj = self._inbox.get(timeout=max(min(deadline - time.monotonic(), 0.25), 0))
                if kind == "ended" and obj.attempt.task.name in waiting:
                    waiting.discard(obj.attempt.task.name)
                    ended.append(obj)
        return ended

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the watches and wait (at most ``timeout`` seconds) for the Job deletions still in flight."""
        self.stopping.set()
        for follower in list(self._followers.values()):
            follower.stop()
        pending = [f for f in self._deleting.values() if not f.done()]
        concurrent.futures.wait(pending, timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()

    # -- what the watches report -------------------------------------------------------------------------

    def _mine(self, obj: Mapping[str, Any]) -> Live | None:
        """Return the live attempt an object belongs to (None for other attempts' objects)."""
        labels = kube.labels(obj)
        live = self._live.get(labels.get(jobs.TASK_LABEL, ""))
        if live is None or live.finishing or labels.get(jobs.ATTEMPT_LABEL) != str(live.attempt.number):
            return None
        return live

    def _apply(self, kind: str, event: str, obj: Any) -> None:
        if event == "SYNC":
            self._sync(kind, obj)
        elif kind == "nodes":
            self._node_event(event, obj)
        elif kind == "pods":
            self._pod_event(event, obj)
        elif kind == "jobs":
            self._job_event(event, obj)

    def _sync(self, kind: str, items: list[Any]) -> None:
        """Apply a (re)list: every object as an update, and whatever is gone as deleted."""
        present = {kube.name(item) for item in items}
        for item in items:
            self._apply(kind, "MODIFIED", item)
        if kind == "nodes":
            for name in [n for n in self._nodes if n not in present]:
                self._node_gone(name, "was removed from the cluster")
            return
        for live in list(self._live.values()):
            seen = live.pod if kind == "pods" else live.attempt.task.name if live.job_seen else None
            if seen is not None and seen not in present and not live.finishing:
                self._vanished(live, f"its {kind[:-1]} was deleted")

    def _node_event(self, event: str, obj: Any) -> None:
        info = jobs.node_info(obj)
        if event == "DELETED":
            self._node_gone(info.name, "was removed from the cluster")
            return
        state = self._nodes.setdefault(info.name, NodeState(info))
        was_usable = state.info.usable
        state.info = info
        state.slots = jobs.slots(info, self._wanted, state.others)
        if was_usable and not info.usable:
            _log.info("tasks: node %s is %s; no new tasks go there", info.name, info.why)
        if info.ready:
            return
        for live in list(self._live.values()):
            if (live.pod_node or live.node) == info.name and not live.finishing:
                self._finish(live, PodEnd(res.NODE_LOST, None, f"node {info.name} is {info.why}", live.started,
                                          None))

    def _node_gone(self, name: str, why: str) -> None:
        self._nodes.pop(name, None)
        for live in list(self._live.values()):
            if (live.pod_node or live.node) == name and not live.finishing:
                self._finish(live, PodEnd(res.NODE_LOST, None, f"node {name} {why}", live.started, None))

    def _pod_event(self, event: str, pod: Any) -> None:
        live = self._mine(pod)
        if live is None:
            return
        live.pod = kube.name(pod)
        live.pod_node = (pod.get("spec") or {}).get("nodeName") or live.pod_node
        live.started = live.started or jobs.started_at(pod)
        if live.started is not None and live.running_since is None:
            live.running_since = time.monotonic()
        end = jobs.pod_end(pod)
        if end is None and event != "DELETED":
            stuck = jobs.cannot_start(pod)
            if stuck is not None:
                end = PodEnd(res.ERROR, None, stuck, None, None)
            elif not live.waiting_said and (why := jobs.unschedulable(pod)) is not None:
                live.waiting_said = True
                _log.info("tasks: %s waits for room on %s: %s", live.attempt.task.name, live.node, why)
        if end is None and event == "DELETED":
            pushed = jobs.disruption(pod)
            if pushed is None:
                self._vanished(live, "its pod was deleted")
                return
            end = PodEnd(pushed[0], None, pushed[1], live.started, None)
        if end is not None:
            self._finish(live, end)

    def _job_event(self, event: str, job: Any) -> None:
        live = self._mine(job)
        if live is None:
            return
        live.job_seen = True
        if event == "DELETED":
            self._vanished(live, "its Job was deleted by someone else")
            return
        if jobs.deadline_exceeded(job):
            live.deadline = True
            self._finish(live, PodEnd(res.DEADLINE, None, f"ran longer than the timeout of {self.spec.timeout} s",
                                      live.started, None))
            return
        conditions = (job.get("status") or {}).get("conditions") or []
        if live.job_ended is None and any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                                          for c in conditions):
            live.job_ended = time.monotonic()

    def _vanished(self, live: Live, why: str) -> None:
        """An attempt's pod or Job disappeared before it ended: NodeLost when its node is gone, else Evicted."""
        node = live.pod_node or live.node
        state = self._nodes.get(node)
        if state is None or not state.info.ready:
            self._finish(live, PodEnd(res.NODE_LOST, None, f"{why}; node {node} is gone", live.started, None))
        else:
            self._finish(live, PodEnd(res.EVICTED, None, why, live.started, None))

    def _look_after(self) -> None:
        """Follow the logs of attempts that run for a while; finish those whose Job ended without a pod end.

        A log is followed only once its container has run for FOLLOW_AFTER seconds: a shorter attempt's log
        is fetched once when it ended, which spares a stream and a thread for each of many short tasks.
        """
        now = time.monotonic()
        for live in list(self._live.values()):
            if live.finishing:
                continue
            if live.job_ended is not None and now - live.job_ended > JOB_END_GRACE:
                self._finish(live, None)
            elif not live.followed and live.running_since is not None and now - live.running_since >= FOLLOW_AFTER:
                live.followed = True
                self._follow_log(live)

    # -- workers -------------------------------------------------------------------------------------------

    def _finish(self, live: Live, end: PodEnd | None) -> None:
        """Hand the attempt to a worker that works out how it ended (asking the API if need be) and reports it."""
        live.finishing = True
        self._pool.submit(self._report, live, end)

    def _report(self, live: Live, end: PodEnd | None) -> None:
        self._inbox.put(("ended", "", clusterio.report(self, live, end)))

    def _create(self, live: Live) -> None:
        failure = clusterio.create(self, live, self._deleting.get(live.attempt.task.name), _CREATE_RETRY)
        if failure is not None:
            self._inbox.put(("ended", "", failure))

    def environment(self, attempt: Attempt) -> dict[str, str]:
        """Return the variables of an attempt's container."""
        return task_environment({}, self.spec, attempt)
