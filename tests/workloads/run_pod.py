#!/usr/bin/env python3
"""Test workload: creates a pod running image $1 through the cluster's API and prints how the kubelet saw it.

Prints ``pod <name>: <phase>`` and, for a container that does not run, its waiting reason and message;
exits 0 when the pod runs, 1 otherwise.
"""

import base64
import json
import os
import ssl
import sys
import tempfile
import urllib.request

import yaml

image, name = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "workload"
with open(os.environ["KUBECONFIG"]) as handle:
    config = yaml.safe_load(handle)
context = next(c["context"] for c in config["contexts"] if c["name"] == os.environ["K8S_CLUSTER_NAME"])
cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
with tempfile.NamedTemporaryFile("wb", suffix=".crt") as ca:
    ca.write(base64.b64decode(cluster["certificate-authority-data"]))
    ca.flush()
    tls = ssl.create_default_context(cafile=ca.name)
    body = {"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": image}]}}
    request = urllib.request.Request(
        os.environ["K8S_CLUSTER_API"] + "/api/v1/namespaces/default/pods", data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + os.environ["K8S_CLUSTER_API_TOKEN"],
                 "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, context=tls, timeout=30) as response:
        status = json.load(response)["status"]
print(f"pod {name}: {status['phase']}")
for container in status.get("containerStatuses", []):
    waiting = container["state"].get("waiting")
    if waiting:
        print(f"  {container['image']}: {waiting['reason']}: {waiting['message']}")
sys.exit(0 if status["phase"] == "Running" else 1)
