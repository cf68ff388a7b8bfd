"""Task names: DNS-1123 labels from the experiment and the task's parameters, stable and unique.

A name depends only on the experiment and the task's own parameters, never on its position, so adding a
task to a SPEC leaves the names (and the results) of the others alone. Names that would be longer than 63
characters, or that two tasks would share, end in a hash of all the task's parameters instead.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence

MAX_NAME = 63  # a DNS-1123 label: Job names, label values
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_HASH_LENGTHS = (0, 8, 16, 32)


def slug(text: str) -> str:
    """Return ``text`` lower-cased with every run of other characters than a-z and 0-9 turned into ``-``."""
    return _NOT_ALNUM.sub("-", text.lower()).strip("-")


def base_name(experiment: str, values: Sequence[str]) -> str:
    """Return ``<experiment>-<value>-<value>...`` with each value slugged (empty slugs left out)."""
    return "-".join([experiment, *(s for s in map(slug, values) if s)])


def _with_hash(base: str, identity: str, length: int) -> str:
    if length == 0:
        return base
    digest = hashlib.sha256(identity.encode()).hexdigest()[:length]
    return f"{base[: MAX_NAME - 1 - length].rstrip('-')}-{digest}"


def assign(experiment: str, tasks: Sequence[tuple[Sequence[str], str]]) -> list[str]:
    """Name each task from ``(values shown in the name, identity)``; identities must be unique.

    A task keeps its plain name when it fits and no other task has it; otherwise it gets a hash of its
    identity, longer only while hashed names still collide.
    """
    bases = [base_name(experiment, values) for values, _ in tasks]
    counts = Counter(bases)
    level = [0 if len(b) <= MAX_NAME and counts[b] == 1 else 1 for b in bases]
    while True:
        names = [_with_hash(b, identity, _HASH_LENGTHS[lv]) for b, (_, identity), lv in zip(bases, tasks, level,
                                                                                           strict=True)]
        seen = Counter(names)
        clashes = [i for i, n in enumerate(names) if seen[n] > 1]
        if not clashes:
            return names
        for i in clashes:
            if level[i] + 1 >= len(_HASH_LENGTHS):
                raise ValueError(f"tasks share the name {names[i]} even with a 32-character hash: same parameters?")
            level[i] += 1
