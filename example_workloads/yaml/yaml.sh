#!/usr/bin/env bash
# Apply the Job manifest next to this script, wait for the Job, print its log, delete it.
#   ksi run example_workloads/yaml/yaml.sh [SHARED_DIR]
# Exits with the Job's status: 0 when it completed, 1 when it failed.
set -euo pipefail
manifest="$(dirname "$0")/job.yaml"
job=yaml-example

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

trap 'kubectl delete -f "$manifest" --ignore-not-found --wait=false >/dev/null' EXIT
kubectl apply -f "$manifest"
finish_job "$job"
