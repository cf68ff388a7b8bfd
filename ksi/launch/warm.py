"""Libraries a run needs later, imported in background threads while ksi waits for its commands.

The start of a run is mostly waiting: for ``kind version``, for the stale-cluster listing, for kind
itself. The libraries a run needs (filelock for the node locks, jinja2 and PyYAML for the kind config and
the kubeconfig: about 0.1 s of CPU) are imported once the checks' commands have started, in the order they
are needed, and the kind config template compiled, so it happens while those commands run rather than
before the first one starts.
The kubernetes client (0.25 s, a second on a cold node) is imported once kind create runs, and only where
the token is issued: earlier, it would compete with the checks (which on the leader of a multi-node run
hold up every node) and with the steps that lead to kind create.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

from ksi import log
from ksi.cluster import kindconfig
from ksi.cluster.api import load_client

_log = log.get(__name__)
LIBRARIES = ("filelock", "yaml", "jinja2")  # in the order the run needs them


def _start(name: str, load: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        try:
            load()
        except Exception as exc:  # the run's own call reports it where it is needed
            _log.debug("%s: %s", name, exc)

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    return thread


def _import_libraries() -> None:
    for name in LIBRARIES:
        importlib.import_module(name)
    kindconfig.template()  # compiled now rather than between the stale-cluster listing and kind create


def libraries() -> threading.Thread:
    """Start importing filelock, PyYAML and jinja2, then compiling the kind template; return the thread."""
    return _start("import-libraries", _import_libraries)


class Client:
    """The import of the kubernetes client (:func:`ksi.cluster.api.load_client`) in a background thread."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the import (once)."""
        if self._thread is None:
            self._thread = _start("import-kubernetes", load_client)

    def join(self) -> None:
        """Wait until the client is imported (starting the import now if nothing started it)."""
        self.start()
        assert self._thread is not None
        self._thread.join()
