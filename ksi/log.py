"""Logging, configured once: console lines prefixed with the node, a DEBUG file per run, secrets redacted."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

ROOT = "ksi"
REDACTED = "***"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(secret: str) -> None:
    """Make every later log record (console and file) show ``***`` instead of ``secret``."""
    if len(secret) >= 8:
        with _secrets_lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced."""
    with _secrets_lock:
        secrets = list(_secrets)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class _RedactingFilter(logging.Filter):
    """Formats the record once and strips registered secrets from the result."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class _Buffer(logging.Handler):
    """Keeps every record until the run directory (and with it the log file) exists.

    A handler of its own rather than logging.handlers.MemoryHandler, whose module (sockets, pickle, queues)
    would cost ksi's start 10 ms.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def replay(self, handler: logging.Handler) -> None:
        """Hand every record kept so far to ``handler``."""
        for record in self.records:
            if record.levelno >= handler.level:
                handler.handle(record)
        self.records.clear()


_buffer: _Buffer | None = None
_file: logging.FileHandler | None = None
_FILE_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s [%(process)d] %(message)s"


def setup(node: str, *, verbose: bool = False) -> None:
    """Configure the ``ksi`` logger: console on stderr (INFO, or DEBUG with -v) and a buffer for the file."""
    global _buffer
    logger = logging.getLogger(ROOT)
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter(f"ksi[{node}] %(message)s"))
    console.addFilter(_RedactingFilter())
    logger.addHandler(console)
    _buffer = _Buffer()
    _buffer.addFilter(_RedactingFilter())
    logger.addHandler(_buffer)


def attach_file(path: Path) -> None:
    """Start the DEBUG log file at ``path`` (created 0600) and write the records buffered so far into it."""
    global _buffer, _file
    logger = logging.getLogger(ROOT)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(_FILE_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(_RedactingFilter())
    if _buffer is not None:
        logger.removeHandler(_buffer)
        _buffer.replay(handler)
        _buffer.close()
        _buffer = None
    logger.addHandler(handler)
    _file = handler


def detach_file() -> None:
    """Flush and close the DEBUG log file."""
    global _file
    if _file is not None:
        logging.getLogger(ROOT).removeHandler(_file)
        _file.close()
        _file = None


def get(name: str) -> logging.Logger:
    """Return the module logger for ``ksi.<name>``."""
    return logging.getLogger(f"{ROOT}.{name.removeprefix('ksi.')}")
