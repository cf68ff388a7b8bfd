"""Cluster names: ``ksi-<job id or "local">-<random suffix>``, valid for kind and unique per run."""

from __future__ import annotations

import re
import secrets

PREFIX = "ksi-"
MAX_LENGTH = 50  # kind derives container and host names from it; 50 leaves room for "-control-plane"
_VALID = re.compile(r"^[a-z0-9.-]+$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# Exactly what cluster_name makes: a user's own `kind create cluster --name ksi-dev-abcdef` is not ksi's.
_OURS = re.compile(r"ksi-(?:local|[0-9]{1,20})-[a-z0-9]{6}")
SUFFIX_LENGTH = 6  # 36**6 ≈ 2e9 names: two runs started in the same second never meet


def cluster_name(job_id: str | None) -> str:
    """Return a fresh cluster name for a run of Slurm job ``job_id`` (digits; None outside Slurm)."""
    if job_id is not None and not job_id.isdigit():
        raise ValueError(f"a Slurm job id is a number, not {job_id!r}")
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(SUFFIX_LENGTH))
    name = f"{PREFIX}{job_id or 'local'}-{suffix}"
    assert is_valid(name), name
    return name


def is_valid(name: str) -> bool:
    """True when kind accepts ``name`` and it stays within MAX_LENGTH."""
    return bool(_VALID.match(name)) and len(name) <= MAX_LENGTH


def is_ksi_cluster(name: str) -> bool:
    """True for names ksi creates (it never touches any other cluster)."""
    return _OURS.fullmatch(name) is not None
