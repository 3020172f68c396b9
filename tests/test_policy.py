"""The policy pack's rules, called directly, and run against what the program declares."""

from __future__ import annotations

import base64
import copy
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT
from tests.pulumi_harness import plain, run_program

sys.path.insert(0, str(ROOT / "policy"))
import mailgate_policies as rules  # noqa: E402


def _args(resource_type, props, protect=False, delete_before_replace=False):
    return SimpleNamespace(
        resource_type=resource_type, props=props,
        opts=SimpleNamespace(protect=protect, delete_before_replace=delete_before_replace),
    )


def _violations(check, args) -> list[str]:
    found: list[str] = []
    check(args, lambda message, urn=None: found.append(message))
    return found


def _security_list(*ingress):
    return _args(rules.SECURITY_LIST, {"ingressSecurityRules": list(ingress)})


def _tcp(source, low, high=None):
    return {"protocol": "6", "source": source,
            "tcpOptions": {"min": float(low), "max": float(high or low)}}


@pytest.mark.parametrize("rule, expected", [
    (_tcp("0.0.0.0/0", 22), "SSH (port 22) is open to 0.0.0.0/0"),
    (_tcp("::/0", 1, 65535), "SSH (port 22) is open to ::/0"),
    ({"protocol": "all", "source": "0.0.0.0/0"}, "every protocol and port is open to 0.0.0.0/0"),
    ({"protocol": "6", "source": "::/0"}, "every TCP port is open to ::/0"),
    ({"protocol": "17", "source": "0.0.0.0/0", "udpOptions": {}}, "every UDP port is open"),
])
def test_world_ssh_or_every_port_is_refused(rule, expected):
    [message] = _violations(rules.no_world_ssh_or_all_ports, _security_list(rule))
    assert expected in message


@pytest.mark.parametrize("rule", [
    _tcp("0.0.0.0/0", 25),
    _tcp("::/0", 993),
    _tcp("198.51.100.0/24", 22),
    _tcp("2001:db8:1::/48", 22),
    {"protocol": "17", "source": "0.0.0.0/0", "udpOptions": {"min": 41641.0, "max": 41641.0}},
    {"protocol": "1", "source": "0.0.0.0/0", "icmpOptions": {"type": 3.0, "code": 4.0}},
    {"protocol": "all", "source": "10.0.0.0/16"},
])
def test_mail_ports_and_admin_ssh_pass(rule):
    assert _violations(rules.no_world_ssh_or_all_ports, _security_list(rule)) == []


def test_nsg_rules_are_checked_too():
    world_ssh = _args(rules.NSG_RULE, {
        "direction": "INGRESS", "protocol": "6", "source": "0.0.0.0/0",
        "tcpOptions": {"destinationPortRange": {"min": 22.0, "max": 22.0}}})
    assert _violations(rules.no_world_ssh_or_all_ports, world_ssh)
    egress = _args(rules.NSG_RULE, {"direction": "EGRESS", "protocol": "all",
                                    "destination": "0.0.0.0/0"})
    assert _violations(rules.no_world_ssh_or_all_ports, egress) == []


def test_tcp_or_udp_without_port_range_is_refused_from_anywhere():
    rangeless = _security_list(
        {"protocol": "6", "source": "198.51.100.0/24"},
        {"protocol": "17", "source": "10.0.0.0/8", "udpOptions": {"sourcePortRange": {"min": 53.0, "max": 53.0}}},
        _tcp("0.0.0.0/0", 25),
    )
    messages = _violations(rules.tcp_udp_ingress_has_port_range, rangeless)
    assert len(messages) == 2
    assert "protocol 6 ingress from 198.51.100.0/24 names no port range" in messages[0]
    assert "protocol 17 ingress from 10.0.0.0/8" in messages[1]


def test_reserved_ip_must_be_protected():
    reserved = {"lifetime": "RESERVED", "privateIpId": "ocid1.privateip..x"}
    assert _violations(rules.reserved_public_ip_is_protected, _args(rules.PUBLIC_IP, reserved))
    assert not _violations(rules.reserved_public_ip_is_protected,
                           _args(rules.PUBLIC_IP, reserved, protect=True))
    assert not _violations(rules.reserved_public_ip_is_protected,
                           _args(rules.PUBLIC_IP, {"lifetime": "EPHEMERAL"}))


@pytest.mark.parametrize("vnic, violates", [
    ({"assignPublicIp": "false"}, False),
    ({"assignPublicIp": False}, False),
    ({"assignPublicIp": "true"}, True),
    ({}, True),
])
def test_instance_must_not_get_an_ephemeral_public_ip(vnic, violates):
    args = _args(rules.INSTANCE, {"createVnicDetails": vnic}, delete_before_replace=True)
    assert bool(_violations(rules.instance_has_no_ephemeral_public_ip, args)) is violates


def test_instance_should_be_deleted_before_replace():
    assert _violations(rules.instance_deleted_before_replace, _args(rules.INSTANCE, {}))
    assert not _violations(rules.instance_deleted_before_replace,
                           _args(rules.INSTANCE, {}, delete_before_replace=True))


@pytest.mark.parametrize("props, violates", [
    ({"create": "apply", "delete": "restore", "triggers": ["sha"]}, True),
    ({"create": "apply", "delete": "restore", "stdin": "files"}, False),
    ({"create": "apply", "triggers": ["sha"]}, False),  # nothing to undo
])
def test_a_restoring_command_must_not_have_triggers(props, violates):
    args = _args(rules.REMOTE_COMMAND, props)
    assert bool(_violations(rules.restoring_command_has_no_triggers, args)) is violates


@pytest.mark.parametrize("connection, violates", [
    ({"host": "100.64.0.9", "hostKey": "ssh-ed25519 AAAA"}, False),
    ({"host": "100.64.0.9"}, True),
    ({"host": "100.64.0.2", "hostKey": "ssh-ed25519 AAAA", "proxy": {"host": "100.64.0.9"}}, True),
    ({"host": "100.64.0.2", "hostKey": "ssh-ed25519 AAAA",
      "proxy": {"host": "100.64.0.9", "hostKey": "ssh-ed25519 BBBB"}}, False),
])
def test_a_remote_command_must_pin_every_host_key(connection, violates):
    args = _args(rules.REMOTE_COMMAND, {"create": "apply", "connection": connection})
    assert bool(_violations(rules.remote_command_pins_host_keys, args)) is violates


@pytest.mark.parametrize("user_data, violates", [
    (base64.b64encode(b"#cloud-config\nwrite_files:\n- content: tskey-auth-k123\n").decode(), True),
    ("#cloud-config\nruncmd: [tailscale up --auth-key=tskey-auth-k123]\n", True),
    (base64.b64encode(b"#cloud-config\nwrite_files:\n- content: https://par/o/\n").decode(), False),
    (None, False),
])
def test_user_data_must_not_carry_a_tailnet_key(user_data, violates):
    args = _args(rules.INSTANCE, {"metadata": {"user_data": user_data}}, delete_before_replace=True)
    assert bool(_violations(rules.user_data_holds_no_tailnet_key, args)) is violates


def test_pack_declares_every_rule_with_its_enforcement():
    levels = {p.name: p.enforcement_level.value for p in rules.POLICIES}
    assert levels == {
        "no-world-ssh-or-all-ports": "mandatory",
        "tcp-udp-ingress-has-port-range": "mandatory",
        "restoring-command-has-no-triggers": "mandatory",
        "remote-command-pins-host-keys": "mandatory",
        "user-data-holds-no-tailnet-key": "mandatory",
        "reserved-public-ip-protected": "advisory",
        "instance-no-ephemeral-public-ip": "advisory",
        "instance-delete-before-replace": "advisory",
    }


@pytest.mark.parametrize("ipv6, web", [(False, False), (True, True)])
def test_what_the_program_declares_passes_every_policy(dev_raw, ipv6, web):
    raw = copy.deepcopy(dev_raw)
    raw["gateway"]["ipv6"] = ipv6
    raw["web"] = {"enabled": web}
    run = run_program(raw)
    checked = set()
    for resource in run.resources:
        options = run.monitor.options[resource.name]
        args = _args(resource.type, plain(resource.inputs), protect=options["protect"],
                     delete_before_replace=options["delete_before_replace"])
        for policy in rules.POLICIES:
            assert _violations(policy.validate, args) == [], (policy.name, resource.name)
        checked.add(resource.type)
    assert {rules.SECURITY_LIST, rules.PUBLIC_IP, rules.INSTANCE} <= checked


def test_pack_starts_the_analyzer_the_cli_talks_to():
    import subprocess

    pack = subprocess.Popen([sys.executable, str(ROOT / "policy" / "__main__.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The analyzer announces its port on the first line, as the CLI expects.
        first_line = pack.stdout.readline().strip()
    finally:
        pack.terminate()
        _, stderr = pack.communicate(timeout=10)
    assert first_line.isdigit(), stderr


def test_pull_requests_preview_with_this_policy_pack():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "preview.yml").read_text())
    assert list(workflow[True]) == ["pull_request"]  # YAML reads the key `on` as True
    steps = workflow["jobs"]["preview"]["steps"]
    commands = " ".join(step.get("run", "") for step in steps)
    assert "scripts/setup.sh" in commands and "-m pytest" in commands
    [pulumi] = [step for step in steps if step.get("uses", "").startswith("pulumi/actions@")]
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["policyPacks"] == "policy"
    assert (ROOT / pulumi["with"]["policyPacks"] / "PulumiPolicy.yaml").is_file()
    assert steps.index(pulumi) == len(steps) - 1, "preview runs after the tests"
