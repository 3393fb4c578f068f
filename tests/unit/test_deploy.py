"""Deployment files: the Vagrant lab validates, our shell scripts are shellcheck-clean,
the systemd unit is well-formed, and the Vagrant lab uses the namespace lab's files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["deploy/provision.sh", "scripts/setup.sh", ".ci/run"]


def test_shell_scripts_pass_shellcheck() -> None:
    assert shutil.which("shellcheck"), "shellcheck missing: scripts/setup.sh installs it"
    proc = subprocess.run(
        ["shellcheck", *SCRIPTS], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vagrantfile_validates(tmp_path: Path) -> None:
    assert shutil.which("vagrant"), "vagrant missing: scripts/setup.sh installs it"
    env = {"VAGRANT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_vagrant_lab_provisions_every_node_with_the_namespace_labs_files() -> None:
    from gateway.lab.topology import NODES

    vagrantfile = (ROOT / "Vagrantfile").read_text()
    defined = set(re.findall(r'^\s+"([a-z-]+)"\s+=> \[\[', vagrantfile, flags=re.M))
    assert defined == {"router" if n == "wan" else n for n in NODES}
    provision = (ROOT / "deploy/provision.sh").read_text()
    for shared in ("configs/$node.toml", "nft/router-filter.nft", "nft/router-nat.nft"):
        assert shared in provision
    for node in ("gw-west", "gw-east"):
        assert (ROOT / "gateway/lab/configs" / f"{node}.toml").exists()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze missing (Debian's systemd package)")
    gateway = Path(shutil.which("gateway") or ROOT / ".venv/bin/gateway")
    unit = (ROOT / "deploy/gateway.service").read_text()
    unit = unit.replace("/opt/gateway/venv/bin/gateway", str(gateway))
    path = tmp_path / "gateway.service"
    path.write_text(unit)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if str(path) in line or "gateway.service" in line
    ]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
