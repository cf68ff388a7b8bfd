#!/usr/bin/env python3
"""Test workload: runs a pod of image $1 through the cluster's API and prints how the kubelet saw it.

The pod's one container runs ``true``. Prints ``pod <name>: <phase>`` once the pod ran (Succeeded) or its
kubelet could not get the image, with the waiting reason and message; exits 0 when it ran, 1 otherwise.
"""

import base64
import json
import os
import ssl
import sys
import tempfile
import time
import urllib.request

import yaml

image, name = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "workload"
with open(os.environ["KUBECONFIG"]) as handle:
    config = yaml.safe_load(handle)
context = next(c["context"] for c in config["contexts"] if c["name"] == os.environ["K8S_CLUSTER_NAME"])
cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
api = os.environ["K8S_CLUSTER_API"] + "/api/v1/namespaces/default/pods"
headers = {"Authorization": "Bearer " + os.environ["K8S_CLUSTER_API_TOKEN"], "Content-Type": "application/json"}
with tempfile.NamedTemporaryFile("wb", suffix=".crt") as ca:
    ca.write(base64.b64decode(cluster["certificate-authority-data"]))
    ca.flush()
    tls = ssl.create_default_context(cafile=ca.name)
    body = {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "main", "image": image, "command": ["true"]}]}}
    request = urllib.request.Request(api, data=json.dumps(body).encode(), headers=headers, method="POST")
    urllib.request.urlopen(request, context=tls, timeout=30).close()
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(urllib.request.Request(f"{api}/{name}", headers=headers), context=tls,
                                    timeout=30) as response:
            status = json.load(response).get("status") or {}
        waiting = [c["state"]["waiting"] for c in status.get("containerStatuses", []) if "waiting" in c["state"]]
        if status.get("phase") in ("Succeeded", "Failed") or any(w["reason"] != "ContainerCreating" for w in waiting):
            break
        if time.monotonic() > deadline:
            sys.exit(f"pod {name}: still {status.get('phase')} after 60 s")
        time.sleep(0.1)
print(f"pod {name}: {status['phase']}")
for entry in waiting:
    print(f"  {image}: {entry['reason']}: {entry.get('message', '')}")
sys.exit(0 if status["phase"] == "Succeeded" else 1)
