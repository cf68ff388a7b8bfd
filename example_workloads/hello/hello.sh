#!/usr/bin/env bash
# The smallest ksi workload: show the cluster ksi made for this job, then run a minimal Job on it.
#   ksi run example_workloads/hello/hello.sh            (one machine)
#   srun -N3 ksi run example_workloads/hello/hello.sh   (one cluster spanning three nodes)
# Exits with the Job's status: 0 when it completed, 1 when it failed.
set -euo pipefail
job=hello

# Wait until Job $1 completes or fails (kubectl wait takes one condition: wait for both, take the first),
# print its pods' logs, then say how it ended; return 0 when it completed, 1 when it failed.
finish_job() {
  local job=$1 complete failed conditions
  kubectl wait --for=condition=complete "job/$job" --timeout=-1s >/dev/null 2>&1 & complete=$!
  kubectl wait --for=condition=failed "job/$job" --timeout=-1s >/dev/null 2>&1 & failed=$!
  wait -n "$complete" "$failed" || true
  kill "$complete" "$failed" 2>/dev/null || true
  conditions=$(kubectl get "job/$job" -o jsonpath='{.status.conditions[?(@.status=="True")].type}')
  kubectl logs -l "batch.kubernetes.io/job-name=$job" --prefix --tail=-1 || true
  if [[ " $conditions " == *" Complete "* ]]; then
    echo "job $job completed"
    return 0
  fi
  echo "job $job failed: $(kubectl get "job/$job" -o jsonpath='{.status.conditions[?(@.type=="Failed")].message}')" >&2
  kubectl get pods -l "batch.kubernetes.io/job-name=$job" -o jsonpath='{range .items[*]}  pod {.metadata.name} on {.spec.nodeName}: {.status.containerStatuses[0].state.terminated.reason}, exit code {.status.containerStatuses[0].state.terminated.exitCode}{"\n"}{end}' >&2
  return 1
}

echo "cluster $K8S_CLUSTER_NAME, API $K8S_CLUSTER_API, NodePort $K8S_PORT, run directory $KSI_RUN_DIR"
kubectl get nodes -o wide

# Whatever happens next, the Job and its pods go with the workload.
trap 'kubectl delete job "$job" --ignore-not-found --wait=false >/dev/null' EXIT
kubectl create -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: $job
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: hello
          image: busybox:1.36
          command: ["sh", "-c", "echo Hello from pod \$POD_NAME on node \$NODE_NAME"]
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            - name: NODE_NAME
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
YAML

finish_job "$job"
