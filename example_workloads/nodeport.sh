#!/usr/bin/env bash
# Serve something on K8S_PORT: a NodePort service on that port is reachable at <node>:$K8S_PORT,
# because ksi publishes the port through kind's extraPortMappings.
#   ksi run example_workloads/nodeport.sh
set -euo pipefail
ctx=(--context "$K8S_CLUSTER_NAME")
kubectl "${ctx[@]}" create deployment web --image=nginx:1.27 --port=80
kubectl "${ctx[@]}" create service nodeport web --tcp=80:80 --node-port="$K8S_PORT"
kubectl "${ctx[@]}" rollout status deployment/web --timeout=300s
curl --fail --silent --show-error "http://$(hostname):$K8S_PORT/" | head -n 4
