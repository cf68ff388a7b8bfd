"""The arguments of ``ksi tasks run`` and ``ksi tasks status`` (argparse only: every ksi command builds them)."""

from __future__ import annotations

from typing import Any


def add_parser(commands: Any) -> None:
    """Add ``tasks run`` and ``tasks status`` to the ksi command line."""
    tasks = commands.add_parser(
        "tasks", help="run the many tasks of one experiment on the job's cluster, resumable across jobs",
        description="Run the tasks a SPEC (YAML) describes as Kubernetes Jobs on the cluster of the ksi run "
        "this is started in (or as local processes with --local), and report on them. See the README's "
        "section on task sweeps for the SPEC.")
    verbs = tasks.add_subparsers(dest="tasks_command", required=True, metavar="VERB")
    run = verbs.add_parser(
        "run", help="run the tasks of SPEC that are not done yet",
        description="Run every task of SPEC that has not succeeded yet, at most `parallelism` at once, writing "
        "each ended attempt's log and result under the results directory. Inside a ksi workload it uses the "
        "run's KUBECONFIG and context. Exit 0 only when every task has succeeded, 1 otherwise, 2 for a bad "
        "SPEC, 128+N when stopped by signal N (running attempts are recorded as Interrupted and run again "
        "next time).")
    run.add_argument("spec", metavar="SPEC", help="the experiment's SPEC file (YAML)")
    run.add_argument("--results", metavar="DIR", help="results directory (default: the SPEC's results:, "
                     "relative to the shared directory; ksi-results/<name>)")
    run.add_argument("--rerun-failed", action="store_true", help="also run the tasks that failed before")
    run.add_argument("--force", action="store_true", help="run every task again, even those that succeeded")
    run.add_argument("--dry-run", action="store_true", help="print the tasks (name and command); create nothing")
    run.add_argument("--local", action="store_true", help="run the tasks as local processes (image ignored)")
    run.add_argument("--progress", choices=("auto", "terminal", "lines"), default="auto",
                     help="one line redrawn in place (terminal) or a line every 30 s (lines); default: terminal "
                     "when stderr is one (ksi run --tasks passes on whether its own stderr is)")
    run.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    status = verbs.add_parser(
        "status", help="report on a results directory (offline, without a cluster)",
        description="Count the tasks of the latest run of a results directory by state and list the failed "
        "ones with their logs. Exit 0 when every task has succeeded, 1 otherwise.")
    status.add_argument("results", metavar="RESULTS_DIR", help="the results directory")
    status.add_argument("--json", action="store_true", help="print one JSON object with every task's state")
