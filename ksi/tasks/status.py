"""``ksi tasks status``: the state of every task of a results directory, from its files alone (offline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ksi.tasks import results as res
from ksi.tasks.progress import summary_table

STATES = (res.SUCCEEDED, res.FAILED, res.INTERRUPTED, res.PENDING)


def collect(results_dir: Path) -> dict[str, Any]:
    """Return the report: experiment, counts by state, and one entry per task of the latest run's task set."""
    res.refuse_missing(results_dir)
    results = res.Results(results_dir)
    manifest = results.read_manifest() or {}
    listed = [t for t in manifest.get("tasks") or [] if isinstance(t, dict) and isinstance(t.get("task"), str)]
    found = results.read_all(t["task"] for t in listed)
    tasks = []
    for entry in listed:
        name = entry["task"]
        result = found.get(name) or {}
        attempts = result.get("attempts") or []
        log = result.get("log")
        tasks.append({"task": name, "params": entry.get("params") or {},
                      "state": result.get("state") if result.get("state") in STATES else res.PENDING,
                      "reason": result.get("reason"), "exit_code": result.get("exit_code"),
                      "node": result.get("node"), "start": result.get("start"), "end": result.get("end"),
                      "attempts": len(attempts), "log": str(results.task_dir(name) / log) if log else None})
    counts = {state: sum(1 for t in tasks if t["state"] == state) for state in STATES}
    return {"results": str(results_dir), "experiment": manifest.get("experiment"), "spec": manifest.get("spec"),
            "total": len(tasks), **counts, "tasks": tasks}


def render(report: dict[str, Any]) -> list[str]:
    """Return the human-readable report: one line of counts, then the table of failed tasks."""
    parts = [f"{report[s]} {s}" for s in STATES if report[s] or s in (res.SUCCEEDED, res.FAILED)]
    lines = [f"{report['experiment']}: {report['total']} tasks: {', '.join(parts)} (results: {report['results']})"]
    failed = [t for t in report["tasks"] if t["state"] == res.FAILED]
    if failed:
        lines += ["failed:", *("  " + row for row in summary_table(
            [dict(t, log=t["log"] or "-") for t in failed]))]
    return lines


def main(results_dir: Path, *, as_json: bool) -> int:
    """Print the report of ``results_dir``; return 0 when every task has succeeded, else 1."""
    report = collect(results_dir.absolute())
    if as_json:
        print(json.dumps(report), flush=True)
    else:
        print("\n".join(render(report)), flush=True)
    return 0 if report["total"] and report[res.SUCCEEDED] == report["total"] else 1
