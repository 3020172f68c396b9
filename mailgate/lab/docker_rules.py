"""Docker's published ports on home, as Docker 28 builds them for Mailcow's bridge.

Mailcow publishes its plain ports on every address and mailgate's twin ports on the
home tailnet address (the compose override); Docker turns each into a DNAT rule in
`nat DOCKER` (jumped to from PREROUTING for local destinations) and an ACCEPT in
`filter DOCKER`, reached from FORWARD through DOCKER-USER first, then Docker's own
chains. Docker 28 appends its jumps to FORWARD (older releases inserted them), so a
chain another program inserts at position 1 (tailscaled's ts-forward) decides first.
Docker also drops, in raw PREROUTING, packets for a container address that do not come
from its bridge. DOCKER-USER belongs to the user: Docker creates it empty once and
never flushes it, also not when it restarts.
"""

from __future__ import annotations

from mailgate import catalogue
from mailgate.lab import BRIDGE, CONTAINER_IP, CONTAINER_SUBNET, HOME, HOME_TAILNET
from mailgate.lab.system import run
from mailgate.settings import Settings

FILTER_CHAINS = ("DOCKER", "DOCKER-FORWARD", "DOCKER-BRIDGE", "DOCKER-CT",
                 "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2")
FORWARD_JUMPS = ("DOCKER-USER", "DOCKER-FORWARD")  # appended, in this order
NAT_JUMPS = (("PREROUTING", "-m addrtype --dst-type LOCAL -j DOCKER"),
             ("OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER"),
             ("POSTROUTING", f"-s {CONTAINER_SUBNET} ! -o {BRIDGE} -j MASQUERADE"))
RAW_RULE = f"-d {CONTAINER_IP}/32 ! -i {BRIDGE} -j DROP"


def published(settings: Settings) -> list[tuple[str | None, int]]:
    """(host address or None for every address, port) of each port Docker publishes:
    Mailcow's plain ports, its nginx's HTTP port (ACME's challenges; acme.py's stand-in
    listens there) and HTTPS port (the ban list; bans.py's stand-in listens there), and
    mailgate's twins (container port = host port)."""
    services = [s for s in settings.enabled_services if s.proxy_protocol]
    web = [catalogue.HTTP_SERVICE.home_port, settings.bans.home_https_port]
    return ([(None, s.public_port) for s in services] + [(None, port) for port in web]
            + [(HOME_TAILNET, s.home_port) for s in services])


def rules(settings: Settings) -> str:
    """Docker's chains (declared, so a reload flushes them, as dockerd does at start)."""
    nat = ["*nat", ":DOCKER - [0:0]", f"-A DOCKER -i {BRIDGE} -j RETURN"]
    accept = []
    for address, port in published(settings):
        host = f"-d {address}/32 " if address else ""
        nat.append(f"-A DOCKER {host}! -i {BRIDGE} -p tcp -m tcp --dport {port} "
                   f"-j DNAT --to-destination {CONTAINER_IP}:{port}")
        accept.append(f"-A DOCKER -d {CONTAINER_IP}/32 ! -i {BRIDGE} -o {BRIDGE} -p tcp -m tcp "
                      f"--dport {port} -j ACCEPT")
    filter_ = ["*filter", ":FORWARD DROP [0:0]", *(f":{chain} - [0:0]" for chain in FILTER_CHAINS),
               "-A DOCKER-FORWARD -j DOCKER-CT",
               "-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1",
               "-A DOCKER-FORWARD -j DOCKER-BRIDGE",
               f"-A DOCKER-FORWARD -i {BRIDGE} -j ACCEPT",
               f"-A DOCKER-BRIDGE -o {BRIDGE} -j DOCKER",
               f"-A DOCKER-CT -o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
               *accept,
               f"-A DOCKER ! -i {BRIDGE} -o {BRIDGE} -j DROP",
               f"-A DOCKER-ISOLATION-STAGE-1 -i {BRIDGE} ! -o {BRIDGE} -j DOCKER-ISOLATION-STAGE-2",
               f"-A DOCKER-ISOLATION-STAGE-2 -o {BRIDGE} -j DROP"]
    return "\n".join([*nat, "COMMIT", *filter_, "COMMIT", ""])


def _ensure(table: str, chain: str, rule: str) -> None:
    if run(["iptables", "-t", table, "-C", chain, *rule.split()], HOME, check=False).returncode:
        run(["iptables", "-t", table, "-A", chain, *rule.split()], HOME)


def start(settings: Settings) -> None:
    """What dockerd does at start: DOCKER-USER made if missing (never flushed), its own
    chains rebuilt, its jumps appended where missing."""
    run(["iptables", "-N", "DOCKER-USER"], HOME, check=False)
    run(["iptables-restore", "--noflush"], HOME, stdin=rules(settings))
    for target in FORWARD_JUMPS:
        _ensure("filter", "FORWARD", f"-j {target}")
    for chain, rule in NAT_JUMPS:
        _ensure("nat", chain, rule)
    _ensure("raw", "PREROUTING", RAW_RULE)


def restart(settings: Settings) -> None:
    """`systemctl restart docker`: its jumps and chains go, then come back as at start."""
    for target in FORWARD_JUMPS:
        run(["iptables", "-D", "FORWARD", "-j", target], HOME, check=False)
    for chain, rule in NAT_JUMPS:
        run(["iptables", "-t", "nat", "-D", chain, *rule.split()], HOME, check=False)
    run(["iptables", "-t", "raw", "-D", "PREROUTING", *RAW_RULE.split()], HOME, check=False)
    for table, chains in (("filter", FILTER_CHAINS), ("nat", ("DOCKER",))):
        for chain in chains:
            run(["iptables", "-t", table, "-F", chain], HOME, check=False)
        for chain in chains:
            run(["iptables", "-t", table, "-X", chain], HOME, check=False)
    start(settings)
