#!/usr/bin/env bash
# A training-style Job: its code and data come from the shared directory (/app in the pods), and it
# writes its checkpoint there, so the result outlives the cluster and a second run resumes from it.
#   ksi run example_workloads/training/training.sh [SHARED_DIR]
# The code and data are copied to SHARED_DIR/ksi-training/ (kept, with the checkpoint, after the run).
# Exits with the Job's status: 0 when it completed, 1 when it failed.
set -euo pipefail
here="$(dirname "$0")"
job=training
# The run directory is SHARED_DIR/ksi-runs/<run>, and SHARED_DIR is /app in every pod.
shared="$(dirname "$(dirname "$KSI_RUN_DIR")")"
mkdir -p "$shared/ksi-training"
cp "$here/train.py" "$here/data.csv" "$shared/ksi-training/"

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
kubectl create -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: $job
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 1800
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: train
          image: python:3.12-slim
          command: ["python3", "/app/ksi-training/train.py", "--data", "/app/ksi-training/data.csv",
                    "--checkpoint", "/app/ksi-training/checkpoint.json", "--epochs", "300"]
          env:
            - {name: PYTHONUNBUFFERED, value: "1"}
          resources:
            requests: {cpu: "1", memory: 256Mi}
          volumeMounts:
            - {name: shared, mountPath: /app}
      volumes:
        - name: shared
          hostPath: {path: /app, type: Directory}
YAML
status=0
finish_job "$job" || status=$?
echo "checkpoint ($shared/ksi-training/checkpoint.json):"
cat "$shared/ksi-training/checkpoint.json" 2>/dev/null || echo "  none written"
echo
exit "$status"
