"""Per-stack names: two stacks sharing a tailnet, a compartment or a home host never
share a name, and no name can escape where it belongs."""

from __future__ import annotations

import re

import pytest

from mailgate.names import CHAIN_MAX, GATEWAY_NAME_MAX, StackNames, gateway_machine_name
from mailgate.settings import DNS_LABEL

SHARED = ("gateway_machine_prefix", "bootstrap_bucket", "home_state_dir", "home_firewall_path",
          "home_firewall_v6_path", "docker_drop_in", "home_nonlocal_bind_sysctl", "home_twin_chain")


@pytest.mark.parametrize("one, other", [("dev", "prod"), ("dev_1", "dev-1"), ("Dev", "dev"),
                                        ("dev.eu", "dev-eu"), ("a" * 90 + "1", "a" * 90 + "2")])
def test_two_stacks_share_no_name(one, other):
    first, second = StackNames(one), StackNames(other)
    for name in SHARED:
        assert getattr(first, name) != getattr(second, name), name
    assert first.display_name("gateway") != second.display_name("gateway")


@pytest.mark.parametrize("stack", ["dev", "Prod_2026.eu", "x" * 100])
def test_names_fit_where_they_go(stack):
    names = StackNames(stack)
    assert len(names.home_twin_chain) <= CHAIN_MAX
    assert DNS_LABEL.match(names.gateway_machine_prefix) and len(names.gateway_machine_prefix) <= GATEWAY_NAME_MAX
    machine = gateway_machine_name(names.gateway_machine_prefix, "ocid1.instance.oc1.x.abc")
    assert DNS_LABEL.match(machine)
    assert re.fullmatch(r"[a-z0-9-]+", names.bootstrap_bucket)
    assert names.home_state_dir.startswith("/var/lib/mailgate/") and "/.." not in names.home_state_dir


@pytest.mark.parametrize("stack", [".", "..", "", "a/b", "dev prod"])
def test_a_name_that_could_escape_its_directory_is_refused(stack):
    with pytest.raises(ValueError, match="not a Pulumi stack name"):
        StackNames(stack)
