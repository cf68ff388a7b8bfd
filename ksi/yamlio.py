"""YAML in and out through libyaml when PyYAML has it (ten times faster than the pure-Python parser), safely."""

from __future__ import annotations

from typing import Any


def load(text: str | bytes) -> Any:
    """Parse one YAML document with the safe loader (libyaml's when available); raise yaml.YAMLError."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader


def dump(data: Any) -> str:
    """Return ``data`` as block-style YAML, written by the safe dumper (libyaml's when available)."""
    import yaml

    return str(yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), default_flow_style=False))
