"""Shared fixtures: the example stack's settings and the rule for missing validators."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate.cli import load_stack  # noqa: E402
from mailgate.settings import Settings  # noqa: E402

DEV_STACK = ROOT / "Pulumi.dev.yaml"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def need(condition: bool, reason: str) -> None:
    """Skip for a developer without the means; fail under CI, where they must be there."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def need_program(name: str) -> str:
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )
    need(path is not None, f"{name} is not installed (bash scripts/setup.sh installs it)")
    return path  # type: ignore[return-value]


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (network namespaces, iptables)")


@pytest.fixture(scope="session")
def dev_settings() -> Settings:
    return load_stack(DEV_STACK)


@pytest.fixture(scope="session")
def dev_raw() -> dict:
    """The example stack's mailgate: keys as plain data, for tests to mutate."""
    from mailgate.stackfile import read_stack_file

    return read_stack_file(DEV_STACK).values


@pytest.fixture(scope="session")
def login(request):
    """Factory: the name of a test login (tests.sshd), created on first use; every test
    login is removed when the session ends."""
    from tests.sshd import ensure_login, remove_logins

    request.addfinalizer(remove_logins)
    return ensure_login
