"""``ksi tasks run`` and ``ksi tasks status``: arguments, the order of the steps, what is printed, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ksi import log
from ksi.cluster.rundir import RUNS
from ksi.errors import EXIT_FAILURE, ChecksFailed, UsageError
from ksi.tasks import results as res
from ksi.tasks.args import add_parser
from ksi.tasks.expand import Renderer, Task, describe, prepare
from ksi.tasks.progress import Progress, summary_table
from ksi.tasks.runner import Runner, select
from ksi.tasks.spec import Spec
from ksi.tasks.stopping import StopFlag

_log = log.get(__name__)
APP = "/app"
_DEFAULT_GRACE = 5.0


def main(args: argparse.Namespace, node: str) -> int:
    """Dispatch ``ksi tasks VERB``."""
    if args.tasks_command == "status":
        from ksi.tasks.status import main as status

        return status(Path(args.results), as_json=args.json)
    return run(args, node, dict(os.environ))


def as_workload(spec_text: str, shared_dir: str, extra: list[str]) -> tuple[str, list[str]]:
    """Check SPEC for ``ksi run --tasks`` before any cluster exists; return the workload and its arguments.

    The workload is this Python running ``ksi tasks run SPEC EXTRA...`` (``-P``: a ``ksi`` directory in the
    working directory must not shadow the installed package).
    """
    parser = argparse.ArgumentParser(prog="ksi run --tasks SPEC --", add_help=False)
    add_parser(parser.add_subparsers(dest="command"))  # the options of `ksi tasks run`, as given after --
    args, unknown = parser.parse_known_args(["tasks", "run", spec_text, *extra])
    if unknown:
        raise UsageError(f"`ksi tasks run` has no option {' '.join(unknown)} (given after --)", step="tasks",
                         fix="give only --results DIR, --rerun-failed, --force, --progress or -v after --")
    if args.dry_run or args.local:
        raise UsageError(f"--{'dry-run' if args.dry_run else 'local'} needs no cluster", step="tasks",
                         fix=f"run `ksi tasks run {spec_text} --{'dry-run' if args.dry_run else 'local'}` instead")
    spec, _, _, _ = load(spec_text, Path(shared_dir).expanduser().absolute(), args.results)
    if args.progress == "auto":  # the workload's output reaches this terminal through ksi run's pipe
        extra = [*extra, "--progress", "terminal" if sys.stderr.isatty() else "lines"]
    return sys.executable, ["-P", "-m", "ksi", "tasks", "run", str(spec.path), *extra]


def load(spec_text: str, shared: Path, results_arg: str | None) -> tuple[Spec, list[Task], Path, dict[str, Any]]:
    """Prepare the SPEC and read its earlier results; raise ChecksFailed if a task's parameters changed.

    Returns the SPEC, its tasks, the results directory (``--results`` relative to the working directory,
    the SPEC's ``results:`` relative to ``shared``) and the earlier results by task name.
    """
    spec, tasks = prepare(Path(spec_text).absolute())
    results_dir = res.results_path(results_arg, Path.cwd()) if results_arg else res.results_path(spec.results, shared)
    previous = res.Results(results_dir).read_all(t.name for t in tasks)
    problems = res.changed_params(spec.path, ((t.name, t.param_dict) for t in tasks), previous)
    if problems:
        raise ChecksFailed(problems)
    return spec, tasks, results_dir, previous


def shared_directory(environ: Mapping[str, str]) -> Path:
    """Return the shared directory: the ksi run's (KSI_RUN_DIR is <shared>/ksi-runs/<run>), else the cwd."""
    run_dir = environ.get("KSI_RUN_DIR")
    if run_dir:
        path = Path(run_dir).absolute()
        if path.parent.name == RUNS:
            return path.parent.parent
    return Path.cwd()


def _stop_budget(environ: Mapping[str, str]) -> float:
    """Return the seconds a stop may take: a little less than the grace a signalled workload gets."""
    from ksi import settings as settings_mod

    name = settings_mod.env_name("grace_period")
    loaded, problems = settings_mod.load({k: v for k, v in environ.items() if k == name})
    if problems:
        raise ChecksFailed(problems)
    return max(loaded.grace_period - 1.0, 1.0)


def run(args: argparse.Namespace, node: str, environ: Mapping[str, str]) -> int:
    """Run ``ksi tasks run``; return the exit status."""
    log.setup(node, verbose=args.verbose)
    shared = shared_directory(environ)
    spec, tasks, results_dir, previous = load(args.spec, shared, args.results)
    results = res.Results(results_dir)
    chosen = select(tasks, previous, rerun_failed=args.rerun_failed, force=args.force)
    renderer = Renderer(spec, str(shared) if args.local else APP)
    if args.dry_run:
        return _dry_run(tasks, previous, chosen.to_run, renderer, results_dir)
    if not args.local and not environ.get("KUBECONFIG"):
        raise UsageError("KUBECONFIG is not set: `ksi tasks run` runs the tasks on the cluster of a ksi run",
                         step="tasks", fix="run it inside a ksi workload (or `ksi run --tasks SPEC`), or add --local")
    stop_budget = _stop_budget(environ)
    results.create()
    stop = StopFlag()
    with stop.installed(), res.ResultsLock(results_dir):
        results.clear_partial()
        results.write_manifest(spec.name, spec.path, [
            {"task": t.name, "index": t.index, "params": t.param_dict, "command": list(renderer.command(t).argv)}
            for t in tasks])
        started = time.time()
        if args.local:
            from ksi.tasks.local import LocalExecutor, host_capacity

            executor: Any = LocalExecutor(spec, results, shared, environ)
            capacity, why = host_capacity(spec)
        else:
            from ksi.tasks.cluster import ClusterExecutor

            executor = ClusterExecutor.connect(spec, environ, results.partial_dir)
            capacity, why = executor.prepare()
        parallelism = spec.parallelism or capacity
        where = "local processes" if args.local else "Kubernetes Jobs"
        _log.info("tasks: %s: %s, %d to run (%d done, %d failed before%s), at most %d at once%s, as %s; "
                  "results in %s", spec.name, describe(tasks), len(chosen.to_run), chosen.done,
                  len(chosen.failed_kept), "; --rerun-failed runs them" if chosen.failed_kept else "", parallelism,
                  "" if spec.parallelism else f" ({why})", where, results_dir)
        terminal = sys.stderr.isatty() if args.progress == "auto" else args.progress == "terminal"
        progress = Progress(sys.stderr, f"ksi[{node}] tasks: ", terminal=terminal)
        runner = Runner(spec, tasks, renderer, executor, results, previous, progress, parallelism,
                        stop, stop_budget)
        try:
            outcome = runner.run(chosen.to_run)
        finally:
            close = getattr(executor, "close", None)
            if close is not None:  # a stopped run leaves its last Jobs to the cluster's teardown
                close(1.0 if stop.signum is not None else 20.0)
        with contextlib.suppress(OSError):  # empty unless a stop cut an attempt's output short
            results.partial_dir.rmdir()
        counts = {state: list(outcome.states.values()).count(state)
                  for state in (res.SUCCEEDED, res.FAILED, res.INTERRUPTED, res.PENDING)}
        results.write_summary({
            "experiment": spec.name, "spec": str(spec.path), "results": str(results_dir), "total": len(tasks),
            **counts, "executor": "local" if args.local else "cluster", "parallelism": parallelism,
            "started": res.iso(started), "ended": res.iso(time.time()),
            "stopped_by": None if outcome.stopped_by is None else _signame(outcome.stopped_by),
            "failed_tasks": outcome.failed})
    _print_summary(node, spec.name, len(tasks), counts, outcome.failed, results_dir, outcome.stopped_by)
    if outcome.stopped_by is not None:
        # Stopped: exit now, within the stop budget, rather than wait at interpreter exit for a request
        # still hanging in a worker thread (what it was for runs again next time).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + outcome.stopped_by)
    return 0 if outcome.all_succeeded else EXIT_FAILURE


def _signame(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _print_summary(node: str, name: str, total: int, counts: Mapping[str, int], failed: list[dict[str, Any]],
                   results_dir: Path, stopped_by: int | None) -> None:
    """Print the counts and the table of failed tasks on stderr."""
    parts = [f"{counts[res.SUCCEEDED]} succeeded", f"{counts[res.FAILED]} failed"]
    parts += [f"{counts[s]} {s}" for s in (res.INTERRUPTED, res.PENDING) if counts[s]]
    stopped = f"; stopped by {_signame(stopped_by)}, the next run continues" if stopped_by is not None else ""
    lines = [f"tasks: {name}: {total} tasks: {', '.join(parts)}{stopped} (results: {results_dir})"]
    if failed:
        lines += ["tasks: failed:", *("  " + row for row in summary_table(failed))]
        lines.append("tasks: `ksi tasks run SPEC --rerun-failed` runs the failed tasks again")
    for line in lines:
        print(f"ksi[{node}] {line}", file=sys.stderr, flush=True)


def _dry_run(tasks: list[Any], previous: Mapping[str, Mapping[str, Any]], to_run: list[Any], renderer: Renderer,
             results_dir: Path) -> int:
    """Print every task (name, command, and what a run would do with it); create nothing."""
    running = {t.name for t in to_run}
    for task in tasks:
        state = (previous.get(task.name) or {}).get("state")
        note = "" if task.name in running and state is None else (
            f"  # {state}, runs again" if task.name in running else f"  # {state}, skipped")
        print(f"{task.name}  {renderer.command(task).shown()}{note}", flush=True)
    print(f"ksi: dry run: {describe(tasks)}, {len(to_run)} would run; results in {results_dir}; nothing was created",
          file=sys.stderr, flush=True)
    return 0
