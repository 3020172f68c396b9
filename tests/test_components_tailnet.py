"""Tailnet and enrolment, seen through the real __main__.py: the per-VM key, the policy,
and the gateway's address."""

from __future__ import annotations

import copy
import json
import re

import pytest

from components.bootstrap import key_description
from components.tailnet import tailnet_ipv4
from mailgate.names import gateway_machine_name
from mailgate.renderers.tailscale_policy import policy, render_policy_snippet
from mailgate.settings import load_settings
from tests import pulumi_harness as h
from tests.pulumi_harness import run_program

KEY = "tailscale:index/tailnetKey:TailnetKey"
ACL = "tailscale:index/acl:Acl"
INSTANCE = "oci:Core/instance:Instance"
OBJECT = "oci:ObjectStorage/storageObject:StorageObject"
DEVICE = "tailscale:index/getDevice:getDevice"


def instance_id(run) -> str:
    return f"{run.one(INSTANCE).name}-id"  # what the mocks give a created resource


def test_gateway_key_is_single_use_preauthorised_tagged_and_short_lived(dev_raw):
    run = run_program(dev_raw)
    key = run.inputs(KEY)
    assert key["reusable"] is False
    assert key["ephemeral"] is False
    assert key["preauthorized"] is True
    assert key["tags"] == [dev_raw["tailscale"]["gatewayTag"]]
    assert key["expiry"] == float(dev_raw["tailscale"]["authKeyExpirySeconds"])
    assert key["recreateIfInvalid"] == "never"
    assert run.options(KEY)["additional_secret_outputs"] == ["key"]


def test_the_key_is_minted_after_the_vm_and_replaced_with_it(dev_raw, dev_settings):
    # The key belongs to one VM: created after it, replaced exactly when its OCID changes.
    run = run_program(dev_raw)
    assert run.events.index(run.one(KEY).name) > run.events.index(run.one(INSTANCE).name)
    assert run.options(KEY)["replacement_trigger"] == instance_id(run)
    # Its description names the VM as well: a key's description cannot change in place,
    # so even an engine that ignores replacement_trigger gives a new VM a new key.
    description = run.inputs(KEY)["description"]
    assert description == key_description(dev_settings, instance_id(run))
    assert description != key_description(dev_settings, "ocid1.instance.oc1.x.other")
    assert re.fullmatch(r"[A-Za-z0-9 ]{1,50}", key_description(
        load_settings(dev_raw, stack="Prod_2026.eu-" + "x" * 80), "ocid1.instance.oc1.x.vm"))
    # The VM fetches its enrolment by its own OCID.
    assert h.plain(run.one(OBJECT).inputs)["object"] == instance_id(run)


def test_policy_is_only_a_snippet_unless_managed(dev_raw, dev_settings):
    run = run_program(dev_raw)
    assert run.of_type(ACL) == []
    assert run.value("tailscale_policy_snippet") == render_policy_snippet(dev_settings)


def test_managed_acl_owns_the_policy_and_exists_before_the_tagged_key(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["tailscale"]["manageAcl"] = True
    raw["tailscale"]["homeTag"] = "tag:mailhome"
    run = run_program(raw)
    acl = run.inputs(ACL)
    assert acl["overwriteExistingContent"] is True
    managed = json.loads(acl["acl"])
    assert managed == policy(load_settings(raw, stack="dev"))
    # The whole file: each user's own devices keep reaching each other; the Mini PC is
    # tagged, so not among them; Tailscale runs the tests on every save.
    assert {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]} in managed["acls"]
    assert managed["tests"][0]["src"] == "tag:mailgw"
    assert any(urn.endswith(f"::{run.one(ACL).name}") for urn in run.options(KEY)["dependencies"])


def test_gateway_address_is_looked_up_by_a_name_only_this_vm_has(dev_raw):
    run = run_program(dev_raw)
    [device_query] = run.invoked(DEVICE)
    assert device_query["hostname"] == gateway_machine_name("mailgate-dev-gw", instance_id(run))
    assert device_query["waitFor"].endswith("s")
    # Asked only once the VM's enrolment exists.
    assert run.events.index(DEVICE) > run.events.index(run.one(OBJECT).name)
    # The device lists its IPv6 address first; the 100.x one is the answer.
    assert run.value("gateway_tailnet_ip") == h.GATEWAY_TAILNET_IPV4


def test_machine_names_differ_per_vm_and_per_stack():
    assert gateway_machine_name("mailgate-dev-gw", "ocid1.instance.a") != gateway_machine_name(
        "mailgate-dev-gw", "ocid1.instance.b")
    assert gateway_machine_name("mailgate-dev-gw", "x") != gateway_machine_name("mailgate-prod-gw", "x")


def test_a_chosen_prefix_still_gets_the_vm_suffix(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["tailscale"]["gatewayHostname"] = "mx-gateway"
    run = run_program(raw)
    assert run.invoked(DEVICE)[0]["hostname"] == gateway_machine_name("mx-gateway", instance_id(run))


def test_device_without_ipv4_is_an_error():
    with pytest.raises(ValueError, match="no tailnet IPv4"):
        tailnet_ipv4([h.GATEWAY_TAILNET_IPV6])
