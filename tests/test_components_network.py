"""GatewayNetwork, seen through the real __main__.py: what `pulumi preview` would show."""

from __future__ import annotations

import copy
import ipaddress

import pytest

from mailgate import catalogue
from tests.pulumi_harness import VCN_IPV6_BLOCK, run_program

SECURITY_LIST = "oci:Core/securityList:SecurityList"
WORLD = {"0.0.0.0/0", "::/0"}


def _stack(dev_raw, services=None, web=False, ipv6=False, acme="http-01") -> dict:
    raw = copy.deepcopy(dev_raw)
    if services is not None:
        raw["services"] = services
    raw["web"] = {"enabled": web}
    raw["acme"] = {"method": acme}
    raw["gateway"]["ipv6"] = ipv6
    return raw


def _rule_key(rule: dict) -> tuple:
    """A rule as (protocol, source, port or ICMP type/code), the way a reviewer reads it."""
    options = rule.get("tcpOptions") or rule.get("udpOptions")
    if options is not None:
        return rule["protocol"], rule["source"], ("ports", options.get("min"), options.get("max"))
    if "icmpOptions" in rule:
        return rule["protocol"], rule["source"], ("icmp", rule["icmpOptions"]["type"],
                                                  rule["icmpOptions"].get("code"))
    return rule["protocol"], rule["source"], None


def _ingress(run) -> list[tuple]:
    return [_rule_key(rule) for rule in run.inputs(SECURITY_LIST)["ingressSecurityRules"]]


def _expected(services: list[str], web: bool, ipv6: bool, admin_cidrs: list[str], acme: str) -> set[tuple]:
    """Written out from the issues' requirements, independently of the component: port 80
    for ACME's HTTP-01 or web's redirect, 443 for web forwarding."""
    ports = [catalogue.BY_NAME[name].public_port for name in services]
    if acme == "http-01" or web:
        ports += [80]
    if web:
        ports += [443]
    worlds = ["0.0.0.0/0", "::/0"] if ipv6 else ["0.0.0.0/0"]
    expected = {("6", world, ("ports", float(p), float(p))) for world in worlds for p in ports}
    expected.add(("1", "0.0.0.0/0", ("icmp", 3.0, 4.0)))
    if ipv6:
        expected.add(("58", "::/0", ("icmp", 2.0, 0.0)))
    expected |= {("17", world, ("ports", 41641.0, 41641.0)) for world in worlds}
    expected |= {
        ("6", cidr, ("ports", 22.0, 22.0)) for cidr in admin_cidrs
        if ipv6 or ipaddress.ip_network(cidr).version == 4
    }
    return expected


PORT_SETS = [
    pytest.param(None, False, False, "http-01", id="defaults"),
    pytest.param(["smtp"], False, False, "none", id="mx-only-no-acme"),
    pytest.param(list(catalogue.MAIL_SERVICE_NAMES), True, False, "http-01", id="everything"),
    pytest.param(["smtp", "imaps", "submissions"], False, True, "http-01", id="some-ipv6"),
    pytest.param(None, True, True, "none", id="defaults-web-ipv6-no-acme"),
]


@pytest.mark.parametrize("services, web, ipv6, acme", PORT_SETS)
def test_security_list_is_exactly_the_catalogue(dev_raw, services, web, ipv6, acme):
    raw = _stack(dev_raw, services, web, ipv6, acme)
    rules = _ingress(run_program(raw))
    assert len(rules) == len(set(rules)), "a rule is listed twice"
    assert set(rules) == _expected(raw["services"], web, ipv6, raw["gateway"]["adminCidrs"], acme)


@pytest.mark.parametrize("services, web, ipv6, acme", PORT_SETS)
def test_world_reaches_only_the_enabled_public_ports(dev_raw, services, web, ipv6, acme):
    raw = _stack(dev_raw, services, web, ipv6, acme)
    enabled_ports = {s.public_port for s in catalogue.enabled(tuple(raw["services"]), web, acme == "http-01" or web)}
    for rule in run_program(raw).inputs(SECURITY_LIST)["ingressSecurityRules"]:
        assert rule["protocol"] != "all", rule
        if rule["protocol"] in ("6", "17"):
            options = rule["tcpOptions" if rule["protocol"] == "6" else "udpOptions"]
            assert options["min"] == options["max"], f"a port range is open: {rule}"
        if rule["source"] not in WORLD:
            continue
        if rule["protocol"] == "6":
            assert int(rule["tcpOptions"]["min"]) in enabled_ports, rule
        elif rule["protocol"] == "17":
            assert rule["udpOptions"]["min"] == catalogue.TAILSCALE_DIRECT_UDP_PORT, rule
        else:
            assert rule["protocol"] in ("1", "58") and "icmpOptions" in rule, rule


def test_ssh_only_from_admin_networks_and_ipv6_ones_only_with_ipv6(dev_raw):
    ipv4_admin, ipv6_admin = dev_raw["gateway"]["adminCidrs"]
    assert ":" in ipv6_admin, "the example stack should have an IPv6 admin network"
    for ipv6, sources in ((False, [ipv4_admin]), (True, [ipv4_admin, ipv6_admin])):
        rules = run_program(_stack(dev_raw, ipv6=ipv6)).inputs(SECURITY_LIST)["ingressSecurityRules"]
        ssh = [r for r in rules if r["protocol"] == "6" and r["tcpOptions"]["min"] <= 22 <= r["tcpOptions"]["max"]]
        assert sorted(r["source"] for r in ssh) == sorted(sources)
        assert all(r["tcpOptions"] == {"min": 22.0, "max": 22.0} for r in ssh)


def test_egress_is_open(dev_raw):
    for ipv6, destinations in ((False, ["0.0.0.0/0"]), (True, ["0.0.0.0/0", "::/0"])):
        egress = run_program(_stack(dev_raw, ipv6=ipv6)).inputs(SECURITY_LIST)["egressSecurityRules"]
        assert [(r["protocol"], r["destination"]) for r in egress] == [("all", d) for d in destinations]


def test_subnet_is_routed_to_the_internet_gateway_and_uses_only_our_security_list(dev_raw):
    run = run_program(_stack(dev_raw))
    vcn = run.inputs("oci:Core/vcn:Vcn")
    assert vcn["cidrBlocks"] == [dev_raw["gateway"]["vcnCidr"]]
    assert vcn["compartmentId"] == dev_raw["gateway"]["compartmentId"]
    assert "isIpv6enabled" not in vcn
    igw = run.one("oci:Core/internetGateway:InternetGateway")
    routes = run.inputs("oci:Core/routeTable:RouteTable")["routeRules"]
    assert routes == [{"destination": "0.0.0.0/0", "destinationType": "CIDR_BLOCK",
                       "networkEntityId": f"{igw.name}-id"}]
    subnet = run.inputs("oci:Core/subnet:Subnet")
    assert subnet["cidrBlock"] == dev_raw["gateway"]["subnetCidr"]
    assert subnet["securityListIds"] == [f"{run.one(SECURITY_LIST).name}-id"]
    assert subnet["routeTableId"] == f"{run.one('oci:Core/routeTable:RouteTable').name}-id"
    assert subnet["prohibitPublicIpOnVnic"] is False
    assert "ipv6cidrBlock" not in subnet


def test_ipv6_gives_the_subnet_the_first_64_of_the_vcn_block_and_a_default_route(dev_raw):
    run = run_program(_stack(dev_raw, ipv6=True))
    assert run.inputs("oci:Core/vcn:Vcn")["isIpv6enabled"] is True
    subnet_block = ipaddress.ip_network(run.inputs("oci:Core/subnet:Subnet")["ipv6cidrBlock"])
    assert subnet_block.prefixlen == 64
    assert subnet_block.subnet_of(ipaddress.ip_network(VCN_IPV6_BLOCK))
    assert subnet_block.network_address == ipaddress.ip_network(VCN_IPV6_BLOCK).network_address
    routes = run.inputs("oci:Core/routeTable:RouteTable")["routeRules"]
    assert [r["destination"] for r in routes] == ["0.0.0.0/0", "::/0"]


def test_network_resources_belong_to_the_component(dev_raw):
    run = run_program(_stack(dev_raw))
    component = run.one("mailgate:oci:GatewayNetwork")
    for token in ("oci:Core/vcn:Vcn", "oci:Core/internetGateway:InternetGateway",
                  "oci:Core/routeTable:RouteTable", SECURITY_LIST, "oci:Core/subnet:Subnet"):
        resource = run.one(token)
        assert resource.name.startswith(f"{component.name}-")
        assert run.options(token)["parent"].endswith(f"mailgate:oci:GatewayNetwork::{component.name}")
