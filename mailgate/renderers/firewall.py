"""Host firewall rules as iptables-restore input (applied with --noflush).

Gateway: the MAILGATE-IN chain, hooked into INPUT by cloud-init, opens the enabled
public ports. Home: the stack's MAILGATE-TWIN-<stack> chain, hooked into Docker's DOCKER-USER chain,
lets only the gateway reach Mailcow's PROXY twin ports, because Postfix believes any
PROXY header it is sent and would otherwise let anyone claim any client address.
"""

from __future__ import annotations

from mailgate import catalogue
from mailgate.deployment import Deployment
from mailgate.renderers.cloud_init import GATEWAY_INPUT_CHAIN
from mailgate.settings import Settings

HEADER = "# Rendered by mailgate; load with iptables-restore --noflush (the chain is replaced)."


def _ports(services: tuple[catalogue.Service, ...], attribute: str) -> str:
    return ",".join(str(getattr(s, attribute)) for s in services)


def render_gateway_firewall(settings: Settings, ip_version: int = 4) -> str:
    """Rules for iptables (ip_version 4) or ip6tables (6)."""
    public = _ports(settings.enabled_services, "public_port")
    if ip_version == 4:
        path_mtu = "-p icmp --icmp-type fragmentation-needed"
    else:
        path_mtu = "-p ipv6-icmp --icmpv6-type packet-too-big"
    return "\n".join([
        HEADER,
        "*filter",
        f":{GATEWAY_INPUT_CHAIN} - [0:0]",
        f"-A {GATEWAY_INPUT_CHAIN} -p tcp -m multiport --dports {public} -j ACCEPT",
        f"-A {GATEWAY_INPUT_CHAIN} -p udp --dport {catalogue.TAILSCALE_DIRECT_UDP_PORT} -j ACCEPT",
        f"-A {GATEWAY_INPUT_CHAIN} {path_mtu} -j ACCEPT",
        "COMMIT",
        "",
    ])


def render_home_firewall(settings: Settings, deployment: Deployment) -> str:
    """Twin ports: the gateway's tailnet address may connect, everyone else gets a reset.

    Every PROXY twin port of the catalogue is guarded, enabled or not, so a leftover
    publication (e.g. Mailcow's HAPROXY example) cannot be spoofed through either.
    """
    enabled_twins = tuple(s for s in settings.enabled_services if s.proxy_protocol)
    home = settings.home.tailnet_ip
    chain = settings.names.home_twin_chain
    lines = [
        HEADER,
        "*filter",
        f":{chain} - [0:0]",
    ]
    if enabled_twins:
        lines.append(
            f"-A {chain} -s {deployment.gateway_tailnet_ip}/32 -p tcp "
            f"-m conntrack --ctorigdst {home}/32 "
            f"-m multiport --dports {_ports(enabled_twins, 'home_port')} -j RETURN"
        )
    lines += [
        f"-A {chain} -p tcp -m conntrack --ctorigdst {home}/32 "
        f"-m multiport --dports {_ports(catalogue.PROXY_SERVICES, 'home_port')} "
        "-j REJECT --reject-with tcp-reset",
        "COMMIT",
        "",
    ]
    return "\n".join(lines)
