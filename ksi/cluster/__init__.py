"""One node's kind cluster: naming, kind config, kubeconfig, access, teardown, run directory, workload."""
