"""Fixtures shared by every test: the simulated container host, the Slurm test bed, a ksi runner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.ksi_helpers import KSI, REPO, KsiRunner, isolated_environ

if TYPE_CHECKING:
    from tests.simhost.plugin import SimHost

pytest_plugins = ["tests.simhost.plugin", "tests.testbed.plugin"]

# Set to 1 to test a development checkout (an editable install) instead of an installed wheel; CI never does.
SOURCE_TREE_ENV = "KSI_TEST_SOURCE_TREE"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a ksi imported from the source tree: the suite tests what users install.

    An editable install, or the repository root on sys.path, hides a wheel that lacks a module or a data
    file. The `ksi` command the tests start must be the installed one next to this Python, too.
    """
    import ksi

    location = Path(ksi.__file__).resolve().parent
    if location == REPO / "ksi" and os.environ.get(SOURCE_TREE_ENV) != "1":
        pytest.exit(f"ksi is imported from the source tree ({location}), not from an installed package: install the "
                    f"built wheel (`pip install dist/ksi-*.whl`, as .ci/run does), or set {SOURCE_TREE_ENV}=1 to "
                    "test a development checkout", returncode=pytest.ExitCode.USAGE_ERROR)
    if not Path(KSI).is_file():
        pytest.exit(f"no installed ksi command at {KSI}: install ksi into this Python's environment",
                    returncode=pytest.ExitCode.USAGE_ERROR)


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
    )
    env.pop("K8S_PORT", None)
    env.pop("KUBECONFIG", None)
    return KsiRunner(env=env, cwd=cwd, shared=shared, state=state, home=home)
