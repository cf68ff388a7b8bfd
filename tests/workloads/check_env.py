#!/usr/bin/env python3
"""Test workload: checks what ksi promises a workload and records what it saw in $1 (a JSON file)."""

import base64
import json
import os
import ssl
import stat
import sys
import tempfile
import urllib.request

import yaml

report: dict[str, object] = {}
names = ["K8S_CLUSTER_NAME", "K8S_CLUSTER_API", "K8S_CLUSTER_API_TOKEN", "K8S_PORT", "KUBECONFIG", "KSI_RUN_DIR"]
report["missing"] = [n for n in names if not os.environ.get(n)]
report["cwd"] = os.getcwd()
report["argv"] = sys.argv[2:]
kubeconfig_path = os.environ["KUBECONFIG"]
report["kubeconfig_mode"] = oct(stat.S_IMODE(os.stat(kubeconfig_path).st_mode))
report["run_dir_mode"] = oct(stat.S_IMODE(os.stat(os.environ["KSI_RUN_DIR"]).st_mode))
with open(kubeconfig_path) as handle:
    config = yaml.safe_load(handle)
report["current_context"] = config.get("current-context")
context = next(c["context"] for c in config["contexts"] if c["name"] == os.environ["K8S_CLUSTER_NAME"])
cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
report["kubeconfig_server"] = cluster["server"]
with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as ca:
    ca.write(base64.b64decode(cluster["certificate-authority-data"]))
tls = ssl.create_default_context(cafile=ca.name)  # verification on, against the cluster's own CA
request = urllib.request.Request(os.environ["K8S_CLUSTER_API"] + "/api/v1/nodes",
                                 headers={"Authorization": "Bearer " + os.environ["K8S_CLUSTER_API_TOKEN"]})
with urllib.request.urlopen(request, context=tls, timeout=10) as response:
    report["api_status"] = response.status
    nodes = [item["metadata"]["name"] for item in json.load(response)["items"]]
    report["nodes"] = nodes
os.unlink(ca.name)
report["token"] = os.environ["K8S_CLUSTER_API_TOKEN"]  # the test checks that it leaked nowhere else
report["env"] = {n: os.environ.get(n) for n in names if n != "K8S_CLUSTER_API_TOKEN"}
with open(sys.argv[1], "w") as handle:
    json.dump(report, handle)
print(f"workload saw {len(nodes)} node(s)")
print("a line on stderr", file=sys.stderr)
