"""The stop budget: Slurm's text parsed, the budget divided, and a node's run learning it in the background.

scontrol and squeue are small executables on PATH (as the real ones would be), answering from files and
variables the tests set; the Slurm test bed's own tests (test_killwait_slurm.py) run the real ones.
"""

from __future__ import annotations

import logging
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from ksi import settings as settings_mod
from ksi.cluster import stopping
from ksi.cluster.node import reserve_port
from ksi.cluster.stopping import Stopping
from ksi.cluster.teardown import Teardown
from ksi.errors import Interrupted
from ksi.host import ports, stopbudget
from ksi.host.signals import SignalGuard
from ksi.host.slurm import context
from ksi.host.stopbudget import EndSignal, StopBudget, plan
from ksi.tools.squeue import parse_state_and_end
from tests.ksi_helpers import wait_for

# Lines of `scontrol show config` of Slurm 22.05 around KillWait, as printed.
SHOW_CONFIG = """\
Configuration data as of 2026-12-04T12:50:26
AccountingStorageBackupHost = (null)
JobContainerType        = job_container/none
KillOnBadExit           = 0
KillWait                = 5 sec
MessageTimeout          = 10 sec
OverTimeLimit           = 0 min
SLURM_CONF              = /etc/slurm/slurm.conf
"""


# --- Slurm's text ------------------------------------------------------------------------------------------

def test_kill_wait_from_scontrol_show_config() -> None:
    config = stopbudget.parse_show_config(SHOW_CONFIG)
    assert stopbudget.kill_wait_of_config(config) == 5
    assert config["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert stopbudget.kill_wait_of_config(stopbudget.parse_show_config("KillWait = soon\n")) is None
    assert stopbudget.kill_wait_of_config({}) is None


def test_slurm_conf_keys_are_case_insensitive_and_the_last_one_wins() -> None:
    text = textwrap.dedent("""\
        # KillWait=99 is a comment
        ClusterName=c1
        killwait=12
        MinJobAge=10 KillWait=45   # two settings on one line
        include extra.conf
        Include /etc/slurm/nodes.conf
        """)
    assert stopbudget.parse_slurm_conf(text) == (45, ["extra.conf", "/etc/slurm/nodes.conf"])
    assert stopbudget.parse_slurm_conf("KillWait=\nSlurmctldPort=6817\n") == (None, [])


def test_slurm_conf_of_slurm_conf_variable_follows_includes(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("KillWait=10\nInclude timers*.conf\n")
    (tmp_path / "timers-a.conf").write_text("KillWait=20\n")
    (tmp_path / "timers-b.conf").write_text("# nothing here\n")
    assert stopbudget.slurm_conf_kill_wait({"SLURM_CONF": str(conf)}) == (20, str(conf))
    conf.write_text("ClusterName=c1\n")
    assert stopbudget.slurm_conf_kill_wait({"SLURM_CONF": str(conf)}) == (None, str(conf))
    assert stopbudget.slurm_conf_kill_wait({"SLURM_CONF": str(tmp_path / "missing.conf")}) == (None, "")


@pytest.mark.parametrize(("value", "expected"), [
    ("TERM@15", EndSignal(signal.SIGTERM, 15)),
    ("B:USR1@120", EndSignal(signal.SIGUSR1, 120)),
    ("R:SIGINT@30", EndSignal(signal.SIGINT, 30)),
    ("RB:10@5", EndSignal(signal.SIGUSR1, 5)),
    ("term", EndSignal(signal.SIGTERM, 60)),  # sbatch's default lead time
    ("15", EndSignal(signal.SIGTERM, 60)),
    ("BOGUS@10", None),
    ("TERM@70000", None),
    ("X:TERM@1", None),
    ("", None),
])
def test_signal_option(value: str, expected: EndSignal | None) -> None:
    assert stopbudget.parse_signal_option(value) == expected


def test_batch_script_signal_is_read_like_sbatch_reads_directives() -> None:
    script = textwrap.dedent("""\
        #!/bin/bash
        #SBATCH --time=30   # minutes
        #SBATCH --signal=USR1@60

        # a comment between directives
        #SBATCH --signal TERM@120  # the last one counts
        srun ksi run w.sh
        #SBATCH --signal=TERM@5
        """)
    assert stopbudget.batch_script_signal(script) == EndSignal(signal.SIGTERM, 120)
    assert stopbudget.batch_script_signal("#!/bin/sh\n#SBATCH -N3\nsrun true\n") is None
    assert stopbudget.batch_script_signal("#!/bin/sh\n# SBATCH --signal=TERM@9\n") is None  # not a directive
    assert stopbudget.batch_script_signal(
        "#!/bin/sh\n#SBATCH --signal=TERM@9 # the signal\n#SBATCH --signal=nonsense\n") == EndSignal(15, 9)


@pytest.mark.parametrize(("text", "expected"), [
    ("42 RUNNING 2026-12-04T12:51:43\n", "RUNNING"),
    ("42 COMPLETING 2026-12-04T12:51:43\n", "COMPLETING"),
    ("420 RUNNING 2026-12-04T12:51:43\n", None),
    ("42 RUNNING\n", None),
    ("", None),
])
def test_squeue_state_and_end(text: str, expected: str | None) -> None:
    found = parse_state_and_end(text, "42")
    assert (found[0] if found else None) == expected
    if found:
        assert found[1] == int(time.mktime(time.strptime("2026-12-04T12:51:43", "%Y-%m-%dT%H:%M:%S")))


# --- the budget and how it is divided --------------------------------------------------------------------

WARNED = StopBudget(5, "scontrol show config", EndSignal(signal.SIGTERM, 15))


@pytest.mark.parametrize(("signum", "end", "running", "seconds", "why"), [
    (signal.SIGTERM, 1020.0, True, 25.0, "the time limit in 20 s + KillWait 5 s"),  # the --signal warning
    (signal.SIGTERM, 1080.0, True, 85.0, "the time limit in 80 s + KillWait 5 s"),  # sent up to 60 s early
    (signal.SIGTERM, 1020.0, False, 5.0, "KillWait 5 s from scontrol show config"),  # scancel: CANCELLED at once
    (signal.SIGINT, 1020.0, True, 5.0, "KillWait 5 s from scontrol show config"),  # not the warning's signal
    (signal.SIGTERM, 1200.0, True, 5.0, "KillWait 5 s from scontrol show config"),  # far from the limit
    (signal.SIGTERM, 999.0, True, 5.0, "KillWait 5 s from scontrol show config"),  # the limit itself
    (signal.SIGTERM, None, True, 5.0, "KillWait 5 s from scontrol show config"),  # squeue did not answer
])
def test_budget_of_a_stop_signal(signum: int, end: float | None, running: bool, seconds: float, why: str) -> None:
    assert WARNED.at(signum, 1000.0, end, running) == (seconds, why)
    assert StopBudget(5, "x").at(signum, 1000.0, end, running)[0] == 5.0  # no --signal known: KillWait only


def test_grace_gets_what_teardown_and_margin_leave() -> None:
    roomy = plan(30, "KillWait 30 s", 5, 20, "KSI_TEARDOWN_TIMEOUT")
    assert (roomy.grace, roomy.margin, roomy.teardown_by, roomy.fits) == (5, 4.0, 26.0, True)
    short = plan(5, "KillWait 5 s", 60, 1.8, "measured")
    assert short.grace == pytest.approx(1.7) and short.teardown_by == 3.5 and short.fits
    assert "so the workload gets 1.7 s of KSI_GRACE_PERIOD=60 s" in short.explain(60)
    assert short.explain(60).startswith("5.0 s until Slurm's SIGKILL (KillWait 5 s); the teardown here needs up "
                                        "to 1.8 s (measured) + 1.5 s margin")
    hopeless = plan(5, "KillWait 5 s", 5, 20, "KSI_TEARDOWN_TIMEOUT")
    assert hopeless.grace == 0 and not hopeless.fits
    assert hopeless.explain(5).endswith("more than the budget, so the workload gets no grace (KSI_GRACE_PERIOD=5 s)")
    assert hopeless.explain(None).endswith("tearing down at once, what is left then is the epilog's")


def test_teardown_need_comes_from_measured_deletes(tmp_path: Path) -> None:
    assert stopbudget.teardown_need([], 20) == (20, "KSI_TEARDOWN_TIMEOUT; no delete measured on this node yet")
    assert stopbudget.teardown_need([0.4, 1.21, 0.9], 20) == (2.5, "2 x the slowest of the last 3 deletes "
                                                                  "measured on this node")
    assert stopbudget.teardown_need([30.0], 20)[0] == 20  # never more than KSI_TEARDOWN_TIMEOUT
    for seconds in (1, 2, 3, 4, 5, 6.5):
        stopbudget.record_delete(tmp_path, seconds)
    assert stopbudget.delete_times(tmp_path) == [2, 3, 4, 5, 6.5]
    assert (tmp_path / stopbudget.DELETE_TIMES).stat().st_mode & 0o777 == 0o600
    (tmp_path / stopbudget.DELETE_TIMES).write_text('{"seconds": [1, "x", -3, null, 2]}')
    assert stopbudget.delete_times(tmp_path) == [1, 2]
    stopbudget.record_delete(tmp_path / "missing", 1)  # no state directory: nothing to remember in
    assert not (tmp_path / "missing").exists()


def test_teardown_time_left_is_bounded_by_the_deadline() -> None:
    teardown = Teardown()
    assert teardown.time_left(20) == 20
    soon = time.monotonic() + 5
    teardown.deadline = lambda: soon
    assert 4 < teardown.time_left(20) <= 5
    teardown.deadline = lambda: soon - 10
    assert teardown.time_left(20) == 1.0  # a delete always gets a chance


def test_a_stop_right_after_a_port_is_reserved_still_releases_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop signal raises wherever ksi is: the release must be registered before the reservation exists."""
    teardown = Teardown()

    def stopped(*args: object) -> None:
        raise Interrupted(signal.SIGTERM, "SIGTERM")

    monkeypatch.setattr(ports._log, "debug", stopped)  # the first thing reserve() does once the file is written
    with pytest.raises(Interrupted):
        reserve_port(tmp_path, teardown, "ksi-1-abcdef", None)
    assert [p.name for p in (tmp_path / "ports").iterdir()] != []
    monkeypatch.undo()
    reserve_port(tmp_path, Teardown(), "ksi-2-other", None)  # another run's reservation on the node stays
    assert teardown.run()
    assert [ports.PortReservations(tmp_path).held()[int(p.name)] for p in (tmp_path / "ports").iterdir()] == [
        "ksi-2-other"]


# --- a run learning its budget -----------------------------------------------------------------------------

SCONTROL = """#!/bin/sh
case "$1 $2" in
  "show config") [ -n "$FAKE_SCONTROL_DOWN" ] && { echo "slurm_load_ctl_conf error: Unable to contact" >&2; exit 1; }
                 [ -n "$FAKE_SCONTROL_SLOW" ] && sleep "$FAKE_SCONTROL_SLOW"
                 echo "KillWait                = $FAKE_KILL_WAIT sec" ;;
  "write batch_script") [ "$3 $4" = "$FAKE_JOB -" ] && [ -f "$FAKE_BATCH" ] && exec cat "$FAKE_BATCH"
                 echo "scontrol: error: job $3 is not a batch job" >&2; exit 1 ;;
  *) echo "fake scontrol: unexpected $*" >&2; exit 9 ;;
esac
"""
SQUEUE = """#!/bin/sh
[ "$*" = "-h -j $FAKE_JOB -o %A %T %e" ] || { echo "fake squeue: unexpected $*" >&2; exit 9; }
echo "$FAKE_JOB $FAKE_STATE $(date -d "@$FAKE_END" +"$SLURM_TIME_FORMAT")"
"""


@pytest.fixture
def slurm_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", SCONTROL), ("squeue", SQUEUE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "state").mkdir(mode=0o700)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "FAKE_JOB": "42",
            "FAKE_KILL_WAIT": "30", "KSI_STATE_DIR": str(tmp_path / "state"),
            "SLURM_CONF": str(tmp_path / "slurm.conf")}


def _stopped(env: dict[str, str], signum: int = signal.SIGTERM, *, learned: bool = True) -> tuple[Stopping,
                                                                                                  SignalGuard]:
    """Return a run's Stopping (learning from ``env``) after a real ``signum`` reached this process.

    The signal comes once the lookup has finished, as it does in a run (the lookup takes a fraction of the
    checks' time): a stop during the lookup is the slurm.conf test's.
    """
    settings, problems = settings_mod.load(env)
    assert problems == []
    guard = SignalGuard()
    with guard.installed():
        stop = Stopping.learn(context(env), settings, env, guard)
        if learned:
            wait_for(lambda: stop.learned, 30, "the stop budget's lookup")
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises in this thread, well before
    return stop, guard


def test_outside_slurm_the_settings_apply_as_they_are(slurm_env: dict[str, str]) -> None:
    env = {k: v for k, v in slurm_env.items() if not k.startswith("SLURM_")} | {"KSI_GRACE_PERIOD": "60"}
    stop, _ = _stopped(env)
    assert stop.grace(signal.SIGTERM) == 60
    assert stop.teardown_deadline() is None


def test_a_short_kill_wait_shortens_the_grace_once_in_one_line(slurm_env: dict[str, str],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    stopbudget.record_delete(Path(slurm_env["KSI_STATE_DIR"]), 1.2)
    with caplog.at_level(logging.DEBUG, logger="ksi"):
        stop, guard = _stopped(slurm_env | {"FAKE_KILL_WAIT": "5", "KSI_GRACE_PERIOD": "60"})
        assert 0.9 < stop.grace(signal.SIGTERM) <= 1.1  # 5 - 2.4 (2 x 1.2) - 1.5 margin
        assert stop.grace(signal.SIGTERM) <= 1.1  # planned once: the same plan later
        deadline = stop.teardown_deadline()
    assert guard.first_at is not None and deadline == pytest.approx(guard.first_at + 3.5)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == ["stop: 5.0 s until Slurm's SIGKILL (KillWait 5 s from scontrol show config); the teardown here "
                     "needs up to 2.4 s (2 x the one delete measured on this node) + 1.5 s margin, so "
                     "the workload gets 1.1 s of KSI_GRACE_PERIOD=60 s"]


def test_a_roomy_kill_wait_keeps_the_grace(slurm_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ksi"):
        stop, _ = _stopped(slurm_env)  # KillWait 30: 5 s grace + 20 s teardown + 4 s margin fit
        assert 4.5 < stop.grace(signal.SIGTERM) <= 5
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_kill_wait_falls_back_to_slurm_conf_then_to_slurms_default(slurm_env: dict[str, str]) -> None:
    down = slurm_env | {"FAKE_SCONTROL_DOWN": "1"}
    Path(slurm_env["SLURM_CONF"]).write_text("KillWait=8\n")
    assert stopping.kill_wait(down) == (8, slurm_env["SLURM_CONF"])
    Path(slurm_env["SLURM_CONF"]).write_text("ClusterName=c\n")
    assert stopping.kill_wait(down) == (30, f"Slurm's default, {slurm_env['SLURM_CONF']} does not set it")
    Path(slurm_env["SLURM_CONF"]).unlink()
    assert stopping.site_kill_wait(down) == (None, "no answer from scontrol show config and no slurm.conf")
    assert stopping.kill_wait(down) == (30, "Slurm's default; no answer from scontrol show config and no slurm.conf")
    assert stopping.kill_wait(slurm_env | {"FAKE_KILL_WAIT": "120"}) == (120, "scontrol show config")


def test_a_stop_during_a_slow_lookup_reads_slurm_conf(slurm_env: dict[str, str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    Path(slurm_env["SLURM_CONF"]).write_text("KillWait=8\n")
    env = slurm_env | {"FAKE_SCONTROL_SLOW": "5", "KSI_GRACE_PERIOD": "60", "KSI_TEARDOWN_TIMEOUT": "2"}
    with caplog.at_level(logging.INFO, logger="ksi"):
        stop, _ = _stopped(env, learned=False)
        started = time.monotonic()
        grace = stop.grace(signal.SIGTERM)
    assert time.monotonic() - started < stopping.LEARN_WAIT + 1  # it did not wait for the controller
    assert 3 < grace <= 8 - 2 - 1.8  # KillWait 8 s from slurm.conf: 2 s of teardown, 1.8 s of margin
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"(KillWait 8 s from {slurm_env['SLURM_CONF']})" in line


def test_the_signal_warning_adds_the_time_to_the_limit(slurm_env: dict[str, str], tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    batch = tmp_path / "job.sh"
    batch.write_text("#!/bin/bash\n#SBATCH --signal=TERM@15\nsrun ksi run w.sh\n")
    end = int(time.time()) + 20
    env = slurm_env | {"FAKE_KILL_WAIT": "5", "KSI_GRACE_PERIOD": "300", "FAKE_BATCH": str(batch),
                       "FAKE_STATE": "RUNNING", "FAKE_END": str(end), "KSI_TEARDOWN_TIMEOUT": "10"}
    with caplog.at_level(logging.INFO, logger="ksi"):
        stop, _ = _stopped(env)
        grace = stop.grace(signal.SIGTERM)
    budget = end - time.time() + 5  # about 25 s: grace = budget - 10 s teardown - (1 s + 10 % of it) margin
    assert grace == pytest.approx(budget - 10 - (1 + 0.1 * budget), abs=0.5)
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "until Slurm's SIGKILL (the time limit in " in line and " s + KillWait 5 s)" in line

    signalling = env | {"FAKE_STATE": "SIGNALING"}  # what squeue says while slurmctld delivers the warning
    stop, _ = _stopped(signalling)
    assert stop.grace(signal.SIGTERM) > 5

    cancelled = env | {"FAKE_STATE": "COMPLETING"}  # the same signal from scancel: KillWait alone
    stop, _ = _stopped(cancelled)
    assert stop.grace(signal.SIGTERM) == 0  # 5 s cannot hold a 10 s teardown
