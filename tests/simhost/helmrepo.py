"""A Helm chart repository serving Liqo's (simulated) chart over HTTP on loopback, for ``ksi images save``.

It serves ``index.yaml`` and ``liqo-<version>.tgz`` the way Liqo's repository does (an index whose entries
carry each package's sha256 digest and its absolute URL) and records every request as a registry contact
of the simulated host it belongs to. The index gives the digests of the packages as built; changing
``packages`` afterwards serves tampered bytes. ``online = False`` drops every connection unanswered.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.simhost import liqochart, registry


class HelmRepo:
    """A running chart repository; ``url`` is what KSI_LIQO_CHART_REPO names."""

    def __init__(self, root: Path, versions: Sequence[str]) -> None:
        self.root = root
        self.online = True
        self.packages = {f"liqo-{v}.tgz": liqochart.package(v) for v in versions}  # what is served
        self.digests = {name: hashlib.sha256(data).hexdigest() for name, data in self.packages.items()}  # the index
        repo = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                repo.serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="helm-repo", daemon=True)

    def index(self) -> bytes:
        """Return index.yaml."""
        entries = [{"apiVersion": "v2", "name": "liqo", "version": name.removeprefix("liqo-").removesuffix(".tgz"),
                    "appVersion": name.removeprefix("liqo-").removesuffix(".tgz"), "type": "application",
                    "digest": self.digests[name], "urls": [self.url + name],
                    "created": "2025-07-11T15:00:00Z", "description": "A Helm chart for Liqo (simulated)"}
                   for name in sorted(self.packages, reverse=True)]
        return yaml.safe_dump({"apiVersion": "v1", "entries": {"liqo": entries},
                               "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()

    def serve(self, request: BaseHTTPRequestHandler) -> None:
        """Answer one GET."""
        name = request.path.lstrip("/")
        registry.record_contact(registry.registry_dir(self.root), "chart-repository", "127.0.0.1", request.path,
                                self.online)
        if not self.online:
            request.close_connection = True
            return
        body = self.index() if name == "index.yaml" else self.packages.get(name)
        if body is None:
            request.send_error(404)
            return
        request.send_response(200)
        request.send_header("Content-Type", "text/yaml" if name == "index.yaml" else "application/gzip")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def start(self) -> HelmRepo:
        """Start serving in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
