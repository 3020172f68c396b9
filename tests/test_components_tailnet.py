"""Tailnet, seen through the real __main__.py: the bootstrap key, the policy, the address."""

from __future__ import annotations

import copy
import json

import pytest

from components.tailnet import tailnet_ipv4
from mailgate.renderers.tailscale_policy import policy, render_policy_snippet
from mailgate.settings import load_settings
from tests import pulumi_harness as h
from tests.conftest import ROOT
from tests.pulumi_harness import run_program

KEY = "tailscale:index/tailnetKey:TailnetKey"
ACL = "tailscale:index/acl:Acl"


def test_gateway_key_is_single_use_preauthorised_tagged_and_short_lived(dev_raw):
    run = run_program(dev_raw)
    key = run.inputs(KEY)
    assert key["reusable"] is False
    assert key["ephemeral"] is False
    assert key["preauthorized"] is True
    assert key["tags"] == [dev_raw["tailscale"]["gatewayTag"]]
    assert key["expiry"] == float(dev_raw["tailscale"]["authKeyExpirySeconds"])
    # A recreated key would change the user data and replace the VM.
    assert key["recreateIfInvalid"] == "never"
    assert run.options(KEY)["additional_secret_outputs"] == ["key"]


def test_policy_is_only_a_snippet_unless_managed(dev_raw, dev_settings):
    run = run_program(dev_raw)
    assert run.of_type(ACL) == []
    assert run.value("tailscale_policy_snippet") == render_policy_snippet(dev_settings)


def test_managed_acl_owns_the_policy_and_exists_before_the_tagged_key(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["tailscale"]["manageAcl"] = True
    run = run_program(raw)
    acl = run.inputs(ACL)
    assert acl["overwriteExistingContent"] is True
    assert json.loads(acl["acl"]) == policy(load_settings(raw, stack="dev"))
    assert any(urn.endswith(f"::{run.one(ACL).name}") for urn in run.options(KEY)["dependencies"])


def test_gateway_tailnet_ip_is_looked_up_after_the_instance_exists(dev_raw):
    run = run_program(dev_raw)
    [device_query] = run.invoked("tailscale:index/getDevice:getDevice")
    assert device_query["hostname"] == dev_raw["tailscale"].get("gatewayHostname", "mailgate-gateway")
    assert device_query["waitFor"].endswith("s")
    assert (run.events.index("tailscale:index/getDevice:getDevice")
            > run.events.index(run.one("oci:Core/instance:Instance").name))
    # The device lists its IPv6 address first; the 100.x one is the answer.
    assert run.value("gateway_tailnet_ip") == h.GATEWAY_TAILNET_IPV4


def test_device_without_ipv4_is_an_error():
    with pytest.raises(ValueError, match="no tailnet IPv4"):
        tailnet_ipv4([h.GATEWAY_TAILNET_IPV6])


def _key_trigger(raw) -> str:
    return run_program(raw).options(KEY)["replacement_trigger"]


def test_a_new_gateway_vm_gets_a_new_key_and_nothing_else_replaces_it(dev_raw):
    # The key baked into the user data is spent after the first boot: whatever rebuilds
    # the VM must bring a fresh one, and nothing else may (a new key rebuilds the VM).
    before = _key_trigger(dev_raw)
    assert before
    rebuilds = {
        "sshPublicKeys": lambda raw: raw["gateway"]["sshPublicKeys"].append(
            raw["gateway"]["sshPublicKeys"][0].replace("admin@", "laptop@")),
        "availabilityDomain": lambda raw: raw["gateway"].update(
            availabilityDomain="Uocm:EU-FRANKFURT-1-AD-2"),
        "gatewayHostname": lambda raw: raw["tailscale"].update(gatewayHostname="mx-gateway"),
        "subnetCidr": lambda raw: raw["gateway"].update(subnetCidr="10.0.1.0/24"),
    }
    for what, change in rebuilds.items():
        raw = copy.deepcopy(dev_raw)
        change(raw)
        assert _key_trigger(raw) != before, what
    keeps = {
        "services": lambda raw: raw.update(services=["smtp"], web={"enabled": True}),
        "relay": lambda raw: raw["relay"].update(port=465),
        "ocpus": lambda raw: raw["gateway"].update(ocpus=2, memoryInGbs=12),
        "pinned image": lambda raw: raw["gateway"].update(imageId=h.NEWEST_LTS_IMAGE_ID),
    }
    for what, change in keeps.items():
        raw = copy.deepcopy(dev_raw)
        change(raw)
        assert _key_trigger(raw) == before, what


def test_readme_replaces_the_key_by_its_real_urn(dev_raw):
    dev_urn = run_program(dev_raw).options(KEY)["urn"]
    assert dev_urn.startswith("urn:pulumi:dev::mailgate::")
    prod_urn = dev_urn.replace("urn:pulumi:dev::", "urn:pulumi:prod::")
    assert f"pulumi up --replace '{prod_urn}'" in (ROOT / "README.md").read_text()
