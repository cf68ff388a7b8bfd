#!/usr/bin/env python3
"""Use the Kubernetes REST API directly, without kubectl: K8S_CLUSTER_API, the bearer token in
K8S_CLUSTER_API_TOKEN, and TLS verified against the CA in the run's kubeconfig ($KUBECONFIG).

    ksi run example_workloads/kube-api/kube-api.py

Creates a Job, follows it with a watch until it completes or fails, prints its pod's log, deletes the Job
(and its pods). Python standard library only. Exits with the Job's status: 0 completed, 1 failed.
"""

import base64
import json
import os
import re
import ssl
import sys
import urllib.parse
import urllib.request

JOB = "kube-api-example"
NAMESPACE = "default"


def ca_from_kubeconfig(path: str) -> str:
    """Return the PEM of the cluster CA in a kubeconfig (ksi writes it as certificate-authority-data)."""
    with open(path) as handle:
        match = re.search(r"certificate-authority-data:\s*(\S+)", handle.read())
    if not match:
        sys.exit(f"no certificate-authority-data in {path}")
    return base64.b64decode(match[1]).decode()


class Api:
    """A few calls of the Kubernetes REST API with a bearer token over verified TLS."""

    def __init__(self, server: str, token: str, ca_pem: str) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.context = ssl.create_default_context(cadata=ca_pem)  # verifies the certificate and its name

    def request(self, method: str, path: str, body: object = None, timeout: float = 30) -> object:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.server}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            "Content-Type": "application/json"})
        return urllib.request.urlopen(request, context=self.context, timeout=timeout)  # noqa: S310

    def json(self, method: str, path: str, body: object = None) -> dict:
        with self.request(method, path, body) as response:
            return json.load(response)


def main() -> int:
    api = Api(os.environ["K8S_CLUSTER_API"], os.environ["K8S_CLUSTER_API_TOKEN"],
              ca_from_kubeconfig(os.environ["KUBECONFIG"]))
    version = api.json("GET", "/version")
    print(f"API server {os.environ['K8S_CLUSTER_API']}: Kubernetes {version['gitVersion']}")
    nodes = api.json("GET", "/api/v1/nodes")["items"]
    print("nodes:", ", ".join(n["metadata"]["name"] for n in nodes))

    jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": JOB}, "spec": {
        "backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "busybox:1.36",
            "command": ["sh", "-c", "echo created through the REST API, running on $NODE_NAME"],
            "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}]}}}}
    created = api.json("POST", jobs, job)
    try:
        # Watch the Job from the version the create returned: each line is one event.
        query = urllib.parse.urlencode({"watch": "true", "fieldSelector": f"metadata.name={JOB}",
                                        "resourceVersion": created["metadata"]["resourceVersion"],
                                        "timeoutSeconds": "1800"})
        outcome = None
        with api.request("GET", f"{jobs}?{query}", timeout=1900) as stream:
            for line in stream:
                event = json.loads(line)
                for condition in event["object"].get("status", {}).get("conditions") or []:
                    if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
                        outcome = condition
                if outcome:
                    break
        if outcome is None:
            print(f"job {JOB} did not finish", file=sys.stderr)
            return 1
        selector = urllib.parse.quote(f"batch.kubernetes.io/job-name={JOB}")
        pods = api.json("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}")["items"]
        for pod in pods:
            name = pod["metadata"]["name"]
            with api.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/log") as log:
                sys.stdout.write(log.read().decode())
        if outcome["type"] == "Complete":
            print(f"job {JOB} completed")
            return 0
        print(f"job {JOB} failed: {outcome.get('reason')}: {outcome.get('message')}", file=sys.stderr)
        for pod in pods:
            for status in pod.get("status", {}).get("containerStatuses") or []:
                ended = status.get("state", {}).get("terminated") or {}
                print(f"  pod {pod['metadata']['name']}: {ended.get('reason')}, exit code {ended.get('exitCode')}",
                      file=sys.stderr)
        return 1
    finally:
        api.json("DELETE", f"{jobs}/{JOB}?propagationPolicy=Background")


if __name__ == "__main__":
    sys.exit(main())
