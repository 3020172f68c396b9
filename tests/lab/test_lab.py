"""The lab end to end: up, check, down; and each broken promise makes check fail."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailgate.lab import NAMESPACES, STATE, lab
from mailgate.lab.checks import forged_proxy_refused, real_client_address
from mailgate.lab.system import alive, recorded_pids
from tests.conftest import ROOT, need, need_program, need_root

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", autouse=True)
def lab_machine():
    need(sys.platform == "linux", "the lab needs Linux network namespaces")
    need_root()
    for program in ("nginx", "postfix", "dovecot", "wireguard-go", "wg", "openssl", "iptables"):
        need_program(program)
    need(__import__("os").path.exists("/dev/net/tun"), "wireguard-go needs /dev/net/tun")
    yield
    lab.down()


def namespaces_left() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [name for name in NAMESPACES if name in listed]


def failed(results) -> dict[str, str]:
    return {r.name: r.detail for r in results if not r.passed}


def test_up_check_down_through_the_command_line():
    def mailgate(*args):
        return subprocess.run([sys.executable, "-m", "mailgate", "lab", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    up = mailgate("up")
    assert up.returncode == 0, up.stderr
    assert mailgate("up").returncode == 0  # idempotent: a second up rebuilds cleanly
    pids = recorded_pids()
    assert len(pids) == 9 and all(alive(pid) for pid in pids.values())
    check = mailgate("check")
    print(check.stdout)
    assert check.returncode == 0, check.stdout
    assert check.stdout.splitlines()[-1] == "20 passed, 0 failed"
    down = mailgate("down")
    assert down.returncode == 0
    assert namespaces_left() == []
    assert not any(alive(pid) for pid in pids.values())
    assert not STATE.exists()
    assert "the lab is not up" in mailgate("check").stderr


def test_without_the_home_firewall_forged_proxy_headers_get_through(dev_settings):
    lab.up(dev_settings, home_firewall=False)
    settings = lab.lab_settings(dev_settings)
    try:
        broken = failed(real_client_address(settings) + forged_proxy_refused(settings))
    finally:
        lab.down()
    assert {name for name in broken if name.startswith("forged PROXY header refused")} == {
        f"forged PROXY header refused on twin {port}" for port in (10025, 10465, 10587, 10143, 10993, 14190)
    }
    assert all(name.startswith("forged PROXY") for name in broken), broken


def test_without_proxy_protocol_the_real_address_check_fails(dev_settings):
    # Port 25 forwarded without the PROXY header: postscreen on the twin cannot learn
    # the client, so the check must not find 198.51.100.7 there.
    def no_proxy_on_smtp(text: str) -> str:
        head, _, rest = text.partition("proxy_pass 100.64.0.2:10025;")
        return head + "proxy_pass 100.64.0.2:10025;" + rest.replace("proxy_protocol on;", "proxy_protocol off;", 1)

    lab.up(dev_settings, nginx_edit=no_proxy_on_smtp)
    try:
        broken = failed(real_client_address(lab.lab_settings(dev_settings)))
    finally:
        lab.down()
    assert "real client address on smtp (25)" in broken
    assert "real client address on imaps (993)" not in broken
    assert namespaces_left() == []


def test_bench_measures_every_path_and_holds_the_idle_sessions(dev_settings):
    from mailgate.lab.bench import bench

    lab.up(dev_settings)
    try:
        lines = bench(rounds=1, messages=20, samples=20, idle=200)
    finally:
        lab.down()
    table = "\n".join(lines)
    assert "| via gateway (nginx + PROXY + WireGuard) |" in table and "| tunnel only |" in table
    assert "200 opened, 200 still open after 5 s idle" in table
