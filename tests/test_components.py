"""The components built on their own, without __main__.py: what each promises to its
caller regardless of how it is wired. (The program-level tests are in
test_components_network.py, test_components_gateway.py and test_components_tailnet.py.)"""

from __future__ import annotations

import base64

import pulumi

from components.bootstrap import BootstrapBucket, BootstrapBucketArgs, GatewayEnrolment, GatewayEnrolmentArgs
from components.gateway import GatewayHost, GatewayHostArgs
from components.network import GatewayNetwork, GatewayNetworkArgs
from components.tailnet import Tailnet, TailnetArgs
from mailgate import catalogue
from tests import pulumi_harness as h
from tests.pulumi_harness import run_program


def test_user_data_stays_secret_even_if_the_url_arrives_unmarked(dev_raw, dev_settings):
    def program():
        url = pulumi.Output.from_input(h.OBJECT_STORAGE + "/p/unmarked/n/ns/b/bucket/o/")
        GatewayHost("gw", GatewayHostArgs(dev_settings, "subnet-ocid", url))

    run = run_program(dev_raw, program=program)
    assert h.secret_paths(run.sent_object("oci:Core/instance:Instance")) == {"metadata.user_data"}
    assert run.options("oci:Core/instance:Instance")["parent"].endswith("mailgate:oci:GatewayHost::gw")
    assert run.inputs("oci:Core/instance:Instance")["createVnicDetails"]["subnetId"] == "subnet-ocid"


def test_enrolment_carries_the_key_only_as_a_secret_and_names_the_vm(dev_raw, dev_settings):
    def program():
        bucket = BootstrapBucket("bs", BootstrapBucketArgs(dev_settings))
        enrolment = GatewayEnrolment("en", GatewayEnrolmentArgs(
            dev_settings, bucket, pulumi.Output.from_input("ocid1.instance.oc1.eu-frankfurt-1.vm1")))
        pulumi.export("url", bucket.url)
        pulumi.export("machine", enrolment.machine_name)

    run = run_program(dev_raw, program=program)
    assert run.exports["url"]["secret"] is True
    obj = run.one("oci:ObjectStorage/storageObject:StorageObject")
    assert h.secret_paths(run.sent_object("oci:ObjectStorage/storageObject:StorageObject")) == {"content"}
    assert h.plain(obj.inputs)["object"] == "ocid1.instance.oc1.eu-frankfurt-1.vm1"
    machine = run.exports["machine"]["value"]
    host_key = base64.b64encode(h.GATEWAY_HOST_KEY_PRIVATE.encode()).decode()
    assert h.plain(obj.inputs)["content"] == (
        f"TS_AUTHKEY={h.AUTH_KEY}\nTS_HOSTNAME={machine}\nSSH_HOST_KEY={host_key}\n")
    assert "content" in run.options("oci:ObjectStorage/storageObject:StorageObject")["additional_secret_outputs"]
    # The host key is the program's own, made for this VM and replaced with it.
    key_options = run.options("tls:index/privateKey:PrivateKey")
    assert run.inputs("tls:index/privateKey:PrivateKey")["algorithm"] == "ED25519"
    assert key_options["replacement_trigger"] == "ocid1.instance.oc1.eu-frankfurt-1.vm1"
    assert "private_key_openssh" in key_options["additional_secret_outputs"] or \
        "privateKeyOpenssh" in key_options["additional_secret_outputs"]


def test_tailnet_manages_the_policy_only_when_asked(dev_raw, dev_settings):
    def program():
        tailnet = Tailnet("tn", TailnetArgs(dev_settings))
        pulumi.export("policy_snippet", tailnet.policy_snippet)

    run = run_program(dev_raw, program=program)
    assert run.exports["policy_snippet"]["secret"] is False
    assert run.of_type("tailscale:index/acl:Acl") == []
    assert run.one("mailgate:tailscale:Tailnet").name == "tn"


def test_network_takes_its_ports_from_the_services_it_is_given(dev_raw, dev_settings):
    web_only = catalogue.WEB_SERVICES + (catalogue.HTTP_SERVICE,)

    def program():
        GatewayNetwork("net", GatewayNetworkArgs(dev_settings.gateway, web_only, dev_settings.names))

    run = run_program(dev_raw, program=program)
    rules = run.inputs("oci:Core/securityList:SecurityList")["ingressSecurityRules"]
    world_tcp = sorted(int(r["tcpOptions"]["min"]) for r in rules
                       if r["protocol"] == "6" and r["source"] == "0.0.0.0/0")
    assert world_tcp == [80, 443]
    assert {r.name for r in run.resources} == {
        "net", "net-vcn", "net-igw", "net-routes", "net-security", "net-subnet"}
