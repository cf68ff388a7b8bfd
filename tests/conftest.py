"""Fixtures shared by every test: the simulated container host, the Slurm test bed, a ksi runner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.ksi_helpers import REPO, KsiRunner, isolated_environ

if TYPE_CHECKING:
    from tests.simhost.plugin import SimHost

pytest_plugins = ["tests.simhost.plugin", "tests.testbed.plugin"]


@pytest.fixture
def ksi(simhost: SimHost, tmp_path: Path) -> KsiRunner:
    """A ksi command line on the simulated host, with its own HOME, state directory and shared directory.

    Paths contain spaces and quotes on purpose: everything that handles paths must survive them. The
    environment is the test's without Slurm's variables (a pytest inside an allocation must not make ksi
    think it runs in a job step), without any KSI_* setting or fault, and without K8S_PORT and KUBECONFIG.
    """
    home = tmp_path / "home dir"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("# the user's own kubeconfig: ksi must never touch it\n")
    shared = tmp_path / "shared 'dir' \"quoted\""
    shared.mkdir()
    cwd = tmp_path / "work dir"
    cwd.mkdir()
    state = tmp_path / "state"
    env = simhost.env(
        isolated_environ(),
        HOME=str(home),
        KSI_STATE_DIR=str(state),
        KSI_SYSTEMD_SCOPE="never",  # the test host's cgroups are not delegated; the decision is unit-tested
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    env.pop("K8S_PORT", None)
    env.pop("KUBECONFIG", None)
    return KsiRunner(env=env, cwd=cwd, shared=shared, state=state, home=home)
