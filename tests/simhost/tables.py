"""Table answers (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``) for ``kubectl get``.

Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

from tests.simhost.apimodel import Obj, Resource


def convert(res: Resource, obj: Obj, accept: str, query: dict[str, list[str]]) -> Obj:
    """Return ``obj`` (an object or a list) as a Table when the client asks for one, else unchanged."""
    return obj
