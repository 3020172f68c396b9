"""The tailnet policy, enforced on home as Tailscale would enforce it.

Tailscale filters inbound tailnet packets on the receiving node by the policy file. The
lab's tunnel is bare WireGuard, so home applies the project's rendered policy snippet
itself: the gateway (the node tagged with the gateway tag) may open only the ports the
snippet grants on home, which keeps Mailcow's plain, non-PROXY ports out of its reach.

The second tailnet peer gets no rule: it stands for a member whom the user's own policy
lets reach everything (Tailscale's default policy allows all), the case in which only
the home firewall keeps a forged PROXY header out.
"""

from __future__ import annotations

from mailgate.lab import GATEWAY_TAILNET, HOME
from mailgate.lab.system import LabError, run
from mailgate.lab.topology import TUNNELS
from mailgate.renderers.tailscale_policy import HOME_HOST_ALIAS, policy
from mailgate.settings import Settings

CHAIN = "MGLAB-TAILNET"
INTERFACE = TUNNELS[HOME][0]


def granted_ports(settings: Settings) -> list[str]:
    """Home ports the policy snippet lets the gateway's tag open."""
    document = policy(settings)
    home_names = {HOME_HOST_ALIAS, settings.tailscale.home_tag}
    ports: list[str] = []
    for rule in document["acls"]:  # type: ignore[union-attr]
        if rule["action"] != "accept" or settings.tailscale.gateway_tag not in rule["src"]:
            continue
        for destination in rule["dst"]:
            host, _, port_list = destination.rpartition(":")
            if host in home_names:
                ports += port_list.split(",")
    if not all(port.isdigit() for port in ports):  # "*" or a range: iptables needs numbers
        raise LabError(f"the lab enforces single ports only; the policy grants {ports}")
    return ports


def rules(settings: Settings) -> str:
    ports = ",".join(granted_ports(settings))
    lines = ["*filter", f":{CHAIN} - [0:0]",
             # Tailscale's filter is stateful: replies to home's own connections pass.
             f"-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"]
    if ports:
        lines.append(f"-A {CHAIN} -s {GATEWAY_TAILNET}/32 -p tcp -m multiport --dports {ports} -j RETURN")
    # Tailscale drops what the policy does not allow (no reset): the sender times out.
    lines += [f"-A {CHAIN} -s {GATEWAY_TAILNET}/32 -j DROP", "COMMIT", ""]
    return "\n".join(lines)


def apply(settings: Settings) -> None:
    run(["iptables-restore", "--noflush"], HOME, stdin=rules(settings))
    run(["iptables", "-I", "INPUT", "1", "-i", INTERFACE, "-j", CHAIN], HOME)
