"""Checks that run before ksi creates anything; every problem is reported at once, one line each."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ksi import log
from ksi.cluster.rundir import check_shared_dir
from ksi.cluster.workload import Workload, resolve
from ksi.errors import (
    EXIT_PREREQUISITE,
    EXIT_TOOL_MISSING,
    EXIT_USAGE,
    ChecksFailed,
    KsiError,
    Problem,
)
from ksi.host import cgroups
from ksi.host.netaddr import node_address
from ksi.host.ports import parse_port
from ksi.host.state import check_private_dir
from ksi.settings import Settings, env_name
from ksi.tools import proc
from ksi.tools.kind import Kind
from ksi.tools.liqoctl import MAJOR, Liqoctl

if TYPE_CHECKING:
    from ksi.images.plan import Supply

_log = log.get(__name__)


@dataclass(frozen=True)
class Plan:
    """Everything the checks established: inputs are valid and the tools are there."""

    workload: Workload
    shared_dir: Path
    port: int | None
    kind_version: tuple[int, int, int]
    kind_wrapper: tuple[str, ...]
    node_address: str = "127.0.0.1"
    images: Supply | None = None  # the image cache's entries this run uses (None: the registries)


def run_checks(
    workload: str,
    args: Sequence[str],
    shared_dir: str,
    port: str | None,
    settings: Settings,
    setting_problems: Sequence[Problem],
    environ: Mapping[str, str],
    kind_env: Mapping[str, str],
    *,
    multinode: bool = False,
    runs_workload: bool = True,
    meanwhile: Callable[[], object] = lambda: None,
) -> Plan:
    """Check inputs, settings, tools and the system; return the Plan or raise ChecksFailed with all problems.

    The checks that start commands (the tools' versions, the images) start first, side by side; ``meanwhile``
    (importing what the run needs later) and the checks ksi makes itself run while they do. The workload's
    interpreter is checked only where it will run (``runs_workload``: the leader of a multi-node run), since
    the other nodes never start it.
    """
    problems: list[Problem] = list(setting_problems)
    state_problem = check_private_dir(settings.state_dir, create=True)  # before the image checks write to it
    with concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="checks") as pool:
        tools = pool.submit(tool_checks, settings.provider, kind_env)
        liqo = pool.submit(liqo_check, kind_env) if multinode else None
        images = pool.submit(image_checks, settings, kind_env, liqo)
        meanwhile()
        resolved = resolve(workload, args, environ.get("PATH", os.defpath), check_interpreter=runs_workload)
        if isinstance(resolved, Problem):
            problems.append(resolved)
        shared = check_shared_dir(shared_dir)
        if isinstance(shared, Problem):
            problems.append(shared)
        chosen = wanted_port(port, environ)
        if isinstance(chosen, Problem):
            problems.append(chosen)
        if state_problem is not None:
            problems.append(state_problem)
        wrapper = cgroups.scope_wrapper(settings.systemd_scope)
        problems += system_problems(wrapper, kind_env)
        version, tool_problems = tools.result()
        problems += tool_problems
        if liqo is not None:
            problems += liqo.result()[1]
        supply, image_problems = images.result()
        problems += image_problems
    address = "127.0.0.1"
    if multinode:
        found = node_address(settings.node_address)
        if found is None:
            problems.append(Problem(EXIT_PREREQUISITE, "cannot tell this node's address (no IPv4 default route)",
                                    f"set {env_name('node_address')} to the address other nodes reach this one at"))
        address = found or address

    if problems:
        raise ChecksFailed(problems)
    assert isinstance(resolved, Workload) and isinstance(shared, Path) and not isinstance(chosen, Problem)
    if runs_workload and resolved.via_bash:
        _log.info("checks: %s %s; running it with bash", resolved.path, resolved.via_bash)
    return Plan(resolved, shared, chosen, version, wrapper, address, supply)


def wanted_port(port: str | None, environ: Mapping[str, str]) -> int | Problem | None:
    """Return the K8S_PORT asked for (``--port``, else $K8S_PORT), None for any free one, or the problem."""
    if port is not None:
        return parse_port(port, "--port")
    if environ.get("K8S_PORT"):
        return parse_port(environ["K8S_PORT"], "K8S_PORT")
    return None


def kind_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """Return the environment kind and the runtime run with: provider explicit, no inherited KUBECONFIG."""
    env = dict(environ)
    env.pop("KUBECONFIG", None)  # kind gets --kubeconfig; never fall back to ~/.kube/config
    env["KIND_EXPERIMENTAL_PROVIDER"] = settings.provider
    runtime_dir = Path(f"/run/user/{os.getuid()}")
    if runtime_dir.is_dir() and runtime_dir.stat().st_uid == os.getuid():
        # srun copies the login node's XDG_RUNTIME_DIR; rootless containerd listens in this node's.
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    return env


def system_problems(wrapper: tuple[str, ...], kind_env: Mapping[str, str]) -> list[Problem]:
    """Check cgroup v2 and, when kind needs a systemd scope, that systemd-run is there."""
    problems = []
    if not cgroups.is_v2():
        problems.append(Problem(EXIT_PREREQUISITE, "cgroup v2 is not mounted at /sys/fs/cgroup "
                                "(rootless kind needs the unified hierarchy)",
                                "boot the node with systemd.unified_cgroup_hierarchy=1 (see setup/README.md)"))
    if wrapper and proc.which(wrapper[0], kind_env) is None:
        problems.append(Problem(EXIT_TOOL_MISSING, "this process's cgroup has no delegated cpu/memory/pids "
                                "controllers and systemd-run is not on PATH",
                                f"install systemd, or set {env_name('systemd_scope')}=never if delegation is "
                                "configured otherwise"))
    return problems


def tool_checks(provider: str, kind_env: Mapping[str, str]) -> tuple[tuple[int, int, int], list[Problem]]:
    """Check that kind (new enough) and the container runtime are on PATH; return kind's version."""
    problems = []
    version: tuple[int, int, int] = (0, 0, 0)
    if proc.which("kind", kind_env) is None:
        problems.append(Problem(EXIT_TOOL_MISSING, "kind not found on PATH",
                                "install kind >= v0.23 (see setup/README.md) and put it on PATH"))
    else:
        try:
            version = Kind(kind_env).version()
        except KsiError as exc:
            problems.append(Problem(exc.exit_code, exc.message, exc.fix or "install kind >= v0.23"))
    if proc.which(provider, kind_env) is None:
        problems.append(Problem(EXIT_TOOL_MISSING, f"{provider} (kind's container runtime) not found on PATH",
                                f"install rootless {provider} (see setup/README.md)"))
    return version, problems


def image_checks(settings: Settings, kind_env: Mapping[str, str],
                 liqo: concurrent.futures.Future[tuple[str | None, list[Problem]]] | None,
                 ) -> tuple[Supply | None, list[Problem]]:
    """Check where this run's images come from; return the cache's Supply (None without a cache) and problems.

    With a cache: every archive the run needs is there and intact. Without: this node's store holds the
    node image, pulled now if missing. Skipped when the container runtime is missing (tool_checks says so).
    """
    from ksi.images.plan import check_cache, check_registry
    from ksi.tools.nerdctl import Nerdctl

    if proc.which(settings.provider, kind_env) is None:
        return None, []
    nerdctl = Nerdctl(kind_env)
    if settings.image_cache:
        liqo_version = (lambda: liqo.result()[0]) if liqo is not None else None
        supply, problems = check_cache(Path(settings.image_cache), settings.node_image, liqo_version,
                                       settings.state_dir, nerdctl)
        if liqo is not None and settings.liqo_chart:
            problems.append(Problem(EXIT_USAGE, f"{env_name('liqo_chart')} and the image cache both give Liqo's "
                                    "chart", f"unset {env_name('liqo_chart')}: the cache's chart is the one its "
                                    "images were saved for"))
        return supply, problems
    return None, check_registry(settings.node_image, nerdctl, settings.create_timeout)


def liqo_problems(kind_env: Mapping[str, str]) -> list[Problem]:
    """Check that liqoctl v1 is on PATH and its ``peer`` has the gateway flags ksi uses (multi-node runs)."""
    return liqo_check(kind_env)[1]


def liqo_check(kind_env: Mapping[str, str]) -> tuple[str | None, list[Problem]]:
    """Return liqoctl's version as it writes it (``v1.0.1``) and the problems with it (multi-node runs).

    Runs ``liqoctl version --client`` and ``liqoctl peer --help`` (:meth:`ksi.tools.liqoctl.Liqoctl.client`).
    """
    fix = f"install liqoctl v{MAJOR}.x (see setup/README.md) and put it on PATH"
    if proc.which("liqoctl", kind_env) is None:
        return None, [Problem(EXIT_TOOL_MISSING, "liqoctl not found on PATH (a multi-node run peers its clusters "
                              "with Liqo)", fix)]
    try:
        client = Liqoctl(kind_env).client()
    except KsiError as exc:
        return None, [Problem(EXIT_TOOL_MISSING, exc.message, fix)]
    if client.usable:  # the rule `ksi doctor` applies too
        return client.shown if client.shown.startswith("v") else f"v{client.shown}", []
    if client.wrong_major:
        return None, [Problem(EXIT_TOOL_MISSING, f"liqoctl {client.shown} is not a Liqo v{MAJOR} client", fix)]
    return None, [Problem(EXIT_TOOL_MISSING, f"liqoctl {client.shown} has no {', '.join(client.missing_flags)} on "
                          "`liqoctl peer` (the gateway set-up behind the rootless NAT)",
                          f"install a newer liqoctl v{MAJOR} (v1.0.1 or later)")]
