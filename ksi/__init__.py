"""ksi: a throw-away Kubernetes cluster (rootless kind, peered with Liqo) for the length of one Slurm job."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """Return ``__version__`` from the installed package's metadata (read only when asked: it costs ~10 ms)."""
    if name == "__version__":
        from importlib.metadata import version

        return version("ksi")
    raise AttributeError(f"module 'ksi' has no attribute {name!r}")
