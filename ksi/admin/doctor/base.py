"""What every check of ``ksi doctor`` works with: the Check it returns and the Host it looks at."""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ksi.errors import KsiError
from ksi.tools import proc

TOOL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Check:
    """The outcome of one check: what was checked, whether it passed, what was found, and how to fix it."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        """Return the check as one console line (without the node prefix)."""
        text = f"{'PASS' if self.ok else 'FAIL'} {self.name}"
        if self.detail:
            text += f": {self.detail}"
        if not self.ok and self.fix:
            text += f"; fix: {self.fix}"
        return text

    def as_dict(self) -> dict[str, object]:
        """Return the check as a JSON-ready mapping."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}

@dataclass(frozen=True)
class Host:
    """Where the checks look and what the tools run with; the defaults are the real node."""

    env: Mapping[str, str]
    uid: int
    user: str
    home: Path
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    etc_root: Path = Path("/etc")
    modules_root: Path = Path("/lib/modules")
    boot_root: Path = Path("/boot")
    run_user_root: Path = Path("/run/user")
    provider: str = "nerdctl"  # kind's container runtime, checked through its adapter (ksi.tools.runtime)

    @classmethod
    def this_node(cls, env: Mapping[str, str], provider: str = "nerdctl") -> Host:
        """Return the Host of the calling user on this node, with tools looked up on ``env``'s PATH."""
        uid = os.getuid()
        try:
            entry = pwd.getpwuid(uid)
            user, home = entry.pw_name, Path(entry.pw_dir)
        except KeyError:
            user, home = env.get("USER", str(uid)), Path(env.get("HOME", "/"))
        return cls(env=dict(env), uid=uid, user=user, home=Path(env.get("HOME") or home), provider=provider)

    def kernel_release(self) -> str:
        """Return the running kernel's release (``uname -r``), read from proc."""
        return read(self.proc_root / "sys/kernel/osrelease").strip()


def read(path: Path) -> str:
    """Return the text of ``path``, or "" when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def version_text(version: tuple[int, ...]) -> str:
    """Return ``version`` as text (0.23.0)."""
    return ".".join(map(str, version))


def tool_output(host: Host, argv: list[str]) -> str | KsiError:
    """Run ``argv`` with the host's environment and return its stdout, or the error."""
    try:
        return proc.run(argv, env=host.env, timeout=TOOL_TIMEOUT, step="doctor").stdout
    except KsiError as exc:
        return exc
