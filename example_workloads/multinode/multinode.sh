#!/usr/bin/env bash
# One pod on every node of the cluster: this node's and each peered node's (a Liqo virtual node standing
# for another Slurm node's cluster). Each pod reports where it runs; the workload gathers the reports and
# checks that every node answered.
#   srun -N3 --ntasks-per-node=1 -K1 ksi run example_workloads/multinode/multinode.sh [SHARED_DIR]
# Exits with the Job's status (1 too when a node did not run its pod).
set -euo pipefail
job=multinode
nodes=$(kubectl get nodes -o jsonpath='{.items[*].metadata.name}')
count=$(wc -w <<<"$nodes")
echo "$count node(s): $nodes"

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

trap 'kubectl delete job "$job" --ignore-not-found --wait=false >/dev/null' EXIT
# An Indexed Job with one pod per node; the spread constraint puts no two pods on one node.
kubectl create -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: $job
spec:
  completionMode: Indexed
  completions: $count
  parallelism: $count
  backoffLimit: 0
  activeDeadlineSeconds: 600
  template:
    metadata:
      labels: {app: $job}
    spec:
      restartPolicy: Never
      tolerations:  # Liqo's virtual nodes are tainted; these pods may go there
        - {key: virtual-node.liqo.io/not-allowed, operator: Exists, effect: NoExecute}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          labelSelector: {matchLabels: {app: $job}}
      containers:
        - name: report
          image: busybox:1.36
          command: ["sh", "-c", "echo \"pod \$JOB_COMPLETION_INDEX runs on node \$NODE_NAME\""]
          env:
            - name: NODE_NAME
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
YAML
status=0
finish_job "$job" || status=$?
# Where the cluster put each pod: this node's name, or the virtual node of a peered cluster.
placed=$(kubectl get pods -l "app=$job" -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u)
echo "pods ran on: $(tr '\n' ' ' <<<"$placed")"
if [[ "$(wc -l <<<"$placed")" -ne "$count" ]]; then
  echo "not every node ran a pod: expected $count nodes ($nodes)" >&2
  status=1
fi
exit "$status"
