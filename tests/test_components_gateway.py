"""GatewayHost, seen through the real __main__.py: the VM, its image, its reserved IP."""

from __future__ import annotations

import base64
import copy
from types import SimpleNamespace

import pulumi
import pytest

from components.gateway import launch_domain, newest_ubuntu_lts
from mailgate.renderers.cloud_init import render_cloud_init
from tests import pulumi_harness as h
from tests.pulumi_harness import RecordingMocks, run_program

INSTANCE = "oci:Core/instance:Instance"
PUBLIC_IP = "oci:Core/publicIp:PublicIp"
SECOND_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBo6RvylMR9vzEQRsSSp2WbXaucOZCCGA/2WD7i+wYeR "
              "laptop@example.com")


def test_instance_on_the_newest_full_ubuntu_lts_in_the_first_domain(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["gateway"]["sshPublicKeys"] = [*raw["gateway"]["sshPublicKeys"], SECOND_KEY]
    run = run_program(raw)
    instance = run.inputs(INSTANCE)
    assert instance["shape"] == "VM.Standard.A1.Flex"
    assert instance["shapeConfig"] == {"ocpus": 1.0, "memoryInGbs": 6.0}
    # Newer 25.04 (interim), 24.04 Minimal and a later-built 22.04 must all lose.
    assert instance["sourceDetails"] == {"sourceType": "image", "sourceId": h.NEWEST_LTS_IMAGE_ID,
                                         "bootVolumeSizeInGbs": "50"}
    [images_query] = run.invoked("oci:Core/getImages:getImages")
    assert images_query["operatingSystem"] == "Canonical Ubuntu"
    assert images_query["shape"] == "VM.Standard.A1.Flex"
    assert instance["availabilityDomain"] == h.AVAILABILITY_DOMAINS[0]
    assert instance["compartmentId"] == raw["gateway"]["compartmentId"]
    assert instance["createVnicDetails"]["assignPublicIp"] == "false"
    assert instance["createVnicDetails"]["subnetId"] == "gateway-net-subnet-id"
    assert "assignIpv6ip" not in instance["createVnicDetails"]
    assert instance["metadata"]["ssh_authorized_keys"] == "\n".join(raw["gateway"]["sshPublicKeys"])
    assert run.value("gateway_image_id") == h.NEWEST_LTS_IMAGE_ID


def test_pinned_image_and_domain_are_used_without_lookups(dev_raw):
    raw = copy.deepcopy(dev_raw)
    pinned = "ocid1.image.oc1.eu-frankfurt-1.aaaaaaaapinnedimage"
    raw["gateway"]["imageId"] = pinned
    raw["gateway"]["availabilityDomain"] = "Uocm:EU-FRANKFURT-1-AD-3"
    run = run_program(raw)
    instance = run.inputs(INSTANCE)
    assert instance["sourceDetails"]["sourceId"] == pinned
    assert instance["availabilityDomain"] == "Uocm:EU-FRANKFURT-1-AD-3"
    assert run.invoked("oci:Core/getImages:getImages") == []
    assert run.invoked("oci:Identity/getAvailabilityDomains:getAvailabilityDomains") == []


MICRO = "VM.Standard.E2.1.Micro"
SHAPES_QUERY = "oci:Core/getShapes:getShapes"
DOMAINS_QUERY = "oci:Identity/getAvailabilityDomains:getAvailabilityDomains"
AD_1, AD_2, AD_3 = h.AVAILABILITY_DOMAINS


def _micro(raw, availability_domain=None):
    raw = copy.deepcopy(raw)
    raw["gateway"]["shape"] = MICRO
    del raw["gateway"]["ocpus"], raw["gateway"]["memoryInGbs"]
    if availability_domain:
        raw["gateway"]["availabilityDomain"] = availability_domain
    return raw


def _offering(by_domain: dict[str, list[str]]) -> RecordingMocks:
    """Mocks whose domains offer only the shapes in `by_domain` (the rest: none)."""
    def invokes(args):
        if args.token == SHAPES_QUERY:
            return h.shapes_answer(by_domain.get(args.args["availabilityDomain"], []))
        return h.provider_invokes(args)
    return RecordingMocks(invokes=invokes)


def test_e2_micro_launches_in_the_one_domain_that_offers_it(dev_raw):
    everything_but_micro = [name for name in h.SHAPES if name != MICRO]
    run = run_program(_micro(dev_raw), recorder=_offering({
        AD_1: everything_but_micro, AD_2: everything_but_micro, AD_3: list(h.SHAPES)}))
    assert run.inputs(INSTANCE)["availabilityDomain"] == AD_3
    asked = run.invoked(SHAPES_QUERY)
    assert sorted(query["availabilityDomain"] for query in asked) == list(h.AVAILABILITY_DOMAINS)
    assert {query["compartmentId"] for query in asked} == {dev_raw["gateway"]["compartmentId"]}


def test_a_shape_no_domain_offers_stops_the_run_before_any_vm(dev_raw):
    recorder = _offering({AD_1: ["VM.Standard.A1.Flex"], AD_2: ["VM.Standard.A1.Flex"]})
    with pytest.raises(pulumi.RunError) as error:
        run_program(_micro(dev_raw), recorder=recorder)
    message = str(error.value)
    assert message.startswith(f"mailgate:gateway.shape: no availability domain of this region "
                              f"offers {MICRO}")
    assert f"(asked: {AD_1}, {AD_2}, {AD_3})" in message
    assert "mailgate:gateway.availabilityDomain" in message and "oci compute shape list" in message
    assert "Traceback" not in message
    assert not [r for r in recorder.resources if r.type == INSTANCE]


def test_a_pinned_domain_is_used_after_checking_it_offers_the_shape(dev_raw):
    run = run_program(_micro(dev_raw, AD_2), recorder=_offering({AD_2: [MICRO]}))
    assert run.inputs(INSTANCE)["availabilityDomain"] == AD_2
    assert [query["availabilityDomain"] for query in run.invoked(SHAPES_QUERY)] == [AD_2]
    assert run.invoked(DOMAINS_QUERY) == []


def test_a_pinned_domain_without_the_shape_is_refused(dev_raw):
    with pytest.raises(pulumi.RunError, match=(
            f"mailgate:gateway.availabilityDomain: {AD_1} does not offer the shape {MICRO} "
            r"\(mailgate:gateway.shape\)")):
        run_program(_micro(dev_raw, AD_1), recorder=_offering({AD_3: [MICRO]}))


def test_domain_choice_takes_the_first_domain_offering_the_shape():
    offered = {AD_1: ["VM.Standard.A1.Flex"], AD_2: [MICRO, "VM.Standard.A1.Flex"], AD_3: [MICRO]}
    assert launch_domain(MICRO, offered) == AD_2
    assert launch_domain("VM.Standard.A1.Flex", offered) == AD_1
    assert launch_domain(MICRO, offered, pinned=AD_3) == AD_3
    with pytest.raises(ValueError, match=r"asked: none"):
        launch_domain(MICRO, {})


def test_e2_micro_gets_no_shape_config(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["gateway"]["shape"] = "VM.Standard.E2.1.Micro"
    del raw["gateway"]["ocpus"], raw["gateway"]["memoryInGbs"]
    instance = run_program(raw).inputs(INSTANCE)
    assert instance["shape"] == "VM.Standard.E2.1.Micro"
    assert "shapeConfig" not in instance


def test_instance_declares_it_runs_so_a_stopped_vm_is_started_not_rebuilt(dev_raw):
    # Oracle stops idle Always Free VMs; `state` is updatable (an InstanceAction START),
    # so after a refresh the next up starts the same VM (tests/lifecycle shows the steps).
    assert run_program(dev_raw).inputs(INSTANCE)["state"] == "RUNNING"


def test_instance_is_deleted_before_its_replacement(dev_raw):
    assert run_program(dev_raw).options(INSTANCE)["delete_before_replace"] is True


def test_reserved_ip_is_protected_and_bound_to_the_instances_primary_private_ip(dev_raw):
    run = run_program(dev_raw)
    public_ip = run.inputs(PUBLIC_IP)
    assert public_ip["lifetime"] == "RESERVED"
    assert public_ip["privateIpId"] == h.PRIMARY_PRIVATE_IP_ID
    assert run.options(PUBLIC_IP)["protect"] is True
    [attachments] = run.invoked("oci:Core/getVnicAttachments:getVnicAttachments")
    assert attachments["instanceId"] == f"{run.one(INSTANCE).name}-id"
    [private_ips] = run.invoked("oci:Core/getPrivateIps:getPrivateIps")
    assert private_ips["vnicId"] == h.PRIMARY_VNIC_ID
    assert run.value("public_ipv4") == h.PUBLIC_IPV4


def test_user_data_is_secret_cloud_init_naming_the_bootstrap_bucket_and_no_key(dev_raw, dev_settings):
    run = run_program(dev_raw)
    assert h.secret_paths(run.sent_object(INSTANCE)) == {"metadata.user_data"}
    user_data = base64.b64decode(run.inputs(INSTANCE)["metadata"]["user_data"]).decode()
    bucket_url = f"{h.OBJECT_STORAGE}/p/{h.PAR_TOKEN}/n/{h.OBJECT_STORAGE_NAMESPACE}/b/mailgate-dev-bootstrap/o/"
    assert user_data == render_cloud_init(dev_settings, bucket_url)
    assert user_data.startswith("#cloud-config")
    assert h.AUTH_KEY not in user_data and "tskey" not in user_data
    assert run.inputs(INSTANCE)["displayName"] == "mailgate-dev-gateway"


def _instance_and_network(raw) -> dict[str, dict]:
    run = run_program(raw)
    return {r.name: h.plain(r.inputs) for r in run.resources}


def test_ports_and_relay_change_only_the_security_list_and_remote_steps(dev_raw):
    before = _instance_and_network(dev_raw)
    raw = copy.deepcopy(dev_raw)
    raw["services"] = ["smtp", "imaps", "pop3s"]
    raw["web"] = {"enabled": True}
    raw["relay"] = {**raw["relay"], "host": "smtp.example.net", "port": 465, "username": "other"}
    after = _instance_and_network(raw)
    assert before.keys() == after.keys()
    changed = {name for name in before if before[name] != after[name]}
    # The port list reaches the hosts through the remote steps; the VM never changes.
    assert changed == {"gateway-net-security", "gateway-config-apply", "home-config-apply"}


def test_ipv6_gives_the_vnic_an_address_and_exports_it(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["gateway"]["ipv6"] = True
    run = run_program(raw)
    assert run.inputs(INSTANCE)["createVnicDetails"]["assignIpv6ip"] is True
    assert run.invoked("oci:Core/getIpv6s:getIpv6s") == [{"vnicId": h.PRIMARY_VNIC_ID}]
    assert run.value("public_ipv6") == h.PUBLIC_IPV6


def _image(ocid, version, name, created="2025-01-01T00:00:00Z", os="Canonical Ubuntu"):
    return SimpleNamespace(id=ocid, operating_system=os, operating_system_version=version,
                           display_name=name, time_created=created)


def test_image_choice_prefers_newest_lts_release_then_newest_build():
    images = [
        _image("old-2404", "24.04", "Canonical-Ubuntu-24.04-2025.01.01-0", "2025-01-02T00:00:00Z"),
        _image("new-2404", "24.04", "Canonical-Ubuntu-24.04-2025.03.01-0", "2025-03-02T00:00:00Z"),
        _image("new-2204", "22.04", "Canonical-Ubuntu-22.04-2025.04.01-0", "2025-04-02T00:00:00Z"),
        _image("interim", "25.10", "Canonical-Ubuntu-25.10-2025.10.20-0", "2025-10-21T00:00:00Z"),
        _image("oracle", "9", "Oracle-Linux-9", "2025-11-01T00:00:00Z", os="Oracle Linux"),
    ]
    assert newest_ubuntu_lts(images) == "new-2404"


def test_no_lts_image_names_the_setting_to_pin():
    with pytest.raises(ValueError, match="mailgate:gateway.imageId"):
        newest_ubuntu_lts([_image("min", "24.04 Minimal", "Canonical-Ubuntu-24.04-Minimal-2025")])



def test_looked_up_image_and_domain_do_not_rebuild_but_pinned_ones_are_followed(dev_raw):
    assert run_program(dev_raw).options(INSTANCE)["ignore_changes"] == [
        "sourceDetails.sourceId", "availabilityDomain"]
    pinned = copy.deepcopy(dev_raw)
    pinned["gateway"]["imageId"] = h.NEWEST_LTS_IMAGE_ID
    assert run_program(pinned).options(INSTANCE)["ignore_changes"] == ["availabilityDomain"]
    pinned["gateway"]["availabilityDomain"] = h.AVAILABILITY_DOMAINS[1]
    assert run_program(pinned).options(INSTANCE)["ignore_changes"] == []
