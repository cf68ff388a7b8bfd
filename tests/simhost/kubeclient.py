"""A minimal JSON client of the Kubernetes API, used by the simulated kind and liqoctl (Go programs
that talk to API servers themselves); failures are worded like Go's net/http ones."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import tempfile
from typing import Any
from urllib.parse import urlsplit

from tests.simhost.kubeconfig import Client


class ApiUnreachable(Exception):
    """The API server could not be reached or did not prove its identity."""


class KubeClient:
    """Sends requests to one API server with the trust and credentials of a kubeconfig context."""

    def __init__(self, client: Client, timeout: float = 10.0) -> None:
        self.client = client
        self.timeout = timeout
        url = urlsplit(client.server)
        if url.scheme != "https" or not url.hostname:
            raise ApiUnreachable(f"host must be a URL or a host:port pair: {client.server!r}")
        self.host, self.port = url.hostname, url.port or 443
        self.hostport = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if client.insecure:
            self.context = ssl._create_unverified_context()
        else:
            self.context = ssl.create_default_context(cadata=client.ca.decode() if client.ca else None)
        if client.cert and client.key:
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = os.path.join(tmp, "cert"), os.path.join(tmp, "key")
                for target, data in ((cert, client.cert), (key, client.key)):
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
                    with os.fdopen(fd, "wb") as handle:
                        handle.write(data)
                self.context.load_cert_chain(cert, key)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Send one request; return (status, decoded JSON body). Raise ApiUnreachable on network/TLS failure."""
        url = f"{self.client.server.rstrip('/')}{path}"
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self.client.token:
            headers["Authorization"] = f"Bearer {self.client.token}"
        connection = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout)
        try:
            connection.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = connection.getresponse()
            data = response.read()
        except ssl.SSLCertVerificationError as exc:
            raise ApiUnreachable(f'{method.title()} "{url}": tls: failed to verify certificate: x509: '
                                 f"{exc.verify_message}") from None
        except ConnectionRefusedError:
            raise ApiUnreachable(f'{method.title()} "{url}": dial tcp {self.hostport}: connect: connection refused'
                                 ) from None
        except TimeoutError:
            raise ApiUnreachable(f'{method.title()} "{url}": dial tcp {self.hostport}: i/o timeout') from None
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise ApiUnreachable(f'{method.title()} "{url}": dial tcp {self.hostport}: connect: {reason}') from None
        finally:
            connection.close()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"message": data.decode(errors="replace")}
        return response.status, decoded if isinstance(decoded, dict) else {}
