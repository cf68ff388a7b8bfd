"""Kubernetes resource quantities (``500m``, ``2``, ``128Mi``, ``1G``) as numbers. Standard library only."""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class QuantityError(ValueError):
    """A quantity that the API server would reject."""


def parse(value: object) -> float:
    """Return the value of a quantity (cpu in cores, memory in bytes); raise QuantityError if malformed."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise QuantityError(f"quantities must match the regular expression "
                            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}")
    return float(match[1]) * _SUFFIX[match[2] or ""]


def requests(pod: dict[str, object]) -> tuple[float, float]:
    """Return the (cpu, memory) a pod requests: the sum over its containers, a limit standing for a request."""
    cpu = memory = 0.0
    spec = pod.get("spec") or {}
    assert isinstance(spec, dict)
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        wanted = (resources.get("limits") or {}) | (resources.get("requests") or {})
        cpu += parse(wanted["cpu"]) if "cpu" in wanted else 0.0
        memory += parse(wanted["memory"]) if "memory" in wanted else 0.0
    return cpu, memory
