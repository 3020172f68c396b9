"""Tailscale on home: tailscaled's netfilter rules, and the tailnet policy as Tailscale
would enforce it.

tailscaled (netfilter mode on, the default) makes chains ts-input and ts-forward and
inserts a jump to each at position 1 of INPUT and FORWARD, again at every start; the
rules here reproduce what it installs for IPv4, read from tailscale/tailscale
util/linuxfw/iptables_runner.go at commit de9ec7ee25627e0e518f53c710a3fc3d947c86c1
(AddChains, AddHooks, addBase4, AddLoopbackRule, buildExternalCGNATRules in its default
drop mode; marks from tsconst/linuxfw.go). ts-forward ACCEPTs everything arriving on
tailscale0, which is why a filter in Docker's DOCKER-USER never sees a tailnet peer.

Tailscale filters inbound tailnet packets on the receiving node by the policy file, inside
tailscaled, before the kernel's netfilter. The lab's tunnel is bare WireGuard, so home
applies the project's rendered policy snippet itself, in mangle PREROUTING (after
conntrack, so replies pass, and before Docker's DNAT): the gateway (the node tagged with
the gateway tag) may open only the ports the snippet grants on home, which keeps
Mailcow's plain, non-PROXY ports out of its reach.

The second tailnet peer gets no rule: it stands for a member whom the user's own policy
lets reach everything (Tailscale's default policy allows all), the case in which only
the home firewall keeps a forged PROXY header out.
"""

from __future__ import annotations

from mailgate.lab import GATEWAY_TAILNET, HOME, HOME_TAILNET
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
    lines = ["*mangle", f":{CHAIN} - [0:0]",
             # Tailscale's filter is stateful: replies to home's own connections pass.
             f"-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"]
    if ports:
        lines.append(f"-A {CHAIN} -s {GATEWAY_TAILNET}/32 -p tcp -m multiport --dports {ports} -j RETURN")
    # Tailscale drops what the policy does not allow (no reset): the sender times out.
    lines += [f"-A {CHAIN} -s {GATEWAY_TAILNET}/32 -j DROP", "COMMIT", ""]
    return "\n".join(lines)


def apply(settings: Settings) -> None:
    run(["iptables-restore", "--noflush"], HOME, stdin=rules(settings))
    run(["iptables", "-t", "mangle", "-I", "PREROUTING", "1", "-i", INTERFACE, "-j", CHAIN], HOME)


CGNAT, CHROMEOS_VM = "100.64.0.0/10", "100.115.92.0/23"
SUBNET_ROUTE_MARK = "0x40000/0xff0000"
# (table, chain tailscaled makes, builtin chain it jumps from at position 1, its rules)
TAILSCALED_CHAINS = (
    ("filter", "ts-input", "INPUT", (
        f"-i lo -s {HOME_TAILNET}/32 -j ACCEPT",
        f"-i {INTERFACE} -j ACCEPT",
        f"! -i {INTERFACE} -s {CHROMEOS_VM} -j RETURN",
        f"! -i {INTERFACE} -s {CGNAT} -j DROP",
    )),
    ("filter", "ts-forward", "FORWARD", (
        f"-i {INTERFACE} -j MARK --set-mark {SUBNET_ROUTE_MARK}",
        f"-m mark --mark {SUBNET_ROUTE_MARK} -j ACCEPT",
        f"-s {CGNAT} -o {INTERFACE} -j DROP",
        f"-o {INTERFACE} -j ACCEPT",
    )),
    ("nat", "ts-postrouting", "POSTROUTING", ()),  # SNAT only for advertised subnet routes
)


def start_tailscaled() -> None:
    """What tailscaled does at start: its chains emptied or made, filled, and a jump to
    each inserted at position 1 where missing."""
    for table, chain, builtin, chain_rules in TAILSCALED_CHAINS:
        if run(["iptables", "-t", table, "-F", chain], HOME, check=False).returncode:
            run(["iptables", "-t", table, "-N", chain], HOME)
        if run(["iptables", "-t", table, "-C", builtin, "-j", chain], HOME, check=False).returncode:
            run(["iptables", "-t", table, "-I", builtin, "1", "-j", chain], HOME)
        for rule in chain_rules:
            run(["iptables", "-t", table, "-A", chain, *rule.split()], HOME)


def restart_tailscaled() -> None:
    """`systemctl restart tailscaled`: on the way down it removes its jumps and chains;
    on the way up it puts them back first in INPUT and FORWARD."""
    for table, chain, builtin, _ in TAILSCALED_CHAINS:
        run(["iptables", "-t", table, "-D", builtin, "-j", chain], HOME, check=False)
        run(["iptables", "-t", table, "-F", chain], HOME, check=False)
        run(["iptables", "-t", table, "-X", chain], HOME, check=False)
    start_tailscaled()
