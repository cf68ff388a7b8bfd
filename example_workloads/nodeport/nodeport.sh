#!/usr/bin/env bash
# Serve on K8S_PORT and reach it from another node: a NodePort Service on $K8S_PORT (which ksi publishes on
# the node's address) in front of a web server pod on this node, and a client Job on another node (a
# peered one when there is one) that fetches http://<this node>:$K8S_PORT/.
#   srun -N2 ksi run example_workloads/nodeport/nodeport.sh [SHARED_DIR]   (or ksi run, on one node)
# Exits with the client Job's status: 0 when it fetched the page, 1 when it failed.
set -euo pipefail
app=nodeport-web
client=nodeport-client
address=$(hostname)  # how the other nodes reach this one
server_node=$(kubectl get nodes -l '!liqo.io/type' -o jsonpath='{.items[0].metadata.name}')
virtual_nodes=$(kubectl get nodes -l liqo.io/type=virtual-node -o jsonpath='{.items[*].metadata.name}')
client_node=${virtual_nodes%% *}
client_node=${client_node:-$server_node}

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

trap 'kubectl delete job "$app" "$client" --ignore-not-found --wait=false >/dev/null; kubectl delete service "$app" --ignore-not-found >/dev/null' EXIT
kubectl create -f - <<YAML
apiVersion: v1
kind: Service
metadata:
  name: $app
spec:
  type: NodePort
  selector: {app: $app}
  ports:
    - {port: 8080, targetPort: 8080, nodePort: $K8S_PORT}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: $app
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {app: $app}
    spec:
      restartPolicy: Never
      nodeSelector: {kubernetes.io/hostname: $server_node}
      containers:
        - name: web
          image: python:3.12-slim
          command: ["sh", "-c", "echo \"hello from pod \$POD_NAME on \$NODE_NAME\" > /www/index.html && exec python3 -m http.server 8080 --bind \$POD_IP --directory /www"]
          ports:
            - {containerPort: 8080}
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            - name: NODE_NAME
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
          volumeMounts:
            - {name: www, mountPath: /www}
      volumes:
        - {name: www, emptyDir: {}}
YAML
kubectl wait --for=condition=Ready pod -l "app=$app" --timeout=300s

kubectl create -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: $client
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 300
  template:
    spec:
      restartPolicy: Never
      nodeSelector: {kubernetes.io/hostname: $client_node}
      tolerations:  # Liqo's virtual nodes are tainted; this pod may go there
        - {key: virtual-node.liqo.io/not-allowed, operator: Exists, effect: NoExecute}
      containers:
        - name: fetch
          image: curlimages/curl:8.11.1
          command: ["curl", "--fail", "--silent", "--show-error", "--retry", "10", "--retry-all-errors",
                    "--max-time", "10", "http://$address:$K8S_PORT/"]
YAML
finish_job "$client"
