"""The gateway's OCI network: VCN, internet gateway, route table, security list, subnet.

The security list is a function of the port catalogue: the enabled services' public TCP
ports from anywhere, path-MTU ICMP, Tailscale's direct-connection UDP port, and SSH only
from the admin networks. Nothing else comes in; everything may go out.

IPv6 (gateway.ipv6): the VCN gets an Oracle-allocated /56, the subnet the first /64 of
it, a ::/0 route, and every world-facing rule is repeated for ::/0. IPv6 admin networks
only become SSH rules when IPv6 is on: without it the gateway has no IPv6 address, so
such a rule could never match and would only suggest access that does not exist.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_oci as oci

from mailgate import catalogue
from mailgate.names import StackNames
from mailgate.settings import GatewaySettings

TCP, UDP, ICMP, ICMPV6, ALL = "6", "17", "1", "58", "all"
ANYWHERE_V4, ANYWHERE_V6 = "0.0.0.0/0", "::/0"
# "Fragmentation needed" (IPv4) and "Packet too big" (IPv6): without them path-MTU
# discovery fails and large messages stall over the tunnel's smaller MTU.
PMTU_ICMP = (ICMP, 3, 4)
PMTU_ICMPV6 = (ICMPV6, 2, 0)


@dataclass(frozen=True)
class IngressRule:
    """One security list ingress rule, before it becomes an OCI argument."""

    protocol: str
    source: str
    description: str
    port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


def ingress_rules(
    gateway: GatewaySettings, services: tuple[catalogue.Service, ...]
) -> tuple[IngressRule, ...]:
    """Every inbound rule the gateway needs, derived from the catalogue and the settings."""
    worlds = (ANYWHERE_V4, ANYWHERE_V6) if gateway.ipv6 else (ANYWHERE_V4,)
    rules = [
        IngressRule(TCP, world, f"{s.name}: {s.description}", port=s.public_port)
        for world in worlds
        for s in services
    ]
    pmtu = {ANYWHERE_V4: PMTU_ICMP, ANYWHERE_V6: PMTU_ICMPV6}
    rules += [
        IngressRule(pmtu[world][0], world, "path MTU discovery",
                    icmp_type=pmtu[world][1], icmp_code=pmtu[world][2])
        for world in worlds
    ]
    rules += [
        IngressRule(UDP, world, "Tailscale direct connections",
                    port=catalogue.TAILSCALE_DIRECT_UDP_PORT)
        for world in worlds
    ]
    rules += [
        IngressRule(TCP, cidr, "SSH from an admin network", port=catalogue.SSH_PORT)
        for cidr in gateway.admin_cidrs
        if gateway.ipv6 or ipaddress.ip_network(cidr).version == 4
    ]
    return tuple(rules)


def _ingress_args(rule: IngressRule) -> oci.core.SecurityListIngressSecurityRuleArgs:
    port_range = {"min": rule.port, "max": rule.port} if rule.port is not None else None
    return oci.core.SecurityListIngressSecurityRuleArgs(
        protocol=rule.protocol,
        source=rule.source,
        source_type="CIDR_BLOCK",
        description=rule.description,
        tcp_options=oci.core.SecurityListIngressSecurityRuleTcpOptionsArgs(**port_range)
        if rule.protocol == TCP else None,
        udp_options=oci.core.SecurityListIngressSecurityRuleUdpOptionsArgs(**port_range)
        if rule.protocol == UDP else None,
        icmp_options=oci.core.SecurityListIngressSecurityRuleIcmpOptionsArgs(
            type=rule.icmp_type, code=rule.icmp_code)
        if rule.icmp_type is not None else None,
    )


def first_slash64(vcn_ipv6_blocks: list[str]) -> str:
    """The subnet's /64: the first one of the /56 Oracle allocated to the VCN."""
    return str(next(ipaddress.ip_network(vcn_ipv6_blocks[0]).subnets(new_prefix=64)))


@dataclass(frozen=True)
class GatewayNetworkArgs:
    gateway: GatewaySettings
    services: tuple[catalogue.Service, ...]
    names: StackNames


class GatewayNetwork(pulumi.ComponentResource):
    """A public subnet whose security list admits exactly the catalogue's enabled ports."""

    vcn_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    security_list_id: pulumi.Output[str]

    def __init__(self, name: str, args: GatewayNetworkArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mailgate:oci:GatewayNetwork", name, None, opts)
        gateway = args.gateway
        worlds = (ANYWHERE_V4, ANYWHERE_V6) if gateway.ipv6 else (ANYWHERE_V4,)
        child = pulumi.ResourceOptions(parent=self)

        vcn = oci.core.Vcn(
            f"{name}-vcn",
            compartment_id=gateway.compartment_id,
            cidr_blocks=[gateway.vcn_cidr],
            display_name=args.names.display_name("vcn"),
            is_ipv6enabled=True if gateway.ipv6 else None,
            opts=child,
        )
        internet_gateway = oci.core.InternetGateway(
            f"{name}-igw",
            compartment_id=gateway.compartment_id,
            vcn_id=vcn.id,
            enabled=True,
            display_name=args.names.display_name("igw"),
            opts=child,
        )
        route_table = oci.core.RouteTable(
            f"{name}-routes",
            compartment_id=gateway.compartment_id,
            vcn_id=vcn.id,
            display_name=args.names.display_name("routes"),
            route_rules=[
                oci.core.RouteTableRouteRuleArgs(
                    destination=world,
                    destination_type="CIDR_BLOCK",
                    network_entity_id=internet_gateway.id,
                )
                for world in worlds
            ],
            opts=child,
        )
        security_list = oci.core.SecurityList(
            f"{name}-security",
            compartment_id=gateway.compartment_id,
            vcn_id=vcn.id,
            display_name=args.names.display_name("security"),
            ingress_security_rules=[
                _ingress_args(rule) for rule in ingress_rules(gateway, args.services)
            ],
            egress_security_rules=[
                oci.core.SecurityListEgressSecurityRuleArgs(
                    protocol=ALL, destination=world, destination_type="CIDR_BLOCK",
                    description="outbound: relay, tailnet, package updates",
                )
                for world in worlds
            ],
            opts=child,
        )
        subnet = oci.core.Subnet(
            f"{name}-subnet",
            compartment_id=gateway.compartment_id,
            vcn_id=vcn.id,
            cidr_block=gateway.subnet_cidr,
            ipv6cidr_block=vcn.ipv6cidr_blocks.apply(first_slash64) if gateway.ipv6 else None,
            route_table_id=route_table.id,
            # Only ours: the VCN's default security list opens SSH to the whole internet.
            security_list_ids=[security_list.id],
            # Public subnet: the reserved public IP is attached to a VNIC in it.
            prohibit_public_ip_on_vnic=False,
            display_name=args.names.display_name("subnet"),
            opts=child,
        )

        self.vcn_id = vcn.id
        self.subnet_id = subnet.id
        self.security_list_id = security_list.id
        self.register_outputs({
            "vcn_id": self.vcn_id,
            "subnet_id": self.subnet_id,
            "security_list_id": self.security_list_id,
        })
