"""The kind cluster configuration: rendered from the packaged jinja2 template (ksi.templates), parsed back, checked."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksi import yamlio
from ksi.errors import KsiError

if TYPE_CHECKING:
    import jinja2

TEMPLATE = "kind-config.yaml.j2"


@dataclass(frozen=True)
class KindConfig:
    """What one node's kind cluster looks like."""

    cluster_name: str
    shared_dir: Path
    port: int
    node_image: str
    api_server_address: str = "127.0.0.1"
    udp_ports: tuple[int, ...] = field(default=())


def _yaml_str(value: object) -> str:
    """Quote ``value`` as a YAML scalar string (JSON strings are valid YAML flow scalars)."""
    return json.dumps(str(value))


@functools.cache
def template() -> jinja2.Template:
    """Load and compile the packaged template, once per process (a run warms it while it waits for kind)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("ksi.templates", "."), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True)  # noqa: S701 - YAML, not HTML
    env.filters["yaml_str"] = _yaml_str
    return env.get_template(TEMPLATE)


def render(config: KindConfig) -> str:
    """Return the kind config YAML for ``config``; raise KsiError if the result does not say what it should."""
    text = template().render(
        cluster_name=config.cluster_name,
        shared_dir=str(config.shared_dir),
        port=config.port,
        node_image=config.node_image,
        api_server_address=config.api_server_address,
        udp_ports=config.udp_ports,
    )
    problems = check(parse(text), config)
    if problems:
        raise KsiError("rendered kind config is wrong: " + "; ".join(problems), step="config",
                       fix="report this as a bug in templates/kind-config.yaml.j2")
    return text


def parse(text: str) -> dict[str, Any]:
    """Parse a kind config YAML document into a dict."""
    data = yamlio.load(text)
    if not isinstance(data, dict):
        raise KsiError("kind config is not a YAML mapping", step="config")
    return data


def check(data: dict[str, Any], config: KindConfig) -> list[str]:
    """Return every way in which the parsed ``data`` differs from what ``config`` asks for."""
    problems: list[str] = []

    def expect(what: str, actual: object, wanted: object) -> None:
        if actual != wanted:
            problems.append(f"{what} is {actual!r}, expected {wanted!r}")

    expect("kind", data.get("kind"), "Cluster")
    expect("apiVersion", data.get("apiVersion"), "kind.x-k8s.io/v1alpha4")
    expect("name", data.get("name"), config.cluster_name)
    expect("networking.apiServerAddress", (data.get("networking") or {}).get("apiServerAddress"),
           config.api_server_address)
    nodes = data.get("nodes") or []
    expect("roles of nodes", [n.get("role") for n in nodes], ["control-plane"])
    if len(nodes) == 1:
        node = nodes[0]
        expect("image", node.get("image"), config.node_image)
        expect("extraMounts", node.get("extraMounts"),
               [{"hostPath": str(config.shared_dir), "containerPath": "/app"}])
        wanted = [(config.port, "TCP")] + [(p, "UDP") for p in config.udp_ports]
        got = [(m.get("hostPort"), m.get("protocol")) for m in node.get("extraPortMappings") or []]
        expect("published ports", got, wanted)
        for mapping in node.get("extraPortMappings") or []:
            expect("containerPort", mapping.get("containerPort"), mapping.get("hostPort"))
    return problems


def write(config: KindConfig, path: Path) -> Path:
    """Render ``config`` into ``path`` and return the path."""
    path.write_text(render(config), encoding="utf-8")
    return path
