"""The OpenAPI documents of the simulated API server (what kubectl needs of them).

Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

from tests.simhost.apimodel import ApiError, Obj


def document(path: str) -> Obj:
    """Return the OpenAPI document at ``path``; raise 404 for documents the simulation does not serve."""
    raise ApiError(404, "NotFound", f"the simulated API server serves no OpenAPI document at {path}", {})
