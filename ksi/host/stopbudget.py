"""The stop budget: how long Slurm lets a stopped step live, and how ksi divides that time.

scancel and the time limit send every process of a step SIGTERM and, KillWait seconds later (slurm.conf,
default 30 s), SIGKILL. ``--signal=SIG@N`` (without ``B:``) sends SIG to the steps about N seconds before the
time limit (Slurm checks every 30 s, so up to 60 s earlier than asked); the SIGKILL then comes KillWait after
the limit. So a stop signal leaves:

    budget = KillWait                       (scancel, the time limit, any other stop)
           = time to the limit + KillWait   (the --signal warning)

spent in this order: the workload's grace period, then the teardown, then a safety margin:

    grace = min(KSI_GRACE_PERIOD, budget - teardown - margin), at least 0
    teardown = 2 x the slowest of this node's last deletes (KSI_TEARDOWN_TIMEOUT until one was measured)
    margin = 1 s + 10 % of the budget

Pure functions from Slurm's text to values, the arithmetic, and the node-local record of delete times.
"""

from __future__ import annotations

import glob
import math
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ksi.host.state import read_json, write_json

SLURM_DEFAULT_KILL_WAIT = 30  # slurm.conf(5): KillWait when slurm.conf does not set it
DEFAULT_SLURM_CONF = Path("/etc/slurm/slurm.conf")  # where Slurm's client commands look without SLURM_CONF
DEFAULT_SIGNAL_LEAD = 60  # sbatch(1): --signal without @TIME sends the signal 60 s before the limit
# sbatch(1): "the signal may be sent up to 60 seconds earlier than specified"; and a little for clocks.
WARNING_EARLY = 65.0
MARGIN_BASE = 1.0  # seconds of the margin kept whatever the budget (ksi's own exit, the kernel, the clocks)
MARGIN_SHARE = 0.1  # and this share of the budget
DELETE_FACTOR = 2.0  # a delete may take this much longer than the slowest one seen (a busy node)
DELETE_HISTORY = 5  # deletes remembered per node and user
DELETE_TIMES = "delete-seconds.json"  # in the node-local state directory
_INCLUDE_DEPTH = 4


@dataclass(frozen=True)
class EndSignal:
    """The job's ``--signal``: which signal Slurm sends, and how many seconds before the time limit."""

    signum: int
    lead: int

    def describe(self) -> str:
        """Return it as sbatch writes it: ``TERM@120``."""
        return f"{signal.Signals(self.signum).name.removeprefix('SIG')}@{self.lead}"


@dataclass(frozen=True)
class StopBudget:
    """What a node knows before any stop signal: KillWait and where it was read, the job's --signal."""

    kill_wait: float
    source: str  # "scontrol show config", a slurm.conf path, or "Slurm's default"
    end_signal: EndSignal | None = None

    def at(self, signum: int, now: float, end: float | None, running: bool) -> tuple[float, str]:
        """Return the seconds from a stop signal ``signum`` at ``now`` to Slurm's SIGKILL, and how they were reckoned.

        The time-limit path counts only when everything says it is the --signal warning: the same signal,
        a job still ``running`` (a scancel ends it at once), and its limit ``end`` (epoch seconds, as squeue
        says it now) close enough. Anything else is counted as a scancel: KillWait alone.
        """
        kill_wait = f"KillWait {self.kill_wait:g} s"
        warning = self.end_signal
        if warning is not None and signum == warning.signum and running and end is not None:
            left = end - now
            if 0 < left <= warning.lead + WARNING_EARLY:
                return left + self.kill_wait, f"the time limit in {left:.0f} s + {kill_wait}"
        return self.kill_wait, f"{kill_wait} from {self.source}"


@dataclass(frozen=True)
class StopPlan:
    """How a node divides the seconds between a stop signal and Slurm's SIGKILL."""

    budget: float
    why: str
    grace: float  # the workload's grace period
    teardown: float  # what the teardown may need on this node
    teardown_source: str
    margin: float

    @property
    def teardown_by(self) -> float:
        """Seconds after the stop signal by which the teardown must have finished."""
        return max(self.budget - self.margin, 0.0)

    @property
    def fits(self) -> bool:
        """True when the teardown fits in the budget even with no grace at all."""
        return self.teardown <= self.teardown_by

    def explain(self, wanted_grace: float | None) -> str:
        """Return the one line that says what the budget allows (``wanted_grace`` None on a follower)."""
        head = (f"{self.budget:.1f} s until Slurm's SIGKILL ({self.why}); the teardown here needs up to "
                f"{self.teardown:.1f} s ({self.teardown_source}) + {self.margin:.1f} s margin")
        if wanted_grace is None:
            return head + ("" if self.fits else "; tearing down at once, what is left then is the epilog's")
        if self.fits:
            return f"{head}, so the workload gets {self.grace:.1f} s of KSI_GRACE_PERIOD={wanted_grace:g} s"
        return f"{head}: more than the budget, so the workload gets no grace (KSI_GRACE_PERIOD={wanted_grace:g} s)"


def margin(budget: float) -> float:
    """Return the safety margin kept at the end of a budget of ``budget`` seconds."""
    return MARGIN_BASE + MARGIN_SHARE * budget


def plan(budget: float, why: str, wanted_grace: float, teardown: float, teardown_source: str) -> StopPlan:
    """Return how ``budget`` seconds are spent: grace first, as much as the teardown and the margin leave."""
    keep = margin(budget)
    grace = min(wanted_grace, max(budget - teardown - keep, 0.0))
    return StopPlan(budget, why, grace, teardown, teardown_source, keep)


def teardown_need(deletes: Sequence[float], timeout: float) -> tuple[float, str]:
    """Return what a teardown may need on this node, and why: from measured ``deletes``, else ``timeout``."""
    if not deletes:
        return timeout, "KSI_TEARDOWN_TIMEOUT; no delete measured on this node yet"
    need = min(math.ceil(DELETE_FACTOR * max(deletes) * 10) / 10, timeout)
    which = "the one delete" if len(deletes) == 1 else f"the slowest of the last {len(deletes)} deletes"
    return need, f"{DELETE_FACTOR:g} x {which} measured on this node"


# --- Slurm's text ---------------------------------------------------------------------------------------------

def parse_show_config(text: str) -> dict[str, str]:
    """Return the ``Key = value`` lines of ``scontrol show config`` as a mapping."""
    return {key.strip(): value.strip() for key, sep, value in (line.partition("=") for line in text.splitlines())
            if sep and key.strip() and " " not in key.strip()}


def seconds_value(text: str) -> int | None:
    """Return the seconds in a value such as ``30 sec`` or ``30``, or None."""
    match = re.fullmatch(r"\s*(\d+)(?:\s*sec)?\s*", text)
    return int(match[1]) if match else None


def kill_wait_of_config(config: Mapping[str, str]) -> int | None:
    """Return KillWait from ``scontrol show config`` (see :func:`parse_show_config`), or None."""
    return seconds_value(config.get("KillWait", ""))


def parse_slurm_conf(text: str) -> tuple[int | None, list[str]]:
    """Return KillWait set in slurm.conf ``text`` (the last one wins) and the files it includes, in order.

    Keys are case-insensitive, ``#`` starts a comment, a line may hold several ``Key=value`` words.
    """
    kill_wait: int | None = None
    includes: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        words = line.split()
        if len(words) >= 2 and words[0].lower() == "include":
            includes.append(line.split(None, 1)[1].strip())
            continue
        for word in words:
            key, sep, value = word.partition("=")
            if sep and key.lower() == "killwait" and (seconds := seconds_value(value)) is not None:
                kill_wait = seconds
    return kill_wait, includes


def slurm_conf_kill_wait(environ: Mapping[str, str]) -> tuple[int | None, str]:
    """Return KillWait from the slurm.conf Slurm's commands read here (SLURM_CONF, else the default) and its path.

    Follows ``Include`` lines (relative to the directory of slurm.conf). (None, path) when no file sets it
    and the file exists: Slurm then uses its default; (None, "") when there is no readable slurm.conf.
    """
    main = Path(environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF)
    found: int | None = None
    read_any = False

    def read(path: Path, depth: int) -> None:
        nonlocal found, read_any
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return
        read_any = True
        value, includes = parse_slurm_conf(text)
        if value is not None:
            found = value
        if depth < _INCLUDE_DEPTH:
            for name in includes:
                for included in sorted(glob.glob(str(main.parent / name))):  # an absolute name stays absolute
                    read(Path(included), depth + 1)

    read(main, 0)
    return found, str(main) if read_any else ""


def parse_signal_option(value: str) -> EndSignal | None:
    """Return the signal and lead time of an sbatch ``--signal=[{R|B}:]SIG[@TIME]`` value, or None if invalid."""
    match = re.fullmatch(r"(?:([RB]+):)?([A-Za-z0-9+]+)(?:@(\d+))?", value.strip())
    if match is None:
        return None
    name = match[2]
    try:
        signum = int(name) if name.isdigit() else signal.Signals[
            name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()].value
        signal.Signals(signum)
    except (KeyError, ValueError):
        return None
    lead = int(match[3]) if match[3] is not None else DEFAULT_SIGNAL_LEAD
    return EndSignal(signum, lead) if lead <= 0xFFFF else None


def batch_script_signal(script: str) -> EndSignal | None:
    """Return the ``--signal`` that the ``#SBATCH`` lines of a batch script ask for (the last one), or None.

    sbatch reads ``#SBATCH`` lines up to the first line that is neither a comment nor blank.
    """
    found: EndSignal | None = None
    for number, raw in enumerate(script.splitlines()):
        line = raw.strip()
        if number == 0 and line.startswith("#!"):
            continue
        if line and not line.startswith("#"):
            break
        if not line.startswith("#SBATCH"):
            continue
        words = []
        for word in line.removeprefix("#SBATCH").split():
            if word.startswith("#"):
                break
            words.append(word)
        for index, word in enumerate(words):
            if word.startswith("--signal="):
                found = parse_signal_option(word.partition("=")[2]) or found
            elif word == "--signal" and index + 1 < len(words):
                found = parse_signal_option(words[index + 1]) or found
    return found


# --- this node's deletes -------------------------------------------------------------------------------------

def delete_times(state_dir: Path) -> list[float]:
    """Return the durations of the last cluster deletes on this node (seconds, oldest first)."""
    data = read_json(state_dir / DELETE_TIMES)
    seconds = data.get("seconds") if isinstance(data, dict) else None
    if not isinstance(seconds, list):
        return []
    return [float(s) for s in seconds if isinstance(s, (int, float)) and 0 < s < 86400][-DELETE_HISTORY:]


def record_delete(state_dir: Path, seconds: float) -> None:
    """Add the duration of a verified delete to this node's record (keeps the last DELETE_HISTORY)."""
    if not state_dir.is_dir():
        return
    kept = [*delete_times(state_dir), round(seconds, 3)][-DELETE_HISTORY:]
    write_json(state_dir / DELETE_TIMES, {"seconds": kept})
