"""The real __main__.py under Pulumi's mocks, with the example stack's config."""

from __future__ import annotations

import copy
import re

import pulumi
import pytest

from mailgate import catalogue
from tests.pulumi_harness import run_program


def test_exports_port_map_and_dns_records(dev_raw):
    run = run_program(dev_raw)
    port_map = run.exports["port_map"]["value"]
    # The mail services the stack lists, then port 80 for ACME (mailgate:acme.method http-01).
    assert [entry["service"] for entry in port_map] == dev_raw["services"] + ["http"]
    assert {(e["public_port"], e["home_port"]) for e in port_map} == {
        (catalogue.BY_NAME[name].public_port, catalogue.BY_NAME[name].home_port)
        for name in dev_raw["services"] + ["http"]
    }
    assert port_map[-1]["only_path"] == "/.well-known/acme-challenge/"
    records = run.exports["dns_records"]["value"]
    assert {"name": "example.com", "type": "MX", "value": "10 mail.example.com.",
            "note": "mail for the domain goes to the gateway"} in records


def test_exports_hold_no_secret(dev_raw):
    run = run_program(dev_raw, secrets={"relayPassword": "s3cr3t-relay-key"})
    for name, export in run.exports.items():
        assert "s3cr3t-relay-key" not in repr(export["value"]), name


def test_invalid_config_stops_with_every_problem_and_no_resource(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["gateway"]["adminCidrs"][1] = "::/0"
    raw["relay"]["port"] = 2526
    with pytest.raises(pulumi.RunError) as error:
        run_program(raw)
    message = str(error.value)
    assert "mailgate:gateway.adminCidrs[1]: ::/0 would open SSH to the whole internet" in message
    assert "mailgate:relay.port: 2526 is not a relay submission port" in message
    assert "Traceback" not in message


def test_missing_or_plain_text_relay_password_is_refused(dev_raw):
    with pytest.raises(pulumi.RunError, match=r"mailgate:relayPassword: missing"):
        run_program(dev_raw, secrets={})
    from tests import pulumi_harness

    config, _ = pulumi_harness.stack_config(dev_raw, {"relayPassword": "plain"})
    with pytest.raises(pulumi.RunError, match=r"mailgate:relayPassword: stored in plain text"):
        run_program(dev_raw, secrets={"relayPassword": "plain"},
                    recorder=None, program=lambda: _load_without_secret_marking(config))


def _load_without_secret_marking(config):
    from pulumi.runtime import config as runtime_config

    from components.stack_config import load_stack_settings

    runtime_config.set_all_config(config, [])
    load_stack_settings()


def test_exports_are_complete_and_filled_from_the_deployed_gateway(dev_raw):
    from tests import pulumi_harness as h

    run = run_program(dev_raw)
    assert set(run.exports) == {"public_ipv4", "gateway_tailnet_ip", "gateway_machine_name",
                                "gateway_image_id", "dns_records", "tailscale_policy_snippet",
                                "port_map"}
    assert run.value("public_ipv4") == h.PUBLIC_IPV4
    assert run.value("gateway_tailnet_ip") == h.GATEWAY_TAILNET_IPV4
    # The stack's prefix and a digest of this VM's OCID, nothing any other device has.
    assert re.fullmatch(r"mailgate-dev-gw-[0-9a-f]{6}", run.value("gateway_machine_name"))
    records = run.value("dns_records")
    assert {"name": "mail.example.com", "type": "A", "value": h.PUBLIC_IPV4,
            "note": "the gateway's reserved public IP"} in records
    assert not any(r["type"] == "AAAA" for r in records)
    assert "<gateway public" not in repr(records)

    ipv6 = copy.deepcopy(dev_raw)
    ipv6["gateway"]["ipv6"] = True
    run = run_program(ipv6)
    assert run.value("public_ipv6") == h.PUBLIC_IPV6
    assert {"name": "mail.example.com", "type": "AAAA", "value": h.PUBLIC_IPV6,
            "note": "the gateway's IPv6"} in run.value("dns_records")


def test_no_export_is_secret_or_carries_the_auth_key_or_bootstrap_url(dev_raw):
    from tests import pulumi_harness as h

    run = run_program(dev_raw)
    user_data = h.plain(run.one("oci:Core/instance:Instance").inputs)["metadata"]["user_data"]
    for name, export in run.exports.items():
        # A secret-marked export would show as [secret] and be useless to copy into DNS.
        assert export["secret"] is False, name
        assert h.AUTH_KEY not in repr(export["value"]), name
        assert h.PAR_TOKEN not in repr(export["value"]), name
        assert user_data not in repr(export["value"]), name


def test_runs_are_independent_even_after_a_refused_config(dev_raw):
    # Each test's run must see only its own exports, even when an earlier run failed.
    ipv6 = copy.deepcopy(dev_raw)
    ipv6["gateway"]["ipv6"] = True
    assert "public_ipv6" in run_program(ipv6).exports
    with pytest.raises(pulumi.RunError):
        run_program(dev_raw, secrets={})
    assert "public_ipv6" not in run_program(dev_raw).exports
