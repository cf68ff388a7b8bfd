"""Request bodies in the Kubernetes protobuf encoding (what kubectl 1.32+ sends for built-in types).

Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

from tests.simhost.apimodel import ApiError


def to_json(body: bytes) -> bytes:
    """Return the JSON form of a protobuf-encoded object; 415 for what the simulation cannot decode."""
    raise ApiError(415, "UnsupportedMediaType", "the simulated API server does not decode protobuf request bodies "
                   "(kubectl sends them from typed commands such as `kubectl create job`): use a manifest with "
                   "`kubectl create -f` or `kubectl apply -f`, which send JSON")
