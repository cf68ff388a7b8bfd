"""ksi tasks, pure parts: SPEC validation, expansion of every source into names and commands, task names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ksi.errors import EXIT_USAGE, ChecksFailed
from ksi.tasks import names
from ksi.tasks.expand import Renderer, Task, prepare
from ksi.tasks.quantity import parse_duration, parse_quantity

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def spec_file(tmp_path: Path, body: str, name: str = "spec.yaml") -> Path:
    return write(tmp_path / name, body)


def shown(tmp_path: Path, body: str, app: str = "/app") -> list[tuple[str, str]]:
    spec, tasks = prepare(spec_file(tmp_path, body))
    renderer = Renderer(spec, app)
    return [(t.name, renderer.command(t).shown()) for t in tasks]


# --- expansion of each source -----------------------------------------------------------------------------

def test_grid_is_the_cartesian_product_and_underscore_keys_stay_out_of_names(tmp_path: Path) -> None:
    body = """
name: lr-sweep
image: python:3.12-slim
command: ["python", "{app}/train.py", "--lr", "{lr}", "--data", "{dataset}", "--seed", "{_seed}", "--i", "{index}"]
tasks:
  grid: {lr: [0.1, 0.01], dataset: [a, b], _seed: [7]}
"""
    assert shown(tmp_path, body) == [
        ("lr-sweep-0-1-a", "python /app/train.py --lr 0.1 --data a --seed 7 --i 0"),
        ("lr-sweep-0-1-b", "python /app/train.py --lr 0.1 --data b --seed 7 --i 1"),
        ("lr-sweep-0-01-a", "python /app/train.py --lr 0.01 --data a --seed 7 --i 2"),
        ("lr-sweep-0-01-b", "python /app/train.py --lr 0.01 --data b --seed 7 --i 3"),
    ]


def test_grid_tasks_differing_only_in_underscore_keys_get_distinct_stable_hashed_names(tmp_path: Path) -> None:
    body = 'name: s\nimage: i\ncommand: "run {x} {_seed}"\ntasks: {grid: {x: [a], _seed: [1, 2, 3]}}\n'
    first = shown(tmp_path, body)
    assert len({n for n, _ in first}) == 3
    assert all(re.fullmatch(r"s-a-[0-9a-f]{8}", n) for n, _ in first)
    assert shown(tmp_path, body) == first  # stable across reruns


def test_lines_one_task_per_line_comments_and_blank_lines_skipped(tmp_path: Path) -> None:
    write(tmp_path / "targets.txt", "bin/fuzz_a\n\n# not a task\n  bin/fuzz-b --fast  \nbin/Fuzz C\n")
    body = 'name: fuzz\nimage: i\ncommand: "{app}/{line} > out.{index}"\ntasks: {lines: targets.txt}\n'
    assert shown(tmp_path, body) == [
        ("fuzz-bin-fuzz-a", "sh -c '/app/bin/fuzz_a > out.0'"),
        ("fuzz-bin-fuzz-b-fast", "sh -c '/app/'\"'\"'bin/fuzz-b --fast'\"'\"' > out.1'"),
        ("fuzz-bin-fuzz-c", "sh -c '/app/'\"'\"'bin/Fuzz C'\"'\"' > out.2'"),
    ]


def test_one_string_command_quotes_every_value_for_the_shell(tmp_path: Path) -> None:
    write(tmp_path / "lines.txt", "a b; touch pwned\n$(id)\n")
    spec, tasks = prepare(spec_file(tmp_path, 'name: q\nimage: i\ncommand: "echo {line}"\ntasks: {lines: lines.txt}\n'))
    argvs = [Renderer(spec, "/app").command(t).argv for t in tasks]
    assert argvs == [("sh", "-c", "echo 'a b; touch pwned'"), ("sh", "-c", "echo '$(id)'")]


def test_csv_with_quoting_one_task_per_row_and_columns_as_placeholders(tmp_path: Path) -> None:
    write(tmp_path / "params.csv", 'model,alpha,note\nresnet,0.5,"fast, small"\n"vit\nlarge",1e-3,"say ""hi"""\n\n')
    body = 'name: csv\nimage: i\ncommand: [train, "--model={model}", "--alpha={alpha}", "{note}"]\n' \
           "tasks: {params: params.csv}\n"
    spec, tasks = prepare(spec_file(tmp_path, body))
    renderer = Renderer(spec, "/app")
    assert [(t.name, renderer.command(t).argv) for t in tasks] == [
        ("csv-resnet-0-5-fast-small", ("train", "--model=resnet", "--alpha=0.5", "fast, small")),
        ("csv-vit-large-1e-3-say-hi", ("train", "--model=vit\nlarge", "--alpha=1e-3", 'say "hi"')),
    ]
    assert tasks[1].param_dict == {"model": "vit\nlarge", "alpha": "1e-3", "note": 'say "hi"'}


def test_seq_gives_index_and_names_by_index(tmp_path: Path) -> None:
    body = 'name: many\nimage: i\ncommand: ["work", "{index}"]\nenv: {SHARD: "{index}"}\ntasks: {seq: 3}\n'
    spec, tasks = prepare(spec_file(tmp_path, body))
    renderer = Renderer(spec, "/app")
    assert [(t.name, renderer.command(t).argv, renderer.command(t).env) for t in tasks] == [
        ("many-0", ("work", "0"), (("SHARD", "0"),)), ("many-1", ("work", "1"), (("SHARD", "1"),)),
        ("many-2", ("work", "2"), (("SHARD", "2"),))]


def test_app_is_the_shared_directory_with_local(tmp_path: Path) -> None:
    body = 'name: a\nimage: i\ncommand: ["{app}/run.sh", "{{literal}}"]\ntasks: {seq: 1}\n'
    assert shown(tmp_path, body, app="/shared dir") == [("a-0", "'/shared dir/run.sh' '{literal}'")]


def test_names_are_dns_labels_at_most_63_and_unique_when_values_are_long_or_collide(tmp_path: Path) -> None:
    lines = ["x" * 100 + str(i) for i in range(50)] + ["A", "a", "a!", "Ünïcødé ✓"]
    write(tmp_path / "lines.txt", "\n".join(lines) + "\n")
    spec, tasks = prepare(spec_file(tmp_path, 'name: long-experiment-name\nimage: i\ncommand: "echo {line}"\n'
                                    "tasks: {lines: lines.txt}\n"))
    task_names = [t.name for t in tasks]
    assert len(set(task_names)) == len(lines)
    assert all(DNS_LABEL.match(n) and len(n) <= 63 and n.startswith("long-experiment-name-") for n in task_names)
    again = prepare(spec_file(tmp_path, spec.path.read_text()))[1]
    assert [t.name for t in again] == task_names


def test_a_name_depends_on_the_task_not_its_position(tmp_path: Path) -> None:
    write(tmp_path / "lines.txt", "alpha\nbeta\n")
    body = 'name: e\nimage: i\ncommand: "echo {line}"\ntasks: {lines: lines.txt}\n'
    before = {t.param_dict["line"]: t.name for t in prepare(spec_file(tmp_path, body))[1]}
    write(tmp_path / "lines.txt", "zero\nalpha\ngamma\nbeta\n")
    after = {t.param_dict["line"]: t.name for t in prepare(spec_file(tmp_path, body))[1]}
    assert after["alpha"] == before["alpha"] and after["beta"] == before["beta"]


def test_hash_grows_until_hashed_names_no_longer_collide() -> None:
    tasks = [((f"v{i}",), json.dumps({"i": i})) for i in range(3000)]
    assigned = names.assign("e" * 40, [(("same" * 20,), identity) for _, identity in tasks])
    assert len(set(assigned)) == 3000
    assert all(len(n) <= 63 for n in assigned)


# --- a bad SPEC: every problem at once ---------------------------------------------------------------------

def test_bad_spec_lists_every_problem_at_once(tmp_path: Path) -> None:
    body = """
name: LR_sweep
image: ""
comand: x
command: "echo {lrr} {x:3} {}"
env: {1X: a, KSI_TASK: b, OK: [1]}
resources: {cpu: lots, memory: -1Gi}
parallelism: 0
retries: -1
retry_failed: maybe
timeout: 2 hours
results: ""
tasks: {grid: {lr: [1, 1]}}
"""
    with pytest.raises(ChecksFailed) as caught:
        prepare(spec_file(tmp_path, body))
    lines = [p.one_line() for p in caught.value.problems]
    expected = ["comand: unknown field; fix: did you mean 'command'?", "name: 'LR_sweep'", "image: ''",
                "env.1X:", "env.KSI_TASK: is set by ksi", "env.OK:", "resources.cpu: 'lots'", "resources.memory:",
                "parallelism: 0", "retries: -1", "retry_failed: 'maybe'", "timeout: '2 hours'", "results: ''",
                "tasks.grid.lr: lists a value twice", "command: {x:3} has a conversion or format spec"]
    for text in expected:
        assert sum(text in line for line in lines) == 1, (text, lines)
    assert len(lines) == len(expected)
    assert caught.value.exit_code == EXIT_USAGE
    assert all(line.startswith(f"spec: {tmp_path / 'spec.yaml'}: ") for line in lines)


@pytest.mark.parametrize(("body", "files", "expected"), [
    ("command: 'echo {lrates}'\ntasks: {grid: {lrate: [1]}}", {}, ["command: {lrates} names no parameter of the tasks; "
                                                              "fix: did you mean {lrate}?"]),
    ("command: 'echo'\ntasks: {seq: 2, lines: x.txt}", {}, ["tasks: must give exactly one source"]),
    ("command: 'echo'\ntasks: {}", {}, ["tasks: must give exactly one source of grid, lines, params, seq; it gives"
                                       " none"]),
    ("command: 'echo {line}'\ntasks: {lines: missing.txt}", {}, ["missing.txt: No such file or directory"]),
    ("command: 'echo {line}'\ntasks: {lines: t.txt}", {"t.txt": "a\nb\na\n"}, ["t.txt line 3 repeats line 1"]),
    ("command: 'echo {line}'\ntasks: {lines: t.txt}", {"t.txt": "# only a comment\n"}, ["has no line (no tasks)"]),
    ("command: 'echo {b}'\ntasks: {params: p.csv}", {"p.csv": "a,c\n1,2\n"},
     ["command: {b} names no parameter of the tasks"]),
    ("command: 'echo {a}'\ntasks: {params: p.csv}", {"p.csv": "a,a,index\n1,2,3\n4\n"},
     ["header names 'a' twice", "header column 3 'index' is defined by ksi", "line 3 has 1 fields, the header 3"]),
    ("command: 'echo {a}'\ntasks: {params: p.csv}", {"p.csv": 'a\n"unclosed\n'}, ["not valid CSV"]),
    ("command: 'echo'\ntasks: {seq: 0}", {}, ["tasks.seq: 0 must be a whole number"]),
    ("command: []\ntasks: {seq: 1}", {}, ["command: must be a non-empty list"]),
    ("command: 'echo'\ntimeout: 0\ntasks: {seq: 1}", {}, ["timeout: 0 must be longer than zero"]),
    ("command: 'echo'\ntasks: {grid: {index: [1]}}", {}, ["tasks.grid.index: {index} is defined by ksi"]),
])
def test_bad_sources_and_placeholders(tmp_path: Path, body: str, files: dict[str, str], expected: list[str]) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ChecksFailed) as caught:
        prepare(spec_file(tmp_path, f"name: e\nimage: i\n{body}\n"))
    text = "\n".join(p.one_line() for p in caught.value.problems)
    assert len(caught.value.problems) == len(expected), text
    for part in expected:
        assert part in text


@pytest.mark.parametrize("body", ["", "- a list\n", "name: [unclosed\n"])
def test_unreadable_spec_is_one_problem(tmp_path: Path, body: str) -> None:
    with pytest.raises(ChecksFailed) as caught:
        prepare(spec_file(tmp_path, body))
    assert len(caught.value.problems) == 1


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(ChecksFailed, match="problem"):
        prepare(tmp_path / "nope.yaml")


# --- quantities, durations ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [("1", 1), ("500m", 0.5), ("2Gi", 2 * 2**30), ("1.5", 1.5),
                                             ("1e3", 1000), ("128974848", 128974848), ("129M", 129_000_000)])
def test_quantities(text: str, value: float) -> None:
    assert float(parse_quantity(text)) == value


@pytest.mark.parametrize(("value", "seconds"), [(90, 90), ("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200),
                                                ("1h30m", 5400), ("1d", 86400)])
def test_durations(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds


def test_task_params_keep_spec_order() -> None:
    assert Task("t", 0, (("b", "1"), ("a", "2"))).param_dict == {"b": "1", "a": "2"}
