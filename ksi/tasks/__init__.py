"""``ksi tasks``: the many tasks of one experiment, run as Kubernetes Jobs (or local processes), resumable."""
