"""Cluster names: ``ksi-<job id or "local">-<random suffix>``, valid for kind and unique per run."""

from __future__ import annotations

import re
import secrets

PREFIX = "ksi-"
MAX_LENGTH = 50  # kind derives container and host names from it; 50 leaves room for "-control-plane"
_VALID = re.compile(r"^[a-z0-9.-]+$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
SUFFIX_LENGTH = 6  # 36**6 ≈ 2e9 names: two runs started in the same second never meet


def cluster_name(job_id: str | None) -> str:
    """Return a fresh cluster name for a run of ``job_id`` (None outside Slurm)."""
    job = re.sub(r"[^a-z0-9]", "", (job_id or "local").lower())[:20] or "local"
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(SUFFIX_LENGTH))
    name = f"{PREFIX}{job}-{suffix}"
    assert is_valid(name), name
    return name


def is_valid(name: str) -> bool:
    """True when kind accepts ``name`` and it stays within MAX_LENGTH."""
    return bool(_VALID.match(name)) and len(name) <= MAX_LENGTH


def is_ksi_cluster(name: str) -> bool:
    """True for names ksi creates (it never touches any other cluster)."""
    return bool(re.fullmatch(r"ksi-[a-z0-9]+-[a-z0-9]{6}", name))
