"""Libraries a run needs later, imported in a background thread while ksi waits for its first commands.

The start of a run is mostly waiting: for ``kind version``, for the stale-cluster listing, for kind
itself. What the run needs after those waits (filelock for the node locks, jinja2 and PyYAML for the
kind config and the kubeconfig: about 0.15 s of CPU; on the node that grants API access also the
kubernetes client: 0.25 s, a second on a cold node) is imported meanwhile, so it is ready when needed.
"""

from __future__ import annotations

import importlib
import threading

from ksi import log
from ksi.cluster.api import load_client

_log = log.get(__name__)
RUN_MODULES = ("filelock", "yaml", "jinja2")


def _load(client: bool) -> None:
    try:
        for name in RUN_MODULES:
            importlib.import_module(name)
        if client:
            load_client()
    except ImportError as exc:  # the run's own import reports it where it is needed
        _log.debug("warm imports: %s", exc)


def start(*, client: bool) -> threading.Thread:
    """Start importing what the run needs later, with the kubernetes client if ``client``; return the thread."""
    thread = threading.Thread(target=_load, args=(client,), daemon=True, name="warm-imports")
    thread.start()
    return thread
