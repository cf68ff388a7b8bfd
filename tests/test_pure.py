"""Pure functions from data to data: settings, Slurm environment, names, kind config, kubeconfig, cgroups."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from ksi import settings
from ksi.cluster import kindconfig, names
from ksi.cluster.kubeconfig import add_cluster_context, server
from ksi.cluster.workload import Workload, resolve
from ksi.errors import EXIT_PREREQUISITE, EXIT_USAGE, KsiError, Problem
from ksi.host import cgroups
from ksi.host.ports import parse_port
from ksi.host.slurm import context
from ksi.host.state import check_private_dir, process_start
from ksi.tools.kind import parse_version
from tests.ksi_helpers import REPO

DATA = Path(__file__).parent / "data"

NASTY_NAMES = ["plain", "with space", "quote'single", 'quote"double', "semi; echo pwned", "new\nline",
               "dollar $HOME", "back\\slash", "ünïcødé", "-leading-dash"]


# --- settings ---------------------------------------------------------------------------------------------

def test_settings_defaults_without_environment() -> None:
    loaded, problems = settings.load({})
    assert problems == []
    assert loaded.provider == "nerdctl"
    assert loaded.systemd_scope == "auto"
    assert loaded.token_ttl >= 24 * 3600
    assert loaded.teardown_timeout < 30  # below Slurm's default KillWait
    assert loaded.state_dir == Path(f"/tmp/ksi-{os.getuid()}")
    assert "@sha256:" in loaded.node_image


def test_settings_environment_and_overrides_take_precedence() -> None:
    env = {"KSI_SYSTEMD_SCOPE": "never", "KSI_TOKEN_TTL": "7200", "KSI_NODE_IMAGE": "from-env"}
    loaded, problems = settings.load(env, {"node_image": "from-flag"})
    assert problems == []
    assert (loaded.systemd_scope, loaded.token_ttl, loaded.node_image) == ("never", 7200, "from-flag")


def test_settings_report_every_bad_value_at_once() -> None:
    env = {"KIND_EXPERIMENTAL_PROVIDER": "docker", "KSI_CREATE_TIMEOUT": "-3", "KSI_TOKEN_TTL": "10",
           "KSI_STATE_DIR": "relative/dir", "KSI_CLEAN_STALE": "maybe"}
    _, problems = settings.load(env)
    assert len(problems) == 5
    text = "\n".join(p.one_line() for p in problems)
    for name in env:
        assert name in text
    assert all(p.code == EXIT_USAGE for p in problems)
    assert "must be one of nerdctl" in text


def test_every_setting_is_declared_once_and_in_the_readme() -> None:
    """A setting is one declaration (variable, parser, default, doc) and the README's table lists each variable."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    declared = dataclasses.fields(settings.Settings)
    assert len({f.metadata["env"] for f in declared}) == len(declared)
    for declared_field in declared:
        env = settings.env_name(declared_field.name)
        assert f"| `{env}`" in readme, f"{env} is missing from the README's settings table"
        assert declared_field.metadata["doc"] and callable(declared_field.metadata["parse"])


# --- Slurm environment ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "expected"), [
    ({}, dict(job_id=None, step_id=None, procid=0, ntasks=1, step_nodes=1, in_job=False)),
    ({"SLURM_JOB_ID": "42"}, dict(job_id="42", step_id=None, procid=0, ntasks=1, in_job=True, in_step=False)),
    ({"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_PROCID": "2", "SLURM_NTASKS": "3",
      "SLURM_STEP_NUM_NODES": "3", "SLURM_STEP_NODELIST": "n[1-3]", "SLURMD_NODENAME": "n3"},
     dict(procid=2, ntasks=3, step_nodes=3, step_nodelist="n[1-3]", nodename="n3", in_step=True)),
    # a batch script (no step): the job's task counts do not describe ksi's own layout
    ({"SLURM_JOB_ID": "42", "SLURM_NTASKS": "6", "SLURM_PROCID": "0"}, dict(ntasks=1, step_nodes=1)),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "1", "SLURM_RESTART_COUNT": "2", "SLURM_JOB_END_TIME": "1900000000"},
     dict(restart_count=2, end_time=1900000000)),
    ({"SLURM_JOB_ID": "../evil"}, dict(job_id=None)),
    ({"SLURM_JOB_ID": "12_3"}, dict(job_id=None)),  # SLURM_JOB_ID is a task's own number, also in arrays
])
def test_slurm_context(env: dict[str, str], expected: dict[str, object]) -> None:
    ctx = context(env)
    for key, value in expected.items():
        assert getattr(ctx, key) == value, key


# --- names ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("job", [None, "1234", "99999999999999999999"])
def test_cluster_names_are_valid_for_kind(job: str | None) -> None:
    name = names.cluster_name(job)
    assert names.is_valid(name)
    assert names.is_ksi_cluster(name)
    assert name.startswith(f"ksi-{job or 'local'}-")
    assert len(name) <= names.MAX_LENGTH


@pytest.mark.parametrize("job", ["12_3", "../x", ""])
def test_cluster_names_need_a_numeric_job_id(job: str) -> None:
    with pytest.raises(ValueError, match="a Slurm job id is a number"):
        names.cluster_name(job)


def test_cluster_name_suffixes_are_random_and_long() -> None:
    suffixes = [names.cluster_name("1").rsplit("-", 1)[1] for _ in range(200)]
    assert all(len(s) == names.SUFFIX_LENGTH and re.fullmatch("[a-z0-9]+", s) for s in suffixes)
    assert len(set("".join(suffixes))) > 30  # drawn from the whole alphabet, not a counter or a clock


def test_a_name_whose_run_directory_exists_is_never_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ksi.cluster import rundir

    drawn = iter(["ksi-local-aaaaaa", "ksi-local-aaaaaa", "ksi-local-bbbbbb"])
    monkeypatch.setattr(names, "cluster_name", lambda job_id: next(drawn))
    (tmp_path / "ksi-runs" / "ksi-local-aaaaaa").mkdir(parents=True)  # another run drew it first
    name, path = rundir.create(tmp_path, None)
    assert name == "ksi-local-bbbbbb" and path == tmp_path / "ksi-runs" / name
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


@pytest.mark.parametrize("name", ["kind", "ksi-local", "ksi-local-abc", "ksi-1-ABCDEF", "my-ksi-1-abcdef",
                                  "ksi-dev-abcdef", "ksi-1a-abcdef", "ksi-local-abcdef-2"])
def test_foreign_cluster_names_are_not_ksi(name: str) -> None:
    assert not names.is_ksi_cluster(name)


# --- ports ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "ok"), [("30000", True), ("32767", True), (" 31000 ", True), ("29999", False),
                                          ("32768", False), ("80", False), ("abc", False), ("", False),
                                          ("3.1e4", False)])
def test_parse_port(text: str, ok: bool) -> None:
    parsed = parse_port(text, "K8S_PORT")
    if ok:
        assert parsed == int(text)
    else:
        assert isinstance(parsed, Problem)
        assert "K8S_PORT" in parsed.message and "30000-32767" in parsed.fix


# --- kind config ------------------------------------------------------------------------------------------

def _config(shared: Path, udp: tuple[int, ...] = ()) -> kindconfig.KindConfig:
    return kindconfig.KindConfig("ksi-local-abc123", shared, 31234, "kindest/node:v1.37.0@sha256:0", "127.0.0.1", udp)


def test_kind_config_matches_recorded_file() -> None:
    """The rendered config is reviewed as a file; a change to the template shows up as a diff here."""
    rendered = kindconfig.render(_config(Path("/shared/project"), udp=(31235,)))
    golden = DATA / "kind-config.golden.yaml"
    if os.environ.get("KSI_ACCEPT_RECORDED") == "1":
        golden.write_text(rendered)
    expected = golden.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), rendered.splitlines(True), "recorded", "rendered"))
    assert not diff, f"kind config changed; if intended, rerun with KSI_ACCEPT_RECORDED=1:\n{diff}"


@pytest.mark.parametrize("nasty", NASTY_NAMES)
def test_kind_config_keeps_nasty_paths_intact(nasty: str) -> None:
    shared = Path("/shared") / nasty / "dir"
    data = kindconfig.parse(kindconfig.render(_config(shared)))
    assert data["nodes"][0]["extraMounts"] == [{"hostPath": str(shared), "containerPath": "/app"}]
    assert kindconfig.check(data, _config(shared)) == []


def test_kind_config_check_reports_every_difference() -> None:
    data = kindconfig.parse(kindconfig.render(_config(Path("/a"))))
    data["nodes"][0]["extraPortMappings"][0]["containerPort"] = 80
    data["networking"]["apiServerAddress"] = "0.0.0.0"
    problems = kindconfig.check(data, _config(Path("/b")))
    assert len(problems) == 3, problems


# --- kubeconfig -------------------------------------------------------------------------------------------

def _kind_kubeconfig(name: str, **cluster_extra: object) -> dict[str, object]:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": f"kind-{name}",
        "clusters": [{"name": f"kind-{name}", "cluster": {"server": "https://127.0.0.1:40000",
                                                        "certificate-authority-data": "Q0E=", **cluster_extra}}],
        "users": [{"name": f"kind-{name}", "user": {"client-certificate-data": "Y2VydA=="}}],
        "contexts": [{"name": f"kind-{name}", "context": {"cluster": f"kind-{name}", "user": f"kind-{name}"}}],
    }


def test_kubeconfig_gets_a_context_named_like_the_cluster() -> None:
    original = _kind_kubeconfig("ksi-local-abc123")
    updated = add_cluster_context(original, "ksi-local-abc123")
    assert updated["current-context"] == "ksi-local-abc123"
    names_ = [c["name"] for c in updated["contexts"]]
    assert names_ == ["kind-ksi-local-abc123", "ksi-local-abc123"]  # kind's own stays for `kind delete`
    assert server(updated, "ksi-local-abc123") == "https://127.0.0.1:40000"
    assert original["current-context"] == "kind-ksi-local-abc123"  # input untouched
    assert add_cluster_context(updated, "ksi-local-abc123") == updated  # idempotent


def test_kubeconfig_without_tls_verification_is_refused() -> None:
    config = add_cluster_context(_kind_kubeconfig("c", **{"insecure-skip-tls-verify": True}), "c")
    with pytest.raises(KsiError, match="disables TLS verification"):
        server(config, "c")


def test_kubeconfig_missing_kind_context_is_an_error() -> None:
    with pytest.raises(KsiError, match="no context named 'kind-other'"):
        add_cluster_context(_kind_kubeconfig("c"), "other")


# --- kind version -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "version"), [
    ("kind v0.27.0 go1.23.4 linux/amd64", (0, 27, 0)),
    ("kind v0.23.0-alpha+abc go1.22 linux/arm64", (0, 23, 0)),
    ("kind version 0.1", None),
])
def test_kind_version_parsing(text: str, version: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == version


# --- cgroups ----------------------------------------------------------------------------------------------

def _stage_cgroup(tmp_path: Path, own: str, controllers: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    (root / own.lstrip("/")).mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids io\n")
    (root / own.lstrip("/") / "cgroup.controllers").write_text(controllers + "\n")
    proc_self = tmp_path / "proc-self-cgroup"
    proc_self.write_text(f"0::{own}\n")
    return root, proc_self


@pytest.mark.parametrize(("setting", "controllers", "wrapped"), [
    ("auto", "cpu memory pids", False),
    ("auto", "memory pids", True),  # no cpu controller delegated: the Slurm step case
    ("always", "cpu memory pids", True),
    ("never", "", False),
])
def test_systemd_scope_decision(tmp_path: Path, setting: str, controllers: str, wrapped: bool) -> None:
    root, proc_self = _stage_cgroup(tmp_path, "/user.slice/user-1000.slice/session-1.scope", controllers)
    wrapper = cgroups.scope_wrapper(setting, root, proc_self)
    assert bool(wrapper) == wrapped
    if wrapped:
        assert wrapper[:3] == ("systemd-run", "--user", "--scope")
        assert "--property=Delegate=yes" in wrapper


def test_cgroup_v1_is_not_v2(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    assert not cgroups.is_v2(tmp_path)
    assert cgroups.is_v2(tmp_path / "unified")


# --- workload resolution ----------------------------------------------------------------------------------

def _file(path: Path, content: str | bytes, mode: int) -> Path:
    """Write ``content`` to ``path`` with ``mode`` and return the path."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    path.chmod(mode)
    return path


def test_workload_resolution(tmp_path: Path) -> None:
    executable = _file(tmp_path / "run me.sh", "#!/bin/sh\n", 0o755)
    text = _file(tmp_path / "plain.sh", "echo hi\n", 0o644)
    no_shebang = _file(tmp_path / "no-shebang.sh", "echo hi\n", 0o755)
    elf = _file(tmp_path / "tool", b"\x7fELF\0\0\0", 0o755)
    env_script = _file(tmp_path / "env.py", "#!/usr/bin/env -S python3 -u\n", 0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "python3"):
        _file(bin_dir / tool, "#!/bin/sh\n", 0o755)
    path = str(bin_dir)

    assert resolve(str(executable), ["a b"], path) == Workload(executable, (str(executable), "a b"))
    assert resolve(str(elf), [], path) == Workload(elf, (str(elf),))
    assert resolve(str(env_script), [], path) == Workload(env_script, (str(env_script),))
    assert resolve(str(text), [], path) == Workload(text, ("bash", str(text)), via_bash="is not executable")
    assert resolve(str(no_shebang), ["x"], path) == Workload(no_shebang, ("bash", str(no_shebang), "x"),
                                                             via_bash="has no #! line")


def _shebang(tmp_path: Path, line: str) -> Path:
    return _file(tmp_path / "w.sh", f"{line}\necho hi\n", 0o755)


@pytest.mark.parametrize(("line", "message"), [
    ("#!/nonexistent/sh", "names the interpreter '/nonexistent/sh' in its #! line, which does not exist"),
    ("#!", "has an empty #! line"),
    ("#!/usr/bin/env python-that-is-not-there", "runs 'python-that-is-not-there' through env"),
    ("#!/usr/bin/env -S A=1 no-such-tool --flag", "runs 'no-such-tool' through env"),
])
def test_workload_with_a_missing_interpreter_is_a_problem(tmp_path: Path, line: str, message: str) -> None:
    problem = resolve(str(_shebang(tmp_path, line)), [], os.defpath)
    assert isinstance(problem, Problem)
    assert message in problem.message and problem.code == EXIT_USAGE and "#! line" in problem.fix
    # Where the workload does not run (a follower of a multi-node run), the interpreter is not its business.
    assert isinstance(resolve(str(_shebang(tmp_path, line)), [], os.defpath, check_interpreter=False), Workload)


def test_workload_problems(tmp_path: Path) -> None:
    binary = _file(tmp_path / "blob", b"\x7fELF\0\0\0", 0o644)
    text = _file(tmp_path / "plain.sh", "echo hi\n", 0o644)
    for path, message, search in ((tmp_path / "missing.sh", "does not exist", os.defpath),
                                  (tmp_path, "is a directory", os.defpath),
                                  (binary, "binary without execute permission", os.defpath),
                                  (text, "is not executable and bash, which would run it, is not on PATH",
                                   str(tmp_path / "empty"))):
        problem = resolve(str(path), [], search)
        assert isinstance(problem, Problem), path
        assert message in problem.message and problem.code == EXIT_USAGE


# --- node-local state -------------------------------------------------------------------------------------

def test_state_dir_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state"
    assert check_private_dir(path, create=True) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_state_dir_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    problem = check_private_dir(path, create=True)
    assert problem is not None and problem.code == EXIT_PREREQUISITE
    assert "chmod 700" in problem.fix


def test_state_dir_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(tmp_path / "elsewhere")
    problem = check_private_dir(tmp_path / "state", create=True)
    assert problem is not None and "symlink" in problem.message


def test_process_start_identifies_this_process() -> None:
    start = process_start(os.getpid())
    assert isinstance(start, int) and start > 0
    assert process_start(2**22 + 12345) is None
    assert re.fullmatch(r"\d+", str(start))


def test_recorded_kind_config_is_valid_yaml() -> None:
    data = yaml.safe_load((DATA / "kind-config.golden.yaml").read_text())
    assert data["kind"] == "Cluster"


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-24T19:00:00\n", "2026-11-24T19:00:00"), ("N/A\n", None), ("Unknown", None), ("", None),
])
def test_squeue_end_time_parsing(text: str, expected: str | None) -> None:
    import time

    from ksi.tools.squeue import parse_end_time

    parsed = parse_end_time(text)
    if expected is None:
        assert parsed is None
    else:
        assert parsed == int(time.mktime(time.strptime(expected, "%Y-%m-%dT%H:%M:%S")))


@pytest.mark.parametrize(("text", "expected"), [
    ("4242 RUNNING\n", "RUNNING"),
    ("4242 COMPLETED\n4243 RUNNING\n4244 PENDING\n", "COMPLETED"),  # -j of an array's first task lists all
    ("4243 RUNNING\n4242 CANCELLED\n", "CANCELLED"),
    ("4243 RUNNING\n", None),
    ("", None),
])
def test_squeue_job_state_is_read_from_the_jobs_own_line(text: str, expected: str | None) -> None:
    from ksi.tools.squeue import parse_job_state

    assert parse_job_state(text, "4242") == expected


@pytest.mark.parametrize(("job_end", "expected"), [(None, 86400), (1000 + 7200, 7200 + 3600), (500, 86400)])
def test_token_lifetime_covers_the_job(job_end: int | None, expected: int) -> None:
    from ksi.cluster.access import token_lifetime

    assert token_lifetime(1000, job_end, 86400) == expected


# --- phases -----------------------------------------------------------------------------------------------

def test_a_phase_is_current_before_run_json_names_it(tmp_path: Path) -> None:
    """A stop signal that arrives once run.json shows a state is reported as stopping that phase."""
    from ksi.cluster.rundir import RunRecord
    from ksi.launch.lifecycle import Phases

    phases = Phases()
    seen: list[tuple[str, str]] = []

    class Recording(RunRecord):
        def save(self, **changes: object) -> None:
            seen.append((str(changes.get("state")), phases.current))
            super().save(**changes)

    record = Recording(tmp_path / "run.json", "ksi-local-abcdef", "n1", None)
    with phases.phase("access", record, api="https://127.0.0.1:1"):
        assert json.loads((tmp_path / "run.json").read_text())["state"] == "access"
    with phases.phase("peer", record, "peering"):
        pass
    assert seen == [("access", "access"), ("peering", "peer")]
    assert record.api == "https://127.0.0.1:1" and set(phases.seconds) == {"access", "peer"}


def test_a_relative_interpreter_is_found_from_the_working_directory(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel resolves a relative #! interpreter from the cwd, where ksi runs the workload, not the script's."""
    scripts, work = tmp_path / "scripts", tmp_path / "work"
    scripts.mkdir()
    (work / "bin").mkdir(parents=True)
    _file(work / "bin" / "interp", "#!/bin/sh\n", 0o755)
    workload = _file(scripts / "w.sh", "#!bin/interp\n", 0o755)
    monkeypatch.chdir(work)
    assert resolve(str(workload), [], os.defpath) == Workload(workload, (str(workload),))
    monkeypatch.chdir(scripts)  # only the script's own directory: no bin/interp from here
    problem = resolve(str(workload), [], os.defpath)
    assert isinstance(problem, Problem) and "names the interpreter 'bin/interp'" in problem.message
