"""Command line: parses arguments, dispatches, and is the one place that prints errors and picks exit codes."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

from ksi import __version__, log
from ksi.errors import EXIT_FAILURE, EXIT_USAGE, ChecksFailed, Interrupted, KsiError
from ksi.slurm import context

_log = log.get(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ksi", description="A throw-away Kubernetes cluster for the length of one (Slurm) job.")
    parser.add_argument("--version", action="version", version=f"ksi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="create a cluster, run a workload against it, tear it down",
        description="Create a rootless kind cluster, run WORKLOAD with K8S_CLUSTER_NAME, K8S_CLUSTER_API, "
        "K8S_CLUSTER_API_TOKEN, K8S_PORT, KUBECONFIG and KSI_RUN_DIR set, and delete the cluster "
        "afterwards, whatever happens. Arguments after `--` go to the workload.")
    run.add_argument("workload", metavar="WORKLOAD", help="script or program to run")
    run.add_argument("shared_dir", metavar="SHARED_DIR", nargs="?", default=".",
                     help="directory shared by all nodes; mounted at /app (default: current directory)")
    run.add_argument("workload_args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                     help="arguments passed to the workload")
    run.add_argument("-p", "--port", help="K8S_PORT, a host port in 30000-32767 (default: $K8S_PORT, "
                     "else a random free one)")
    run.add_argument("--node-image", help="kind node image (default: $KSI_NODE_IMAGE, else the pinned one)")
    run.add_argument("--systemd-scope", choices=("auto", "always", "never"),
                     help="run kind under `systemd-run --user --scope` (default: $KSI_SYSTEMD_SCOPE or auto)")
    run.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    return parser


def node_name() -> str:
    """Return the short name of this node as Slurm knows it (SLURMD_NODENAME) or the hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def _report(node: str, exc: KsiError) -> None:
    """Print ``exc`` as one line per problem on stderr."""
    lines = [p.one_line() for p in exc.problems] if isinstance(exc, ChecksFailed) else [exc.one_line()]
    for line in lines:
        print(f"ksi[{node}] error: {log.redact(line)}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ksi command line and return the process exit code."""
    args = _parser().parse_args(argv)
    node = node_name()
    try:
        if args.command == "run":
            return _run(args, node)
    except KsiError as exc:
        _report(node, exc)
        return exc.exit_code
    return EXIT_USAGE


def _run(args: argparse.Namespace, node: str) -> int:
    from ksi import multinode
    from ksi.run import RunOptions, run
    from ksi.signals import SignalGuard

    extra = list(args.workload_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    elif extra:
        raise KsiError(f"unexpected argument {extra[0]!r}", fix="put workload arguments after `--`",
                       step="checks")
    log.setup(node, verbose=args.verbose)
    overrides = {k: v for k, v in (("node_image", args.node_image), ("systemd_scope", args.systemd_scope))
                 if v is not None}
    options = RunOptions(args.workload, tuple(extra), args.shared_dir, args.port, overrides)
    guard = SignalGuard()
    environ = dict(os.environ)
    slurm = context(environ)
    runner = multinode.run if slurm.in_step and slurm.step_nodes > 1 else run
    with guard.installed():
        try:
            return runner(options, slurm, node, guard, environ)
        except Interrupted as exc:
            _log.info("stopped by %s during %s; cluster torn down", exc.message.split()[1], exc.step)
            return exc.exit_code
        except KsiError:
            raise
        except Exception:
            _log.exception("internal error; please report it with the run directory's ksi.log")
            return EXIT_FAILURE
