"""The lab's stand-in for Tailscale's packet filter, read from the rendered policy.

These need no root: they check what the lab would load into iptables. tests/lab/ shows
the rules working (and the plain-port check failing without them).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailgate.lab import GATEWAY_TAILNET
from mailgate.lab.system import LabError
from mailgate.lab.tailnet import CHAIN, granted_ports, rules
from tests.conftest import ROOT
from tests.settings_variants import variant


def test_the_gateway_is_granted_the_twin_ports_and_nothing_else(dev_settings):
    twins = {str(s.home_port) for s in dev_settings.enabled_services}
    plain = {str(s.public_port) for s in dev_settings.enabled_services if s.proxy_protocol}
    assert set(granted_ports(dev_settings)) == twins
    assert not twins & plain


def test_fewer_services_grant_fewer_ports(dev_raw):
    assert granted_ports(variant(dev_raw, services=["smtp", "imaps"])) == ["10025", "10993", "80"]
    assert granted_ports(variant(dev_raw, services=["smtp", "imaps"], acme={"method": "none"})) == ["10025", "10993"]


def test_rules_accept_granted_ports_then_drop_the_rest_from_the_gateway(dev_settings):
    lines = rules(dev_settings).splitlines()
    accept = next(line for line in lines if "--dports" in line)
    assert accept.split("--dports ")[1].split()[0] == ",".join(granted_ports(dev_settings))
    drop = f"-A {CHAIN} -s {GATEWAY_TAILNET}/32 -j DROP"
    assert lines.index(accept) < lines.index(drop)  # order matters: first match wins
    assert rules(dev_settings).endswith("\nCOMMIT\n")


def test_a_wildcard_grant_is_refused(dev_settings, monkeypatch):
    from mailgate.lab import tailnet

    def wildcard(settings):
        return {"acls": [{"action": "accept", "src": [settings.tailscale.gateway_tag],
                          "dst": [f"{settings.tailscale.home_tag or tailnet.HOME_HOST_ALIAS}:*"]}]}

    monkeypatch.setattr(tailnet, "policy", wildcard)
    with pytest.raises(LabError, match="single ports only"):
        granted_ports(dev_settings)


@pytest.mark.parametrize("value", ["4", "121", "0"])
def test_lab_imap_timeout_out_of_range_is_refused_before_anything_runs(value):
    result = subprocess.run([sys.executable, "-m", "mailgate", "lab", "up", "--imap-timeout", value],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"--imap-timeout {value}: expected 5 to 120 seconds" in result.stderr
    assert "Traceback" not in result.stderr
