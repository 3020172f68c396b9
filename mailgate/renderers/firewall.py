"""Host firewall rules as iptables-restore input (applied with --noflush).

Gateway: the MAILGATE-IN chain, hooked into INPUT by cloud-init, opens the enabled
public ports. Home: the stack's MAILGATE-TWIN-<stack> chain in the `raw` table, hooked into
raw PREROUTING, lets only the gateway reach Mailcow's PROXY twin ports, because Postfix
believes any PROXY header it is sent and would otherwise let anyone claim any client
address. Its IPv6 twin (ip6tables, same chain name) drops the twin ports on Tailscale's
IPv6 range.

Why `raw` and not Docker's DOCKER-USER: tailscaled inserts `ts-forward` at position 1 of
filter FORWARD (again at every restart) and it ACCEPTs whatever arrives on tailscale0, so a
published port's forwarded packets never reach DOCKER-USER (Docker 28 appends its jumps).
raw PREROUTING runs before conntrack, before Docker's DNAT and before any filter chain,
and neither tailscaled nor Docker flush it; a dropped SYN never becomes a connection.
"""

from __future__ import annotations

from mailgate import catalogue
from mailgate.deployment import Deployment
from mailgate.renderers.cloud_init import GATEWAY_INPUT_CHAIN
from mailgate.settings import TAILNET_RANGES, Settings

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
    """Twin ports on the home tailnet address: the gateway's tailnet address may connect,
    every other source is dropped (raw cannot REJECT: the sender times out).

    Matched on the destination as sent (raw PREROUTING sees the packet before Docker's
    DNAT rewrites it to the container). IPv4 only: Mailcow's twin ports are published on
    the home's IPv4 tailnet address alone (settings.home.tailnet_ip), so nothing listens
    for them on the IPv6 tailnet address (render_home_firewall_v6 still guards that
    range). Every PROXY twin port of the catalogue is
    guarded, enabled or not, so a leftover publication (e.g. Mailcow's HAPROXY example)
    cannot be spoofed through either.
    """
    enabled_twins = tuple(s for s in settings.enabled_services if s.proxy_protocol)
    home = settings.home.tailnet_ip
    chain = settings.names.home_twin_chain
    lines = [
        HEADER,
        "*raw",
        f":{chain} - [0:0]",
    ]
    if enabled_twins:
        lines.append(
            f"-A {chain} -s {deployment.gateway_tailnet_ip}/32 -d {home}/32 -p tcp "
            f"-m multiport --dports {_ports(enabled_twins, 'home_port')} -j RETURN"
        )
    lines += [
        f"-A {chain} -d {home}/32 -p tcp "
        f"-m multiport --dports {_ports(catalogue.PROXY_SERVICES, 'home_port')} -j DROP",
        "COMMIT",
        "",
    ]
    return "\n".join(lines)


def render_home_firewall_v6(settings: Settings) -> str:
    """The IPv6 twin of render_home_firewall (same chain name, in ip6tables' raw table):
    TCP to a twin port on any address of Tailscale's IPv6 range is dropped, from every
    source. Nothing is published there today and the gateway connects over IPv4, so no
    source is let through; a publication on the IPv6 tailnet address (Docker, a user's
    override) still cannot be reached with a forged PROXY header."""
    chain = settings.names.home_twin_chain
    return "\n".join([
        HEADER.replace("iptables-restore", "ip6tables-restore"),
        "# No allow rule: mailgate publishes nothing on the IPv6 tailnet address and the",
        "# gateway connects over IPv4.",
        "*raw",
        f":{chain} - [0:0]",
        f"-A {chain} -d {TAILNET_RANGES[1]} -p tcp "
        f"-m multiport --dports {_ports(catalogue.PROXY_SERVICES, 'home_port')} -j DROP",
        "COMMIT",
        "",
    ])
