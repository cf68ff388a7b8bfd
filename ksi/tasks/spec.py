"""The SPEC of an experiment: read from YAML, every problem found at once, turned into a frozen :class:`Spec`.

Pure apart from reading the one YAML file: the task sources it names (lines, CSV) are read by
:mod:`ksi.tasks.expand`.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksi import yamlio
from ksi.errors import EXIT_USAGE, Problem
from ksi.tasks.quantity import parse_duration, parse_quantity

SOURCES = ("grid", "lines", "params", "seq")
FIELDS = ("name", "image", "command", "env", "resources", "parallelism", "retries", "retry_failed", "timeout",
          "results", "tasks")
REQUIRED = ("name", "image", "command", "tasks")
INDEX = "index"  # always defined: the task's position in the expanded list
APP = "app"  # the shared directory: /app in the cluster, the directory itself with --local
LINE = "line"  # the placeholder of the `lines` source
RESERVED = (INDEX, APP)
DEFAULT_RETRIES = 2
MAX_EXPERIMENT = 40  # leaves room in a 63-character task name for its parameters
EXPERIMENT = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESOURCE_NAME = re.compile(r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# Variables ksi sets in every task; a SPEC must not set them itself.
TASK_ENV = ("KSI_EXPERIMENT", "KSI_TASK", "KSI_TASK_INDEX", "KSI_TASK_ATTEMPT")


@dataclass(frozen=True)
class Source:
    """Where the tasks come from: exactly one of a grid, a lines file, a CSV file or a count."""

    kind: str
    grid: tuple[tuple[str, tuple[str, ...]], ...] = ()
    path: Path | None = None
    count: int = 0


@dataclass(frozen=True)
class Spec:
    """A validated SPEC; ``command`` runs directly, or with ``sh -c`` when ``shell`` (the one-string form)."""

    path: Path
    name: str
    image: str
    command: tuple[str, ...]
    shell: bool
    source: Source
    env: tuple[tuple[str, str], ...] = ()
    resources: tuple[tuple[str, str], ...] = ()
    parallelism: int | None = None
    retries: int = DEFAULT_RETRIES
    retry_failed: bool = False
    timeout: int | None = None
    results: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


class _Problems:
    """Collects the problems of one SPEC file, each naming the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[Problem] = []

    def add(self, where: str, message: str, fix: str) -> None:
        prefix = f"{self.path}: {where}: " if where else f"{self.path}: "
        self.items.append(Problem(EXIT_USAGE, prefix + message, fix, step="spec"))


def problem(path: Path, where: str, message: str, fix: str) -> Problem:
    """Return one SPEC problem naming the file and the field."""
    found = _Problems(path)
    found.add(where, message, fix)
    return found.items[0]


def scalar_text(value: object) -> str | None:
    """Return a YAML scalar as the text a placeholder gives (``0.1``, ``true``, ``3``), or None if not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


def _whole(value: object, minimum: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return None
    return value


def template_fields(text: str) -> list[str]:
    """Return the placeholder names in ``text`` (``{lr}`` gives ``lr``; ``{{`` is a literal brace).

    Raises ValueError for what str.format would treat specially: conversions, format specs, attribute or
    item access, an empty ``{}``, unbalanced braces.
    """
    names = []
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if not name:
            raise ValueError("an empty {} names no parameter")
        if conversion or spec:
            raise ValueError(f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} "
                             "has a conversion or format spec; placeholders take the value as written")
        if any(c in name for c in ".[]"):
            raise ValueError(f"{{{name}}} uses attribute or item access, which placeholders do not have")
        names.append(name)
    return names


def load(path: Path) -> tuple[Spec | None, list[Problem]]:
    """Read and validate the SPEC at ``path``; return it (None when unusable) and every problem found."""
    import yaml

    found = _Problems(path)
    try:
        data = yamlio.load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        found.add("", f"cannot read the SPEC: {exc.strerror}", "give the path of an existing, readable SPEC file")
        return None, found.items
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        found.add(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}", "correct the YAML syntax")
        return None, found.items
    if not isinstance(data, dict):
        found.add("", "must be a YAML mapping of name, image, command, tasks, ...",
                  "start from the example in `ksi tasks run --help`")
        return None, found.items
    spec = parse(data, path, found)
    return (spec if not found.items else None), found.items


def parse(data: Mapping[str, Any], path: Path, found: _Problems | None = None) -> Spec | None:
    """Validate the SPEC mapping ``data`` (read from ``path``); add problems to ``found``; return the Spec."""
    found = found if found is not None else _Problems(path)
    for key in data:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            found.add(str(key), "unknown field", f"did you mean {close[0]!r}?" if close
                      else f"remove it; the fields are {', '.join(FIELDS)}")
    for key in REQUIRED:
        if data.get(key) is None:
            found.add(key, "is required", f"add `{key}:` to the SPEC")
    name = data.get("name")
    if name is not None and not (isinstance(name, str) and EXPERIMENT.match(name) and len(name) <= MAX_EXPERIMENT):
        found.add("name", f"{name!r} is not a valid experiment name",
                  f"use lower-case letters, digits and '-', starting and ending with a letter or digit, at most "
                  f"{MAX_EXPERIMENT} characters")
    image = data.get("image")
    if image is not None and not (isinstance(image, str) and image.strip() and not any(c.isspace() for c in image)):
        found.add("image", f"{image!r} is not a container image reference", "give an image such as python:3.12-slim")
    command, shell = _command(data.get("command"), found)
    env = _env(data.get("env"), found)
    resources = _resources(data.get("resources"), found)
    parallelism, retries, retry_failed, timeout, results = _limits(data, found)
    source = _source(data.get("tasks"), path, found)
    _check_templates(command, env, _known_names(data.get("tasks")), found)
    if found.items or not (isinstance(name, str) and isinstance(image, str) and source is not None):
        return None
    return Spec(path=path, name=name, image=image, command=command, shell=shell, source=source, env=tuple(env),
                resources=tuple(resources), parallelism=parallelism, retries=retries, retry_failed=retry_failed,
                timeout=timeout, results=results or f"ksi-results/{name}", raw=dict(data))


def _limits(data: Mapping[str, Any], found: _Problems) -> tuple[Any, Any, Any, int | None, Any]:
    """Validate parallelism, retries, retry_failed, timeout and results; return them in that order."""
    parallelism = data.get("parallelism")
    if parallelism is not None and _whole(parallelism, 1) is None:
        found.add("parallelism", f"{parallelism!r} must be a whole number, at least 1",
                  "give how many tasks may run at once, or leave it out (what the nodes can hold)")
    retries = data.get("retries", DEFAULT_RETRIES)
    if _whole(retries, 0) is None:
        found.add("retries", f"{retries!r} must be a whole number, at least 0",
                  "give how many extra attempts a task gets after a loss")
    retry_failed = data.get("retry_failed", False)
    if not isinstance(retry_failed, bool):
        found.add("retry_failed", f"{retry_failed!r} must be true or false", "write retry_failed: true or false")
    timeout: int | None = None
    if data.get("timeout") is not None:
        try:
            timeout = parse_duration(data["timeout"])
        except ValueError as exc:
            found.add("timeout", str(exc), "give the time one attempt may take, e.g. 2h")
    results = data.get("results")
    if results is not None and not (isinstance(results, str) and results.strip()):
        found.add("results", f"{results!r} must be a path", "give a directory, relative to the shared directory")
    return parallelism, retries, retry_failed, timeout, results


def _command(raw: object, found: _Problems) -> tuple[tuple[str, ...], bool]:
    """Validate ``command:``; return its words and whether it is the one-string (``sh -c``) form."""
    if isinstance(raw, str) and raw.strip():
        return (raw,), True
    if isinstance(raw, list) and raw and all(scalar_text(w) is not None for w in raw):
        return tuple(str(scalar_text(w)) for w in raw), False
    if raw is not None:
        found.add("command", "must be a non-empty list of words, or one string (run with sh -c)",
                  'write command: ["python", "{app}/train.py", "--lr", "{lr}"] or command: "python train.py"')
    return (), False


def _env(raw: object, found: _Problems) -> list[tuple[str, str]]:
    """Validate ``env:``; return its variables."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        found.add("env", "must be a mapping of variable names to values", 'write env: {OMP_NUM_THREADS: "1"}')
        return []
    env = []
    for key, value in raw.items():
        text = scalar_text(value)
        if not (isinstance(key, str) and ENV_NAME.match(key)):
            found.add(f"env.{key}", "is not a valid environment variable name", "use letters, digits and '_'")
        elif key in TASK_ENV:
            found.add(f"env.{key}", "is set by ksi in every task", "choose another name")
        elif text is None:
            found.add(f"env.{key}", f"{value!r} is not a string or number", "quote the value")
        else:
            env.append((key, text))
    return env


def _resources(raw: object, found: _Problems) -> list[tuple[str, str]]:
    """Validate ``resources:``; return each resource's quantity as written."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        found.add("resources", 'must be a mapping such as {cpu: "1", memory: 2Gi}', "correct the resources")
        return []
    resources = []
    for key, value in raw.items():
        text = scalar_text(value)
        if not (isinstance(key, str) and RESOURCE_NAME.match(key)):
            found.add(f"resources.{key}", "is not a resource name", "use cpu, memory, ephemeral-storage, ...")
            continue
        try:
            if text is None or parse_quantity(text) <= 0:
                raise ValueError(f"{value!r} must be a positive quantity")
        except ValueError as exc:
            found.add(f"resources.{key}", str(exc), "give a quantity such as 1, 500m, 2Gi")
            continue
        resources.append((key, text))
    return resources


def _source(raw: object, path: Path, found: _Problems) -> Source | None:
    """Validate ``tasks:``: exactly one source, well formed."""
    if raw is None:
        return None
    given = [key for key in raw if key in SOURCES] if isinstance(raw, dict) else []
    if not isinstance(raw, dict) or len(given) != 1:
        what = f"gives {', '.join(given)}" if len(given) > 1 else "gives none"
        found.add("tasks", f"must give exactly one source of {', '.join(SOURCES)}; it {what}",
                  "write tasks: {grid: {...}} or {lines: FILE} or {params: FILE.csv} or {seq: N}")
        return None
    for key in raw:
        if key not in SOURCES:
            found.add(f"tasks.{key}", "unknown source", f"use one of {', '.join(SOURCES)}")
    kind = given[0]
    value = raw[kind]
    if kind == "grid":
        return _grid(value, found)
    if kind == "seq":
        count = _whole(value, 1)
        if count is None:
            found.add("tasks.seq", f"{value!r} must be a whole number, at least 1", "give how many tasks: seq: 500")
        return Source("seq", count=count) if count is not None else None
    if not (isinstance(value, str) and value.strip()):
        found.add(f"tasks.{kind}", f"{value!r} must be a file name", "give a path relative to the SPEC's directory")
        return None
    return Source(kind, path=(path.parent / value).absolute())


def _grid(value: object, found: _Problems) -> Source | None:
    """Validate ``tasks.grid``: parameter names mapped to (lists of) scalars."""
    if not isinstance(value, dict) or not value:
        found.add("tasks.grid", "must be a non-empty mapping of parameter names to lists of values",
                  "write grid: {lr: [0.1, 0.01], dataset: [a, b]}")
        return None
    axes = []
    for key, values in value.items():
        where = f"tasks.grid.{key}"
        if not (isinstance(key, str) and key.strip() and not any(c in key for c in "{}.[]:!")):
            found.add(where, "is not a usable parameter name", "use letters, digits, '_' and '-'")
            continue
        if key in RESERVED:
            found.add(where, f"{{{key}}} is defined by ksi", "choose another parameter name")
            continue
        items = values if isinstance(values, list) else [values]
        texts = [scalar_text(v) for v in items]
        if not items or any(t is None for t in texts):
            found.add(where, "must be a scalar or a non-empty list of scalars (strings, numbers, booleans)",
                      f"write {key}: [1, 2, 3]")
            continue
        if len(set(texts)) != len(texts):
            found.add(where, "lists a value twice", "remove the duplicate")
            continue
        axes.append((key, tuple(str(t) for t in texts)))
    return Source("grid", grid=tuple(axes))


def _known_names(raw: object) -> set[str] | None:
    """Return the placeholder names ``tasks:`` defines, even when its values are wrong (None: a CSV, or unknown)."""
    given = [key for key in raw if key in SOURCES] if isinstance(raw, dict) else []
    if len(given) != 1 or given[0] == "params":
        return None
    names = {INDEX, APP}
    value = raw[given[0]] if isinstance(raw, dict) else None
    if given[0] == "grid" and isinstance(value, dict):
        names |= {key for key in value if isinstance(key, str)}
    elif given[0] == "lines":
        names.add(LINE)
    return names


def _check_templates(command: tuple[str, ...], env: list[tuple[str, str]], known: set[str] | None,
                     found: _Problems) -> None:
    """Add a problem for each placeholder that is malformed or (when ``known``) names no parameter."""
    places = [(f"command[{i}]" if len(command) > 1 else "command", word) for i, word in enumerate(command)]
    places += [(f"env.{key}", value) for key, value in env]
    for where, text in places:
        try:
            names = template_fields(text)
        except ValueError as exc:
            found.add(where, str(exc), "write {name} for a parameter and {{ or }} for a literal brace")
            continue
        for name in names:
            if known is not None and name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                found.add(where, f"{{{name}}} names no parameter of the tasks",
                          f"did you mean {{{close[0]}}}?" if close else
                          f"use one of {', '.join('{' + k + '}' for k in sorted(known))}")


def check_templates(spec: Spec, known: set[str]) -> list[Problem]:
    """Return the placeholder problems of ``spec`` given the parameter names its source turned out to have."""
    found = _Problems(spec.path)
    _check_templates(spec.command, list(spec.env), known | {INDEX, APP}, found)
    return found.items
