#!/usr/bin/env bash
# The smallest ksi workload: show the cluster ksi made for this job.
#   ksi run example_workloads/hello.sh            (one machine)
#   srun -N3 ksi run example_workloads/hello.sh   (one cluster spanning three nodes)
set -euo pipefail
echo "cluster $K8S_CLUSTER_NAME, API $K8S_CLUSTER_API, NodePort $K8S_PORT, run directory $KSI_RUN_DIR"
kubectl --context "$K8S_CLUSTER_NAME" get nodes -o wide
