"""ksi: a throw-away Kubernetes cluster (rootless kind, peered with Liqo) for the length of one Slurm job."""

__version__ = "0.1.0"
