"""The workload's API access on one node: what the token is, how ksi got it, where the client's key went."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Any

from tests.ksi_helpers import ACCESS_REQUESTS, WORKLOADS, KsiRunner
from tests.simhost.apiserver import logged_requests
from tests.simhost.plugin import SimHost


def claims(token: str) -> dict[str, Any]:
    """Return the claims of a JSON web token (the payload between the first and second dot)."""
    payload = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def test_token_is_a_cluster_admin_service_account_token_got_in_three_requests_over_one_connection(
        ksi: KsiRunner, simhost: SimHost, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    workload = tmp_path / "w.sh"
    # While ksi runs: keep the cluster's API log, where ksi's kubernetes client keeps its files, and
    # whether a private key sits in ksi's TMPDIR; then check the token against the API (check_env.py).
    workload.write_text("#!/bin/bash\n" + textwrap.dedent(f"""\
        cp "$KSI_SIM_ROOT"/*/*/containers/*/node.log "{seen}/node.log"
        ls -A "$KSI_RUN_DIR/.kube-client" > "{seen}/client-files"
        grep -rl "PRIVATE KEY" "$TMPDIR" > "{seen}/keys-in-tmp"
        exec "{WORKLOADS / 'check_env.py'}" "{seen}/report.json"
        """))
    workload.chmod(0o755)
    result = ksi.run("run", str(workload), str(ksi.shared), env={"KSI_TOKEN_TTL": "7200", "TMPDIR": str(tmp)})
    assert result.returncode == 0, result.stderr

    report = json.loads((seen / "report.json").read_text())
    assert report["api_status"] == 200  # the token lists nodes: its ServiceAccount is bound to cluster-admin
    token = claims(report["token"])
    assert token["sub"] == "system:serviceaccount:kube-system:admin-user"
    assert token["exp"] - token["iat"] == 7200  # KSI_TOKEN_TTL outside a Slurm job

    requests = [r for r in logged_requests((seen / "node.log").read_text()) if (r.method, r.path) in ACCESS_REQUESTS]
    assert sorted((r.method, r.path) for r in requests) == sorted(ACCESS_REQUESTS), requests  # each once
    assert {r.status for r in requests} == {201}
    assert len({r.port for r in requests}) == 1, requests  # one connection

    # The kubernetes client's copies of the kubeconfig's certificates and key live in the run directory,
    # not in TMPDIR, and go with the cluster.
    assert (seen / "client-files").read_text().split() != []
    assert (seen / "keys-in-tmp").read_text() == ""
    [run_dir] = ksi.run_dirs()
    assert not (run_dir / ".kube-client").exists()
    assert list(tmp.iterdir()) == []
    simhost.assert_clean()

