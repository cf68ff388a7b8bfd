"""The HTTPS server of a simulated node container: TLS, keep-alive, streaming answers, one log line per request.

What the API answers is decided by :class:`tests.simhost.cluster.Cluster`. Standard library only (the
node-container process runs with ``python -S``).
"""

from __future__ import annotations

import json
import re
import ssl
import sys
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socket import socket
from typing import Any, TextIO
from urllib.parse import urlsplit

from tests.simhost.apimodel import ApiError, Obj, rfc3339
from tests.simhost.auth import ANONYMOUS
from tests.simhost.cluster import Cluster, Reply


class ApiServer(ThreadingHTTPServer):
    """A threaded HTTPS server around one Cluster, logging every request (never a token) to ``log``."""

    daemon_threads = True

    def __init__(self, sock: socket, context: ssl.SSLContext, cluster: Cluster, log: TextIO) -> None:
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.cluster = cluster
        self.log = log
        self.log_lock = threading.Lock()

    def write_log(self, line: str) -> None:
        """Append one line to the container log."""
        with self.log_lock:
            self.log.write(f"{rfc3339()} {line}\n")
            self.log.flush()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection (TLS handshake, client gone) in one line instead of a traceback."""
        self.write_log(f"{client_address[0]} connection error: {sys.exc_info()[1]!r}")


class Handler(BaseHTTPRequestHandler):
    """Serves one connection of the simulated API server (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once: no delayed-ACK stall per request
    server: ApiServer
    timeout = 60

    def setup(self) -> None:
        """Finish the TLS handshake in this thread, so a slow client never blocks accept()."""
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log (Handler._dispatch logs every request itself)."""

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        cluster = self.server.cluster
        user = ANONYMOUS
        try:
            user = cluster.auth.authenticate(self.headers.get("Authorization"), self.request.getpeercert() or None)
            reply = cluster.handle(method, self.path, user, body, self.headers.get("Content-Type") or "",
                                   self.headers.get("Accept") or "application/json")
        except ApiError as exc:
            reply = Reply(exc.code, exc.status())
        except Exception as exc:  # a bug in the simulation: answer it loudly instead of dropping the connection
            reply = Reply(500, ApiError(500, "InternalError", f"simulated API server failed: {exc!r}").status())
        host, port = self.client_address[:2]
        where = f'{host}:{port} {user.name} "{method} {urlsplit(self.path).path}"'
        if isinstance(reply.body, dict | str):
            # Logged before the answer goes out: a client that has its answer finds the request in the log.
            self.server.write_log(f"{where} {reply.code}")
            self._send(method, reply, reply.body)
            return
        self.server.write_log(f"{where} {reply.code} (streaming)")
        self._stream(reply)

    def _send(self, method: str, reply: Reply, payload: Obj | str) -> None:
        if isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(payload, separators=(",", ":")).encode(), reply.content_type
        self.send_response(reply.code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _stream(self, reply: Reply) -> None:
        """Send a streaming answer with chunked transfer encoding (headers at once, as the API server does)."""
        assert not isinstance(reply.body, dict | str)
        chunks = iter(reply.body)
        self.send_response(reply.code)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.end_headers()
        self.close_connection = True
        self.request.settimeout(None)
        try:
            for data in chunks:
                if data:
                    self._chunk(data)
                elif self._client_gone():
                    return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (OSError, ValueError):
            return
        except Exception as exc:  # the stream broke (the provider of a followed log went away): say so
            self.server.write_log(f"stream failed: {exc!r}")
            self._chunk(f"\nsimulated API server: stream failed: {exc}\n".encode())
            self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _client_gone(self) -> bool:
        """Return True when the client closed the connection (a stream has nobody left to send to)."""
        import select

        sock = self.request
        if sock.pending():
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.settimeout(0.01)
        try:
            return bool(sock.recv(1) == b"")  # a client of a stream sends nothing more: EOF means it left
        except (TimeoutError, ssl.SSLWantReadError):
            return False
        except (OSError, ValueError):
            return True
        finally:
            sock.settimeout(None)

    def do_GET(self) -> None:
        """Serve GET."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Serve POST."""
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        """Serve DELETE."""
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        """Serve PUT (answered with 405: not modelled)."""
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        """Serve PATCH (answered with 405: not modelled)."""
        self._dispatch("PATCH")


# What ApiServer writes to the container log for each request: time, client address and port, user, request
# line (method and path, without the query), status.
REQUEST_LINE = re.compile(r'^(?P<time>\S+) (?P<client>\S+):(?P<port>\d+) (?P<user>\S+) '
                          r'"(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d{3})( \(streaming\))?$')


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the container log shows it; ``port`` is the client's, so it tells connections apart."""

    client: str
    port: int
    user: str
    method: str
    path: str
    status: int


def logged_requests(log: str) -> list[LoggedRequest]:
    """Return the requests in a node container's log, in order (other lines are skipped)."""
    found = []
    for line in log.splitlines():
        match = REQUEST_LINE.match(line)
        if match:
            found.append(LoggedRequest(match["client"], int(match["port"]), match["user"], match["method"],
                                       match["path"], int(match["status"])))
    return found


def make_server(sock: socket, spec: Obj, pki_dir: str, log: TextIO, cdir: Path | None = None,
                mounts: list[Obj] | None = None) -> ApiServer:
    """Return an HTTPS API server on the listening socket ``sock`` with the cluster's certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(f"{pki_dir}/apiserver.crt", f"{pki_dir}/apiserver.key")
    context.load_verify_locations(f"{pki_dir}/ca.crt")
    context.verify_mode = ssl.CERT_OPTIONAL
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            log.write(f"{rfc3339()} {line}\n")
            log.flush()

    return ApiServer(sock, context, Cluster(spec, cdir, mounts, say), log)
