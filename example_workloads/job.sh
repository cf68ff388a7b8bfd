#!/usr/bin/env bash
# Run a Kubernetes Job that reads the shared directory (mounted at /app in every node) and fail when it fails.
#   ksi run example_workloads/job.sh [SHARED_DIR]
set -euo pipefail
ctx=(--context "$K8S_CLUSTER_NAME")
job=ksi-example

kubectl "${ctx[@]}" apply -f - <<YAML
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
        - name: main
          image: busybox:1.36
          command: ["sh", "-c", "ls -la /app && echo done > /app/job-output.txt"]
          volumeMounts:
            - {name: shared, mountPath: /app}
      volumes:
        - name: shared
          hostPath: {path: /app, type: Directory}
YAML

# Wait for the Job to finish either way: `kubectl wait --for=condition=complete` alone never returns
# for a failed Job, and an example that cannot see failure teaches the wrong thing.
for _ in $(seq 600); do
  succeeded=$(kubectl "${ctx[@]}" get job "$job" -o jsonpath='{.status.succeeded}')
  failed=$(kubectl "${ctx[@]}" get job "$job" -o jsonpath='{.status.failed}')
  if [[ "${succeeded:-0}" -ge 1 ]]; then
    kubectl "${ctx[@]}" logs "job/$job"
    echo "job $job succeeded"
    exit 0
  fi
  if [[ "${failed:-0}" -ge 1 ]]; then
    kubectl "${ctx[@]}" logs "job/$job" || true
    echo "job $job failed" >&2
    exit 1
  fi
  sleep 1
done
echo "job $job did not finish within 10 minutes" >&2
exit 1
