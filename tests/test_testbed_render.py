"""Pure parts of the Slurm test bed (no root, no Slurm): names, slurm.conf, /etc/hosts, SlurmBed.env."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.testbed import bedctl
from tests.testbed.plugin import Node, SlurmBed, cached_instance


def spec(instance: str = "ksi", index: int = 7, nodes: int = 3, kill_wait: int = 5) -> bedctl.BedSpec:
    return bedctl.derive_spec(instance, index, nodes, kill_wait, Path("/var/tmp/ksi-testbed"), "vm")


def test_names_derive_from_instance_and_index() -> None:
    s = spec()
    assert [n.name for n in s.nodes] == ["ksi-node1", "ksi-node2", "ksi-node3"]
    assert [n.address for n in s.nodes] == ["10.213.7.11", "10.213.7.12", "10.213.7.13"]
    assert [n.netns for n in s.nodes] == ["ksitb-ksi-node1", "ksitb-ksi-node2", "ksitb-ksi-node3"]
    assert s.bridge == "ksitb7" and s.bridge_address == "10.213.7.1"
    assert (s.ctld_port, s.slurmd_port) == (20028, 20029)
    assert s.state_dir == Path("/var/tmp/ksi-testbed/ksi")
    assert s.munge_socket == Path("/run/munge/ksitb-ksi.socket")
    longest = spec(index=250, nodes=bedctl.MAX_NODES)
    assert all(len(name) <= 15 for name in (longest.bridge, *(n.veth for n in longest.nodes)))


def test_two_instances_prefer_different_indexes() -> None:
    assert bedctl.preferred_index("ksi") != bedctl.preferred_index("ksi-downtest")
    assert all(bedctl.preferred_index(f"i{n}") in bedctl.INDEX_RANGE for n in range(100))


@pytest.mark.parametrize("name", ["ksi", "a", "ksi-down2", "x" * 20])
def test_valid_instance_names(name: str) -> None:
    assert bedctl.validate_instance(name) == name


@pytest.mark.parametrize("name", ["", "Ksi", "1ksi", "ksi-", "ksi_x", "a b", "x" * 21, "ksi;rm"])
def test_invalid_instance_names(name: str) -> None:
    with pytest.raises(bedctl.BedError):
        bedctl.validate_instance(name)


def test_slurm_conf_has_what_the_tests_rely_on() -> None:
    conf = bedctl.render_slurm_conf(spec(kill_wait=9))
    lines = set(conf.splitlines())
    for expected in (
        "SlurmctldHost=vm(10.213.7.1)",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "KillWait=9",
        "MpiDefault=none",
        "AuthInfo=socket=/run/munge/ksitb-ksi.socket",
        "Epilog=/var/tmp/ksi-testbed/ksi/epilog-dispatch",
        "SlurmdSpoolDir=/var/tmp/ksi-testbed/ksi/spool/%n",
        "SlurmdPidFile=/var/tmp/ksi-testbed/ksi/run/slurmd-%n.pid",
        "SlurmdLogFile=/var/tmp/ksi-testbed/ksi/log/slurmd-%n.log",
        "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
    ):
        assert expected in lines, expected
    assert "NodeName=ksi-node2 NodeAddr=10.213.7.12 NodeHostname=ksi-node2" in conf
    private = "/var/tmp/ksi-testbed/ksi/private"
    assert not any(private in line for line in lines if not line.startswith("TmpFS="))


def test_hosts_lines_are_replaced_and_removed_per_instance() -> None:
    base = "127.0.0.1 localhost\n10.9.9.9 other\n"
    a, b = spec("a", 1, 2), spec("b", 2, 1)
    with_a = bedctl.render_hosts(base, "a", a.nodes)
    with_both = bedctl.render_hosts(with_a, "b", b.nodes)
    assert with_both.count("# ksi-testbed:a") == 2 and with_both.count("# ksi-testbed:b") == 1
    again = bedctl.render_hosts(with_both, "a", a.nodes)
    assert sorted(again.splitlines()) == sorted(with_both.splitlines())  # idempotent
    without_a = bedctl.render_hosts(with_both, "a", [])
    assert "ksi-testbed:a" not in without_a and "b-node1" in without_a
    assert bedctl.render_hosts(without_a, "b", []) == base


def test_an_instance_owns_its_hosts_lines_only() -> None:
    """`nf` must not take the lines of its caching twin `nf-cache` for its own leftovers."""
    twin = bedctl.render_hosts("127.0.0.1\tlocalhost\n", "nf-cache", spec("nf-cache").nodes)
    assert bedctl.tagged_hosts_lines(twin, "nf") == []
    assert len(bedctl.tagged_hosts_lines(twin, "nf-cache")) == 3
    both = bedctl.render_hosts(twin, "nf", spec("nf").nodes)
    assert bedctl.render_hosts(both, "nf", []) == twin


def test_record_round_trips() -> None:
    s = spec()
    assert bedctl.BedSpec.from_record(s.to_record("ready")) == s
    bed = SlurmBed.from_record(s.to_record("ready"))
    assert bed.nodes[0] == Node("ksi-node1", "10.213.7.11", "ksitb-ksi-node1")
    assert bed.private_dir == s.private_dir and bed.epilog_dir == s.epilog_dir and bed.kill_wait == 5


def test_cache_mode_is_recorded_and_named() -> None:
    cached = bedctl.derive_spec("ksi", 7, 3, 5, Path("/var/tmp/ksi-testbed"), "vm", cache_timeout=10)
    assert cached.cache_options == "entry_timeout=10,attr_timeout=10,negative_timeout=10"
    assert cached.cache_pid_file("ksi-node2") == Path("/var/tmp/ksi-testbed/ksi/run/bindfs-ksi-node2.pid")
    assert bedctl.BedSpec.from_record(cached.to_record("ready")) == cached
    assert SlurmBed.from_record(cached.to_record("ready")).cache_timeout == 10
    assert "CACHE_TIMEOUT=10" in bedctl.describe(cached.to_record("ready")).splitlines()
    old = spec().to_record("ready")
    del old["cache_timeout"]  # a bed.json written before caching mounts existed
    assert bedctl.BedSpec.from_record(old).cache_timeout == 0
    with pytest.raises(bedctl.BedError, match="cache timeout -1"):
        bedctl.derive_spec("ksi", 7, 3, 5, Path("/var/tmp/ksi-testbed"), "vm", cache_timeout=-1)


@pytest.mark.parametrize(("value", "expected"), [(None, 0), ("", 0), ("0", 0), ("30", 30), ("x", None), ("-2", None)])
def test_cache_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                            expected: int | None) -> None:
    if value is None:
        monkeypatch.delenv(bedctl.ENV_CACHE, raising=False)
    else:
        monkeypatch.setenv(bedctl.ENV_CACHE, value)
    if expected is None:
        with pytest.raises(bedctl.BedError, match=bedctl.ENV_CACHE):
            bedctl.cache_timeout_from_env()
    else:
        assert bedctl.cache_timeout_from_env() == expected


@pytest.mark.parametrize("instance", ["ksi", "nf", "x" * 20, "abcdefghijklm-opqrst"])
def test_the_caching_twin_has_a_valid_instance_name_of_its_own(instance: str) -> None:
    twin = cached_instance(instance)
    assert bedctl.validate_instance(twin) == twin and twin != instance


def test_env_sets_slurm_conf_and_drops_inherited_slurm_variables() -> None:
    bed = SlurmBed.from_record(spec().to_record("ready"))
    base = {"PATH": "/bin", "SLURM_JOB_ID": "42", "SBATCH_PARTITION": "x", "SLURM_CONF": "/etc/slurm/slurm.conf"}
    env = bed.env(base, KSI_X="1")
    assert env == {"PATH": "/bin", "SLURM_CONF": str(bed.conf), "KSI_X": "1"}
