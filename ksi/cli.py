"""Command line: parses arguments, dispatches, and is the one place that prints errors and picks exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from ksi import log
from ksi.errors import EXIT_FAILURE, EXIT_PREREQUISITE, ChecksFailed, Interrupted, KsiError, UsageError
from ksi.host.signals import SignalGuard
from ksi.host.slurm import context, node_name
from ksi.settings import Settings

DEFAULT_CACHE = "ksi-images"  # ksi.images.manifest.DEFAULT_DIR, named here without importing it
_log = log.get(__name__)


class _VersionAction(argparse.Action):
    """``--version``: print the installed package's version (read from its metadata only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str = "show ksi's version and exit") -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        """Print ``ksi VERSION`` and exit 0."""
        from ksi import __version__

        print(f"ksi {__version__}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ksi", description="A throw-away Kubernetes cluster for the length of one (Slurm) job.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verbose = argparse.ArgumentParser(add_help=False)  # the option of every command that logs
    verbose.add_argument("-v", "--verbose", action="store_true", help="print debug messages")

    run = commands.add_parser(
        "run", parents=[verbose], help="create a cluster, run a workload against it, tear it down",
        description="Create a rootless kind cluster, run WORKLOAD with K8S_CLUSTER_NAME, K8S_CLUSTER_API, "
        "K8S_CLUSTER_API_TOKEN, K8S_PORT, KUBECONFIG and KSI_RUN_DIR set, and delete the cluster "
        "afterwards, whatever happens. Arguments after `--` go to the workload. With --tasks SPEC the "
        "workload is `ksi tasks run SPEC` (arguments after `--` go to it).",
        usage="%(prog)s [options] WORKLOAD [SHARED_DIR] [-- ARGS...]\n       %(prog)s [options] --tasks SPEC "
        "[SHARED_DIR] [-- TASKS-RUN-OPTIONS...]")
    run.add_argument("workload", metavar="WORKLOAD", nargs="?", help="script or program to run")
    run.add_argument("shared_dir", metavar="SHARED_DIR", nargs="?", default=".",
                     help="directory shared by all nodes; mounted at /app (default: current directory)")
    run.add_argument("-p", "--port", help="K8S_PORT, a host port in 30000-32767 (default: $K8S_PORT, "
                     "else a random free one)")
    run.add_argument("--node-image", help="kind node image (default: $KSI_NODE_IMAGE, else the pinned one)")
    run.add_argument("--systemd-scope", choices=("auto", "always", "never"),
                     help="run kind under `systemd-run --user --scope` (default: $KSI_SYSTEMD_SCOPE or auto)")
    run.add_argument("--image-cache", metavar="DIR",
                     help="load images from DIR, written by `ksi images save`; contact no registry "
                     "(default: $KSI_IMAGE_CACHE, else pull what is missing)")
    run.add_argument("--no-clean-stale", dest="clean_stale", action="store_false", default=None,
                     help="do not remove your stale clusters on this node first (default: $KSI_CLEAN_STALE or do)")
    run.add_argument("--tasks", metavar="SPEC", help="run the tasks of SPEC as the workload (see `ksi tasks`)")

    from ksi.tasks.args import add_parser as add_tasks_parser

    add_tasks_parser(commands)

    listing = commands.add_parser(
        "list", parents=[verbose], help="list your ksi clusters on this node and whether their job or process is alive",
        description="List the clusters ksi created on this node for you: name, Slurm job (or standalone "
        "process), state (running: its job or ksi process is alive; stale: both are gone; unknown: found "
        "through kind and the container label but without a readable record), age, K8S_PORT, run directory.")
    listing.add_argument("--json", action="store_true", help="print a JSON array of objects instead of a table")

    clean = commands.add_parser(
        "cleanup", parents=[verbose], help="delete your stale (or selected) ksi clusters on this node",
        description="Delete ksi clusters of yours on this node with the same verified teardown as `ksi run`, "
        "release their ports and remove their secrets (logs are kept). Never touches a cluster of a running "
        "job unless that job is named, another user's clusters, clusters ksi did not create, or kind's "
        "network. Safe to run concurrently with itself and with `ksi run`.")
    which = clean.add_mutually_exclusive_group()
    which.add_argument("--stale", action="store_true",
                       help="clusters whose job or standalone process is gone (the default)")
    which.add_argument("--job", metavar="ID", help="the clusters of Slurm job ID, whatever their state")
    which.add_argument("--all", action="store_true", help="every ksi cluster of yours on this node")
    clean.add_argument("--dry-run", action="store_true", help="print what would be deleted; change nothing")

    images = commands.add_parser(
        "images", help="save the images runs need to shared storage (for nodes without internet); list them",
        description="`ksi images save` (where there is internet) writes the kind node image, Liqo's chart and "
        "images, and workload images into a cache directory on shared storage; `ksi run --image-cache DIR` "
        "then loads them on every node and contacts no registry.")
    verbs = images.add_subparsers(dest="images_command", required=True, metavar="VERB")
    save = verbs.add_parser(
        "save", parents=[verbose], help="save the node image, Liqo's chart and images, and IMAGEs into the cache",
        description="Save the kind node image ksi uses, Liqo's chart for the liqoctl here (or --liqo-version) "
        "with every image the chart names, and each IMAGE, as archives with a manifest (reference, digest, "
        "file, size, sha256, purpose) in DIR. What is saved already and verifies is kept; workload images "
        "saved before are kept too.")
    save.add_argument("images", metavar="IMAGE", nargs="*", help="workload image to save as well")
    save.add_argument("--dir", help=f"the cache directory (default: $KSI_IMAGE_CACHE, else ./{DEFAULT_CACHE})")
    save.add_argument("--node-image", help="kind node image (default: $KSI_NODE_IMAGE, else the pinned one)")
    save.add_argument("--liqo-version", metavar="VERSION",
                      help="Liqo release to save (default: the version of liqoctl on PATH)")
    show = verbs.add_parser(
        "list", parents=[verbose], help="what the cache holds and whether it is complete for this ksi",
        description="List the cache's entries and the state of their files; say whether it has everything a "
        "run of this ksi needs (the node image it uses, Liqo's chart and images for the liqoctl here). Exit 0 "
        "when complete, 3 when not.")
    show.add_argument("--dir", help=f"the cache directory (default: $KSI_IMAGE_CACHE, else ./{DEFAULT_CACHE})")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.add_argument("--verify", action="store_true", help="also check every file's sha256")

    doctor = commands.add_parser(
        "doctor", help="check that this node can run ksi",
        description="Check this node's prerequisites (cgroup v2 and delegation, kernel modules, kernel and "
        "WireGuard, kind, nerdctl, liqoctl, rootless containerd, runtime directory, subordinate ids, inotify "
        "limits, node-local container storage, the shared directory, Slurm's KillWait against the grace period "
        "and a teardown), one line each with the fix of each "
        "failure. Exit 0 only when all pass. `srun -N<nodes> ksi doctor` checks a whole partition.")
    doctor.add_argument("shared_dir", metavar="SHARED_DIR", nargs="?", default=".",
                        help="the directory runs will share (default: current directory)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object with node and checks")
    return parser


def _report(node: str, exc: KsiError) -> None:
    """Print ``exc`` as one line per problem on stderr."""
    lines = [p.one_line() for p in exc.problems] if isinstance(exc, ChecksFailed) else [exc.one_line()]
    for line in lines:
        print(f"ksi[{node}] error: {log.redact(line)}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ksi command line and return the process exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` belongs to the workload, whatever it looks like.
    workload_args = words[words.index("--") + 1:] if "--" in words else []
    parser = _parser()
    args = parser.parse_args(words[: words.index("--")] if "--" in words else words)
    args.workload_args = workload_args
    if args.command == "run" and args.tasks is not None and args.workload is not None:
        if args.shared_dir != ".":
            parser.error("with --tasks SPEC, give at most one more argument: SHARED_DIR")
        args.workload, args.shared_dir = None, args.workload
    elif args.command == "run" and args.tasks is None and args.workload is None:
        parser.error("the following arguments are required: WORKLOAD (or --tasks SPEC)")
    node = node_name(os.environ)
    commands = {"run": _run, "list": _list, "cleanup": _cleanup, "doctor": _doctor, "images": _images,
                "tasks": _tasks}
    try:
        return commands[args.command](args, node)
    except KsiError as exc:
        _report(node, exc)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C in `ksi list` or `ksi doctor`, which change nothing
        return 128 + signal.SIGINT


def _run(args: argparse.Namespace, node: str) -> int:
    from ksi.launch.lifecycle import RunOptions

    extra = list(args.workload_args)
    log.setup(node, verbose=args.verbose)
    if args.tasks is not None:  # checked before anything is created; the workload runs `ksi tasks run SPEC`
        from ksi.tasks.cli import as_workload

        args.workload, extra = as_workload(args.tasks, args.shared_dir, extra)
    overrides = {k: v for k, v in (("node_image", args.node_image), ("systemd_scope", args.systemd_scope),
                                   ("clean_stale", None if args.clean_stale is None else "0"),
                                   ("image_cache", args.image_cache)) if v is not None}
    options = RunOptions(args.workload, tuple(extra), args.shared_dir, args.port, overrides)
    guard = SignalGuard()
    environ = dict(os.environ)
    slurm = context(environ)
    if slurm.in_step and slurm.step_nodes > 1:
        from ksi.launch.multinode import run as runner
    else:
        from ksi.launch.run import run as runner
    with guard.installed():
        try:
            return runner(options, slurm, node, guard, environ)
        except Interrupted as exc:
            _log.info("stopped by %s during %s", exc.name, exc.step)
            return exc.exit_code
        except KsiError:
            raise
        except Exception:
            _log.exception("internal error; please report it with the run directory's ksi.log")
            return EXIT_FAILURE


def _images(args: argparse.Namespace, node: str) -> int:
    from ksi import settings as settings_mod
    from ksi.launch.preflight import kind_environment

    log.setup(node, verbose=args.verbose)
    environ = dict(os.environ)
    overrides = {"node_image": args.node_image} if getattr(args, "node_image", None) else {}
    settings, problems = settings_mod.load(environ, overrides)
    if problems:
        raise ChecksFailed(problems)
    kind_env = kind_environment(settings, environ)
    if args.images_command == "list":
        from ksi.images.report import show

        return show(args.dir, settings, kind_env, node, as_json=args.json, verify=args.verify)
    from ksi.images.save import save

    with SignalGuard().installed():  # a stop signal kills the pull or save under way, as in `ksi run`
        try:
            return save(args.dir, args.images, args.liqo_version, settings, kind_env)
        except Interrupted as exc:
            _log.info("images: stopped by %s; what was saved so far is in the manifest", exc.name)
            return exc.exit_code


def _tasks(args: argparse.Namespace, node: str) -> int:
    from ksi.tasks.cli import main as tasks_main

    if args.workload_args:
        raise UsageError(f"`ksi tasks` takes no arguments after `--` ({' '.join(args.workload_args)})",
                         step="tasks", fix="remove the `--` and what follows it")
    return tasks_main(args, node)


def _node_settings(environ: dict[str, str]) -> tuple[Settings, dict[str, str]]:
    """Return the settings list and cleanup use (provider, state directory, teardown budget) and kind's env.

    Other settings are not read: a bad value of an unrelated one must not stop a cleanup (the Slurm epilog).
    """
    from ksi import settings as settings_mod
    from ksi.launch.preflight import kind_environment

    used = {settings_mod.env_name(f) for f in ("provider", "state_dir", "teardown_timeout")}
    loaded, problems = settings_mod.load({k: v for k, v in environ.items() if k in used})
    if problems:
        raise ChecksFailed(problems)
    return loaded, kind_environment(loaded, environ)


def _age(seconds: float | None) -> str:
    """Return an age such as ``45s``, ``12m``, ``3h05m`` or ``2d04h``."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _list(args: argparse.Namespace, node: str) -> int:
    import json
    import time

    from ksi.admin.inventory import JobStates, take
    from ksi.host.slurm import node_names

    log.setup(node, verbose=args.verbose)
    environ = dict(os.environ)
    settings, kind_env = _node_settings(environ)
    inventory = take(settings, kind_env, node_names(environ), JobStates(kind_env))
    for warning in inventory.warnings:
        print(f"ksi[{node}] warning: list: {warning}", file=sys.stderr, flush=True)
    now = time.time()
    if args.json:
        print(json.dumps([{"node": node, **c.as_dict(now)} for c in inventory.clusters]), flush=True)
        return 0
    if not inventory.clusters:
        print(f"ksi[{node}] list: no ksi clusters of yours on this node", flush=True)
        return 0
    rows = [("NODE", "NAME", "JOB", "STATE", "AGE", "K8S_PORT", "RUN_DIR", "WHY")]
    rows += [(node, c.name, c.owner, c.state, _age(now - c.created if c.created else None),
              ",".join(map(str, c.ports)) or "-", c.run_dir or "-", c.reason) for c in inventory.clusters]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1],
              flush=True)
    return 0


def _cleanup(args: argparse.Namespace, node: str) -> int:
    from ksi.admin.cleanup import ALL, JOB, STALE, Selection, cleanup

    log.setup(node, verbose=args.verbose)
    if args.job is not None and not args.job.isdigit():
        raise UsageError(f"--job {args.job!r} is not a numeric Slurm job id", step="cleanup",
                         fix=f"give the job's own id (for an array task: `squeue -h -j {args.job} -o %A`)")
    selection = Selection(JOB, args.job) if args.job is not None else Selection(ALL if args.all else STALE)
    settings, kind_env = _node_settings(dict(os.environ))
    guard = SignalGuard()
    with guard.installed():
        guard.disarm()  # all of a cleanup is teardown: a stop signal ends it between clusters, never inside one
        report = cleanup(settings, kind_env, selection, dry_run=args.dry_run, stop=lambda: guard.first)
    for warning in report.warnings:
        print(f"ksi[{node}] warning: cleanup: {warning}", file=sys.stderr, flush=True)
    for outcome in report.outcomes:
        c = outcome.cluster
        if outcome.action == "failed":
            continue
        tail = f": {outcome.detail}" if outcome.detail else ""
        print(f"ksi[{node}] cleanup: {outcome.action} {c.name} ({c.owner}, {c.state}: {c.reason}){tail}", flush=True)
    if not report.outcomes:
        print(f"ksi[{node}] cleanup: no {selection.describe()} to delete", flush=True)
    if selection.mode == STALE:
        for c in report.kept:
            print(f"ksi[{node}] cleanup: kept {c.name} ({c.owner}, {c.state}: {c.reason})", flush=True)
    for outcome in report.failed:
        line = f"cleanup: could not delete {outcome.cluster.name}: {outcome.detail}"
        line += f"; fix: {outcome.fix}" if outcome.fix else ""
        print(f"ksi[{node}] error: {line}", file=sys.stderr, flush=True)
    if report.stopped_by is not None:
        left = f" before deleting {', '.join(c.name for c in report.skipped)}" if report.skipped else ""
        print(f"ksi[{node}] error: cleanup: stopped by {signal.Signals(report.stopped_by).name}{left}; "
              "fix: run `ksi cleanup` again", file=sys.stderr, flush=True)
        return 128 + report.stopped_by
    return EXIT_FAILURE if report.failed else 0


def _doctor(args: argparse.Namespace, node: str) -> int:
    import json

    from ksi import settings as settings_mod
    from ksi.admin.doctor import Host, run_checks
    from ksi.launch.preflight import kind_environment

    environ = dict(os.environ)
    used = {settings_mod.env_name(f) for f in ("state_dir", "grace_period", "teardown_timeout")}
    loaded, problems = settings_mod.load({k: v for k, v in environ.items() if k in used})
    if problems:
        raise ChecksFailed(problems)
    host = Host.this_node(kind_environment(loaded, environ), loaded.provider)
    checks = run_checks(host, args.shared_dir, loaded)
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"node": node, "ok": ok, "checks": [c.as_dict() for c in checks]}), flush=True)
    else:
        lines = [f"ksi[{node}] doctor: {c.line()}" for c in checks]
        passed = sum(c.ok for c in checks)
        lines.append(f"ksi[{node}] doctor: {passed} of {len(checks)} checks passed"
                     + ("" if ok else f"; {node} cannot run ksi until the failures are fixed"))
        print("\n".join(lines), flush=True)
    return 0 if ok else EXIT_PREREQUISITE
