"""The real __main__.py under Pulumi's mocks, with the example stack's config."""

from __future__ import annotations

import copy

import pulumi
import pytest

from mailgate import catalogue
from tests.pulumi_harness import run_program


def test_exports_port_map_and_dns_records(dev_raw):
    run = run_program(dev_raw)
    port_map = run.exports["port_map"]["value"]
    assert [entry["service"] for entry in port_map] == dev_raw["services"]
    assert {(e["public_port"], e["home_port"]) for e in port_map} == {
        (catalogue.BY_NAME[name].public_port, catalogue.BY_NAME[name].home_port)
        for name in dev_raw["services"]
    }
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
