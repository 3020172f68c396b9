"""Tailnet and enrolment, seen through the real __main__.py: the per-VM key, the policy,
and the gateway's address."""

from __future__ import annotations

import copy
import json
import re
from types import SimpleNamespace

import pulumi
import pytest

from components.bootstrap import key_description
from components.tailnet import device_at, require_tag, tailnet_ipv4
from mailgate.names import gateway_machine_name
from mailgate.renderers.tailscale_policy import policy, render_policy_snippet
from mailgate.settings import load_settings
from tests import pulumi_harness as h
from tests.pulumi_harness import RecordingMocks, run_program

KEY = "tailscale:index/tailnetKey:TailnetKey"
ACL = "tailscale:index/acl:Acl"
INSTANCE = "oci:Core/instance:Instance"
OBJECT = "oci:ObjectStorage/storageObject:StorageObject"
DEVICE = "tailscale:index/getDevice:getDevice"
DEVICES = "tailscale:index/getDevices:getDevices"
DEVICE_KEY = "tailscale:index/deviceKey:DeviceKey"


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


def _device(name, *addresses, tags=()):
    return SimpleNamespace(name=name, node_id=f"n{name}CNTRL", addresses=list(addresses), tags=list(tags))


def test_the_home_device_is_the_one_at_its_tailnet_address():
    minipc = _device("minipc", "100.64.0.2", "fd7a:115c:a1e0::2")
    # 100.64.0.20 starts with 100.64.0.2: an address, not a prefix, must match.
    laptop = _device("laptop", "100.64.0.20", "fd7a:115c:a1e0::20")
    assert device_at([laptop, minipc], "100.64.0.2") is minipc
    assert device_at([laptop, minipc], "100.64.0.20") is laptop
    with pytest.raises(ValueError, match=re.escape(
            "no device in the tailnet has 100.64.0.2 (mailgate:home.tailnetIp); is the Mini PC "
            "logged in? `tailscale ip -4` on it prints its address")):
        device_at([laptop], "100.64.0.2")
    with pytest.raises(ValueError, match="no device"):
        device_at([], "100.64.0.2")
    twin = _device("minipc-old", "100.64.0.2")
    with pytest.raises(ValueError, match=r"2 devices in the tailnet have 100.64.0.2 .*minipc, minipc-old"):
        device_at([minipc, twin], "100.64.0.2")


def test_a_home_tag_must_be_on_the_device():
    require_tag(_device("minipc", "100.64.0.2", tags=["tag:mailhome"]), "tag:mailhome", "100.64.0.2")
    with pytest.raises(ValueError, match=re.escape("sudo tailscale up --advertise-tags=tag:mailhome")):
        require_tag(_device("minipc", "100.64.0.2", tags=["tag:other"]), "tag:mailhome", "100.64.0.2")


def test_the_mini_pcs_key_expiry_is_turned_off_on_the_device_at_its_address(dev_raw):
    assert dev_raw["home"]["tailnetIp"] == h.HOME_TAILNET_IPV4
    run = run_program(dev_raw)
    assert run.invoked(DEVICES) == [{}]  # the whole list; the address picks, not a name
    key = run.inputs(DEVICE_KEY)
    assert key == {"deviceId": h.HOME_NODE_ID, "keyExpiryDisabled": True}
    assert run.options(DEVICE_KEY)["parent"].endswith("::tailnet")


def _tailnet(devices) -> RecordingMocks:
    def invokes(args):
        if args.token == DEVICES:
            return {"devices": devices}
        return h.provider_invokes(args)
    return RecordingMocks(invokes=invokes)


def _tagged(raw, tag="tag:mailhome"):
    raw = copy.deepcopy(raw)
    raw["tailscale"]["homeTag"] = tag
    return raw


def test_a_tagged_mini_pc_gets_no_device_key_but_is_checked(dev_raw):
    run = run_program(_tagged(dev_raw))  # the mocks' Mini PC carries tag:mailhome
    assert run.of_type(DEVICE_KEY) == []
    assert len(run.invoked(DEVICES)) == 1


def test_a_home_tag_the_device_does_not_carry_stops_the_run(dev_raw):
    recorder = _tailnet([h.tailnet_device("minipc", [h.HOME_TAILNET_IPV4], h.HOME_NODE_ID)])
    with pytest.raises(pulumi.RunError) as error:
        run_program(_tagged(dev_raw), recorder=recorder)
    message = str(error.value)
    assert message.startswith(f"the device at {h.HOME_TAILNET_IPV4} (minipc.tail0123.ts.net) "
                              "does not carry tag:mailhome (mailgate:tailscale.homeTag)")
    assert "`sudo tailscale up --advertise-tags=tag:mailhome`" in message
    assert "Traceback" not in message


def test_no_device_at_the_home_address_stops_the_run(dev_raw):
    # The gateway's device only: the Mini PC is logged out or home.tailnetIp is mistyped.
    recorder = _tailnet([h.TAILNET_DEVICES[-1]])
    with pytest.raises(pulumi.RunError, match=re.escape(
            f"no device in the tailnet has {h.HOME_TAILNET_IPV4} (mailgate:home.tailnetIp)")):
        run_program(dev_raw, recorder=recorder)
    assert not [r for r in recorder.resources if r.type == DEVICE_KEY]
