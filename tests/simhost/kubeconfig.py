"""Kubeconfig files: written the way kind writes them (lock, merge, remove) and read the way clients do."""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LOCK_ATTEMPTS = 5  # kind (after client-go) tries the lock file 5 times, 100 ms apart
LOCK_BACKOFF = 0.1


class KubeconfigError(Exception):
    """A kubeconfig could not be locked, read or written; the message is kind's or client-go's."""


def kind_key(cluster: str) -> str:
    """Return the name kind gives a cluster's cluster, user and context entries: ``kind-<name>``."""
    return f"kind-{cluster}"


def paths(explicit: str) -> list[str]:
    """Return the kubeconfig files to consider: --kubeconfig, else $KUBECONFIG's list, else ~/.kube/config."""
    if explicit:
        return [explicit]
    listed = list(dict.fromkeys(p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p))
    return listed or [os.path.join(os.environ.get("HOME", ""), ".kube", "config")]


def path_for_merge(explicit: str) -> str:
    """Return the file kind merges into: the only one, else the first that exists, else the last."""
    candidates = paths(explicit)
    if len(candidates) == 1:
        return candidates[0]
    return next((p for p in candidates if os.path.isfile(p)), candidates[-1])


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold ``<path>.lock`` (created with O_EXCL); give up after kind's few retries if it stays."""
    directory = os.path.dirname(path) or "."
    if not os.path.exists(directory):
        os.makedirs(directory, 0o755)
    lock = path + ".lock"
    reason = ""
    for _ in range(LOCK_ATTEMPTS):
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0))
            break
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            time.sleep(LOCK_BACKOFF)
    else:
        raise KubeconfigError(f"failed to lock config file: open {lock}: {reason}")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"yaml: line {mark.line + 1}: {problem}" if mark is not None else f"yaml: {problem}"


def read(path: str) -> dict[str, Any]:
    """Return the kubeconfig at ``path`` ({} when missing or empty); raise KubeconfigError on bad YAML."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError(_yaml_problem(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KubeconfigError("yaml: unmarshal errors:\n  line 1: cannot unmarshal !!seq into kubeconfig.Config"
                              if isinstance(data, list) else
                              f"yaml: unmarshal errors:\n  line 1: cannot unmarshal !!str `{data}` into "
                              "kubeconfig.Config")
    return data


def encode(config: dict[str, Any]) -> str:
    """Encode a kubeconfig as kind does (sorted keys, block style; nothing at all when empty)."""
    if not config:
        return ""
    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False, width=1 << 30)


def write(config: dict[str, Any], path: str) -> None:
    """Write ``config`` to ``path`` in place (mode 0600 when the file is created), like kind."""
    os.makedirs(os.path.dirname(path) or ".", 0o755, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(encode(config))


def build(cluster: str, user: str, context: str, server: str, ca: bytes, cert: bytes, key: bytes) -> dict[str, Any]:
    """Return a one-context kubeconfig with embedded CA, client certificate and key."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": context,
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
    }


def for_cluster(cluster: str, server: str, ca: bytes, cert: bytes, key: bytes) -> dict[str, Any]:
    """Return the kubeconfig kind derives from a node's admin.conf: every entry named ``kind-<cluster>``."""
    name = kind_key(cluster)
    return build(name, name, name, server, ca, cert, key)


def merge(existing: dict[str, Any], kind_config: dict[str, Any]) -> None:
    """Merge kind's entries into ``existing``: replace same-named entries, append others, set current-context."""
    for section in ("clusters", "users", "contexts"):
        entries = list(existing.get(section) or [])
        new = kind_config[section][0]
        positions = [i for i, entry in enumerate(entries)
                     if isinstance(entry, dict) and entry.get("name") == new["name"]]
        for i in positions:
            entries[i] = new
        if not positions:
            entries.append(new)
        existing[section] = entries
    existing["current-context"] = kind_config["current-context"]
    if not set(existing) - {"clusters", "users", "contexts", "current-context"}:
        existing.update({k: kind_config[k] for k in ("apiVersion", "kind", "preferences")})


def remove(config: dict[str, Any], cluster: str) -> bool:
    """Drop ``kind-<cluster>`` entries (and current-context if it is that); return True if anything changed."""
    key_name = kind_key(cluster)
    mutated = False
    for section in ("clusters", "users", "contexts"):
        entries = config.get(section)
        if isinstance(entries, list):
            kept = [e for e in entries if not (isinstance(e, dict) and e.get("name") == key_name)]
            mutated |= len(kept) != len(entries)
            config[section] = kept
    if config.get("current-context") == key_name:
        config["current-context"] = ""
        mutated = True
    return mutated


# ------------------------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class Client:
    """What a client needs from a kubeconfig context: server, trust and credentials."""

    server: str
    ca: bytes | None
    cert: bytes | None
    key: bytes | None
    token: str | None
    insecure: bool


def load_client(path: str, context: str | None = None) -> Client:
    """Read the client settings of ``context`` (default: current-context) from the kubeconfig at ``path``."""
    try:
        config = read(path)
    except KubeconfigError as exc:
        raise KubeconfigError(f"error loading config file \"{path}\": {exc}") from None
    name = context or config.get("current-context")
    if not name:
        raise KubeconfigError("invalid configuration: no configuration has been provided, try setting "
                              "KUBERNETES_MASTER environment variable")

    def entry(section: str, wanted: str, what: str) -> dict[str, Any]:
        for item in config.get(section) or []:
            if isinstance(item, dict) and item.get("name") == wanted:
                value = item.get(what)
                return value if isinstance(value, dict) else {}
        raise KubeconfigError(f'{what} "{wanted}" does not exist')

    ctx = entry("contexts", name, "context")
    cluster = entry("clusters", str(ctx.get("cluster")), "cluster")
    user = entry("users", str(ctx.get("user")), "user") if ctx.get("user") else {}
    base = Path(path).resolve().parent

    def material(data_key: str, file_key: str, source: dict[str, Any]) -> bytes | None:
        if source.get(data_key):
            return base64.b64decode(source[data_key])
        if source.get(file_key):
            return (base / str(source[file_key])).read_bytes()
        return None

    return Client(server=str(cluster.get("server") or ""),
                  ca=material("certificate-authority-data", "certificate-authority", cluster),
                  cert=material("client-certificate-data", "client-certificate", user),
                  key=material("client-key-data", "client-key", user),
                  token=user.get("token"), insecure=bool(cluster.get("insecure-skip-tls-verify")))
