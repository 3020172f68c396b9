"""scripts/setup.sh's two install paths: deploying (no root, no daemons) and developing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, in_ci, need, need_root

NOBODY = 65534
# Where the validators' and the lab's daemons would listen if a package had started one.
DAEMON_PORTS = (25, 53, 80, 110, 143, 443, 587, 993, 995, 4190)


def as_nobody(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "env", f"HOME={cwd}", "PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in env.items()),
                           *command], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def checkout():
    """A copy of the project's tracked files, owned by `nobody` (pytest's own temporary
    directories are root's alone)."""
    need_root()
    need(shutil.which("setpriv") is not None, "setpriv (util-linux) runs the script as another user")
    tmp_path = Path(tempfile.mkdtemp(prefix="mailgate-setup-", dir="/tmp"))
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    for path in (tmp_path, *tmp_path.rglob("*")):
        os.chown(path, NOBODY, NOBODY)
    try:
        yield tmp_path
    finally:
        shutil.rmtree(tmp_path)


def listening_ports() -> set[int]:
    lines = subprocess.run(["ss", "-ltnuH"], capture_output=True, text=True, check=True).stdout.splitlines()
    return {int(line.split()[4].rsplit(":", 1)[1]) for line in lines if line.split()[4].rsplit(":", 1)[1].isdigit()}


def test_the_deploy_path_needs_no_root_and_renders(checkout):
    setup = as_nobody(["bash", "scripts/setup.sh"], checkout)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "render with:" in setup.stdout
    render = as_nobody(["venv/bin/python", "-m", "mailgate", "render", "--config", "Pulumi.dev.yaml",
                        "--out", "render"], checkout)
    assert render.returncode == 0, render.stderr
    assert (checkout / "render/gateway/etc/nginx/conf.d/70-mailgate-http.conf").is_file()
    # Only the run-time packages: the test tools are the developer path's.
    assert not (checkout / "venv/bin/pytest").exists()


def test_without_the_venv_module_the_deploy_path_says_what_to_install(checkout):
    no_venv = checkout / "python3-without-venv"
    no_venv.write_text("#!/bin/sh\necho 'No module named venv' >&2\nexit 1\n")
    no_venv.chmod(0o755)
    setup = as_nobody(["bash", "scripts/setup.sh"], checkout, PYTHON=str(no_venv))
    assert setup.returncode == 1
    assert "sudo apt-get install python3-venv" in setup.stderr
    assert not (checkout / "venv").exists()


def test_the_developer_path_refuses_to_run_without_root_and_changes_nothing(checkout):
    before = sorted(p.name for p in checkout.iterdir())
    setup = as_nobody(["bash", "scripts/setup.sh", "--dev"], checkout)
    assert setup.returncode == 1
    assert "run it as root (sudo bash scripts/setup.sh --dev)" in setup.stderr
    assert sorted(p.name for p in checkout.iterdir()) == before
    wrong = as_nobody(["bash", "scripts/setup.sh", "--deploy"], checkout)
    assert wrong.returncode == 2 and "unknown option '--deploy'" in wrong.stderr


def test_after_the_developer_path_no_daemon_of_its_packages_listens():
    # Meaningful on a machine the developer path set up from scratch, as CI's; a developer's
    # own mail or web server would be a false alarm here.
    need(in_ci(), "checked in CI, where .ci/run has just run `setup.sh --dev` on a fresh machine")
    assert not listening_ports() & set(DAEMON_PORTS)
