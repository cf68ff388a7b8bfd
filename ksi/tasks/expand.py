"""From a SPEC to its tasks: each source expanded, named, and its placeholders rendered into a command.

:func:`prepare` is what every command calls: it reads the SPEC and its data files and raises
:class:`~ksi.errors.ChecksFailed` with every problem at once (exit 2) before anything is created.
"""

from __future__ import annotations

import csv
import itertools
import json
import shlex
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ksi.errors import ChecksFailed, Problem
from ksi.tasks import names, spec
from ksi.tasks.spec import Source, Spec


@dataclass(frozen=True)
class Task:
    """One task: its name (also its Kubernetes Job's), position, and parameters in SPEC order."""

    name: str
    index: int
    params: tuple[tuple[str, str], ...]

    @property
    def param_dict(self) -> dict[str, str]:
        """The parameters as a dict (what result.json records)."""
        return dict(self.params)


@dataclass(frozen=True)
class Command:
    """What one task runs: argv and the SPEC's environment, placeholders filled in."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    def shown(self) -> str:
        """Return the command as one line one could paste into a shell."""
        return shlex.join(self.argv)


def prepare(path: Path) -> tuple[Spec, list[Task]]:
    """Load, validate and expand the SPEC at ``path``; raise ChecksFailed listing every problem."""
    loaded, problems = spec.load(path)
    if loaded is None:
        raise ChecksFailed(problems)
    tasks, problems = expand(loaded)
    if problems:
        raise ChecksFailed(problems)
    return loaded, tasks


def expand(loaded: Spec) -> tuple[list[Task], list[Problem]]:
    """Return the tasks of ``loaded`` (named) and the problems of its data file and placeholders."""
    source = loaded.source
    problems: list[Problem] = []
    rows: list[tuple[tuple[str, str], ...]]
    if source.kind == "grid":
        keys = [key for key, _ in source.grid]
        rows = [tuple(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in source.grid))]
    elif source.kind == "seq":
        rows = [() for _ in range(source.count)]
    elif source.kind == "lines":
        rows, problems = _lines(loaded.path, source)
    else:
        rows, header, problems = _csv(loaded.path, source)
        if header:
            problems += spec.check_templates(loaded, set(header))
    if problems:
        return [], problems
    if not rows:
        kind = "line" if source.kind == "lines" else "row"
        return [], [spec.problem(loaded.path, f"tasks.{source.kind}", f"{source.path} has no {kind} (no tasks)",
                                 f"add one {kind} per task")]
    identities = []
    for index, params in enumerate(rows):
        shown = [str(index)] if source.kind == "seq" else [v for k, v in params if not k.startswith("_")]
        identity = json.dumps({"index": index} if source.kind == "seq" else dict(params), sort_keys=True)
        identities.append((shown, identity))
    task_names = names.assign(loaded.name, identities)
    return [Task(n, i, p) for i, (n, p) in enumerate(zip(task_names, rows, strict=True))], []


def _lines(spec_path: Path, source: Source) -> tuple[list[tuple[tuple[str, str], ...]], list[Problem]]:
    """Read one task per non-empty line (``#`` starts a comment line); a repeated line is a problem."""
    assert source.path is not None
    try:
        text = source.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        return [], [spec.problem(spec_path, "tasks.lines", f"cannot read {source.path}: {why}",
                                 "give a readable text file, relative to the SPEC's directory")]
    rows: list[tuple[tuple[str, str], ...]] = []
    first: dict[str, int] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if value in first:
            problems.append(spec.problem(spec_path, "tasks.lines", f"{source.path} line {number} repeats line "
                                         f"{first[value]}", "remove the duplicate: a task runs once"))
            continue
        first[value] = number
        rows.append(((spec.LINE, value),))
    return rows, problems


def _csv(spec_path: Path, source: Source) -> tuple[list[tuple[tuple[str, str], ...]], list[str], list[Problem]]:
    """Read one task per CSV row; the header row names the parameters. Returns rows, header, problems."""
    assert source.path is not None
    where = "tasks.params"

    def bad(message: str, fix: str) -> Problem:
        return spec.problem(spec_path, where, f"{source.path}{message}", fix)

    try:
        with source.path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            records: list[tuple[int, list[str]]] = []
            start = 1  # the line where a record starts: quoted fields may span lines
            for row in reader:
                records.append((start, row))
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text" if isinstance(
            exc, UnicodeDecodeError) else f"not valid CSV: {exc}"
        return [], [], [bad(f": cannot read it: {why}", "give a readable CSV file with a header row")]
    records = [(n, row) for n, row in records if any(cell.strip() for cell in row)]
    if not records:
        return [], [], [bad(" is empty", "add a header row naming the parameters, then one row per task")]
    header = [cell.strip() for cell in records[0][1]]
    problems = []
    for column, name in enumerate(header, 1):
        if not name or any(c in name for c in "{}.[]:!"):
            problems.append(bad(f" header column {column} {name!r} is not a usable parameter name",
                                "name every column with letters, digits, '_' or '-'"))
        elif name in spec.RESERVED:
            problems.append(bad(f" header column {column} {name!r} is defined by ksi", "rename the column"))
        elif header.index(name) != column - 1:
            problems.append(bad(f" header names {name!r} twice", "give every column its own name"))
    rows: list[tuple[tuple[str, str], ...]] = []
    first: dict[tuple[str, ...], int] = {}
    for number, row in records[1:]:
        if len(row) != len(header):
            problems.append(bad(f" line {number} has {len(row)} fields, the header {len(header)}",
                                "quote fields that contain commas: \"a, b\""))
            continue
        values = tuple(row)
        if values in first:
            problems.append(bad(f" line {number} repeats line {first[values]}", "remove the duplicate row"))
            continue
        first[values] = number
        rows.append(tuple(zip(header, values, strict=True)))
    return rows, header, problems


# --- placeholders --------------------------------------------------------------------------------------

def _compile(text: str) -> list[tuple[str, str | None]]:
    """Split ``text`` into (literal, placeholder name or None) pairs (validated by the SPEC checks)."""
    return [(literal, name) for literal, name, _, _ in string.Formatter().parse(text)]


class Renderer:
    """Fills the SPEC's placeholders for each task; ``app`` is /app in the cluster, the shared dir locally.

    In the one-string (``sh -c``) form every substituted value is shell-quoted, so a value with spaces or
    ``;`` stays one word; in the list form each word is passed as it is, without a shell.
    """

    def __init__(self, loaded: Spec, app: str) -> None:
        self.spec = loaded
        self.app = app
        self._command = [_compile(word) for word in loaded.command]
        self._env = [(key, _compile(value)) for key, value in loaded.env]

    def _fill(self, parts: list[tuple[str, str | None]], values: Mapping[str, str], quote: bool) -> str:
        out = []
        for literal, name in parts:
            out.append(literal)
            if name is not None:
                out.append(shlex.quote(values[name]) if quote else values[name])
        return "".join(out)

    def command(self, task: Task) -> Command:
        """Return the argv and environment of ``task``."""
        values = {**dict(task.params), spec.INDEX: str(task.index), spec.APP: self.app}
        words = tuple(self._fill(parts, values, self.spec.shell) for parts in self._command)
        argv = ("sh", "-c", words[0]) if self.spec.shell else words
        env = tuple((key, self._fill(parts, values, False)) for key, parts in self._env)
        return Command(argv, env)


def describe(tasks: Sequence[Task]) -> str:
    """Return ``N tasks`` for messages."""
    return f"{len(tasks)} task{'s' if len(tasks) != 1 else ''}"
