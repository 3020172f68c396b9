"""Namespaces, links and the WireGuard tunnel of the lab, and the link from home to
Mailcow's "container" namespace (Docker's bridge, as a veth)."""

from __future__ import annotations

from mailgate.lab import (
    ACME_CA, ACME_CA_IP, CLIENT_IP6, PUBLIC_IP6, DNS, DNS_IP, HOME_ACME_UNDERLAY, ATTACK, ATTACKER_IP, BRIDGE, BRIDGE_IP, CONTAINER_IP, HOME_TUNNEL, MAILCOW, CLIENT_IP, GATEWAY, HOME_RELAY_UNDERLAY, RELAY, RELAY_IP, GATEWAY_RELAY_UNDERLAY, GATEWAY_TAILNET, GATEWAY_UNDERLAY, HOME, HOME_SPOOF_UNDERLAY,
    HOME_TAILNET, HOME_UNDERLAY, INET, NAMESPACES, PUBLIC_IP, SPOOF, SPOOF_TAILNET,
    SPOOF_UNDERLAY, STATE, WG_PORT,
)
from mailgate.lab.system import run, spawn, wait_for

# (namespace a, interface a, address a, namespace b, interface b, address b)
LINKS = (
    (INET, "inet0", CLIENT_IP, GATEWAY, "gw-inet", PUBLIC_IP),
    (GATEWAY, "gw-home", GATEWAY_UNDERLAY, HOME, "home-gw", HOME_UNDERLAY),
    (HOME, "home-spoof", HOME_SPOOF_UNDERLAY, SPOOF, "spoof-home", SPOOF_UNDERLAY),
    (HOME, "home-relay", HOME_RELAY_UNDERLAY, RELAY, "relay-home", RELAY_IP),
    # The relay's one address again on a second link: the gateway's watcher sends its
    # alert there without passing through home.
    (GATEWAY, "gw-relay", GATEWAY_RELAY_UNDERLAY, RELAY, "relay-gw", RELAY_IP),
    # A second client on the internet, on its own link to the gateway's public address.
    (ATTACK, "attack0", ATTACKER_IP, GATEWAY, "gw-attack", PUBLIC_IP),
    # The ACME CA: its validator reaches the gateway's public address, and home's acme
    # client reaches its API (the CA's one address on both links).
    (ACME_CA, "acme-gw", ACME_CA_IP, GATEWAY, "gw-acme", PUBLIC_IP),
    (HOME, "home-acme", HOME_ACME_UNDERLAY, ACME_CA, "acme-home", ACME_CA_IP),
    # The doctor's public DNS, and the relay reached from the internet side (the doctor
    # logs in there as home's Postfix does): the client's and the relay's addresses again.
    (DNS, "dns-inet", DNS_IP, INET, "inet-dns", CLIENT_IP),
    (INET, "inet-relay", CLIENT_IP, RELAY, "relay-inet", RELAY_IP),
)
# IPv6 on a link above: (namespace a, interface a, address a, namespace b, interface b, address b).
LINKS6 = ((INET, "inet0", CLIENT_IP6, GATEWAY, "gw-inet", PUBLIC_IP6),)
# Host routes beyond each link's far end: (namespace, destination, interface). Home's
# watcher checks the gateway's public address, which the gateway answers on any link.
ROUTES = ((HOME, PUBLIC_IP, "home-gw"),)
# Interface names are distinct because wireguard-go's control sockets live in one
# /var/run/wireguard shared by every namespace.
TUNNELS = {GATEWAY: ("wg-gw", GATEWAY_TAILNET), HOME: (HOME_TUNNEL, HOME_TAILNET),
           SPOOF: ("wg-spoof", SPOOF_TAILNET)}


def existing_namespaces() -> list[str]:
    listed = run(["ip", "netns", "list"]).stdout.split()
    return [name for name in NAMESPACES if name in listed]


def create_namespaces() -> None:
    for namespace in NAMESPACES:
        run(["ip", "netns", "add", namespace])
        run(["ip", "link", "set", "lo", "up"], namespace)
    for ns_a, if_a, ip_a, ns_b, if_b, ip_b in LINKS:
        run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", if_b, "netns", ns_b])
        for namespace, interface, address, peer in ((ns_a, if_a, ip_a, ip_b), (ns_b, if_b, ip_b, ip_a)):
            run(["ip", "addr", "add", f"{address}/32", "dev", interface], namespace)
            run(["ip", "link", "set", interface, "up"], namespace)
            # A host route to the far end only: there is no default route anywhere.
            run(["ip", "route", "add", f"{peer}/32", "dev", interface], namespace)
    for ns_a, if_a, ip_a, ns_b, if_b, ip_b in LINKS6:
        for namespace, interface, address, peer in ((ns_a, if_a, ip_a, ip_b), (ns_b, if_b, ip_b, ip_a)):
            # nodad: usable at once (no duplicate address detection on a two-ended link).
            run(["ip", "-6", "addr", "add", f"{address}/128", "dev", interface, "nodad"], namespace)
            run(["ip", "-6", "route", "add", f"{peer}/128", "dev", interface], namespace)
    for namespace, destination, interface in ROUTES:
        run(["ip", "route", "add", f"{destination}/32", "dev", interface], namespace)
    _create_container_link()


# Whom Mailcow's containers answer or reach, all through home (Docker's bridge gateway).
CONTAINER_PEERS = (GATEWAY_TAILNET, SPOOF_TAILNET, GATEWAY_UNDERLAY, RELAY_IP)


def _create_container_link() -> None:
    run(["ip", "link", "add", BRIDGE, "netns", HOME, "type", "veth", "peer", "eth0", "netns", MAILCOW])
    run(["ip", "addr", "add", f"{BRIDGE_IP}/32", "dev", BRIDGE], HOME)
    run(["ip", "addr", "add", f"{CONTAINER_IP}/32", "dev", "eth0"], MAILCOW)
    for namespace, interface in ((HOME, BRIDGE), (MAILCOW, "eth0")):
        run(["ip", "link", "set", interface, "up"], namespace)
    run(["ip", "route", "add", f"{CONTAINER_IP}/32", "dev", BRIDGE], HOME)
    run(["ip", "route", "add", f"{BRIDGE_IP}/32", "dev", "eth0"], MAILCOW)
    for peer in CONTAINER_PEERS:
        run(["ip", "route", "add", f"{peer}/32", "via", BRIDGE_IP, "dev", "eth0"], MAILCOW)
    # Docker turns forwarding on; a new namespace starts with it off.
    run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], HOME)


def _key(name: str) -> str:
    private = STATE / "wg" / f"{name}.key"
    private.parent.mkdir(parents=True, exist_ok=True)
    private.write_text(run(["wg", "genkey"]).stdout)
    private.chmod(0o600)
    return run(["wg", "pubkey"], stdin=private.read_text()).stdout.strip()


def create_tunnel() -> None:
    public = {namespace: _key(namespace) for namespace in TUNNELS}
    for namespace, (interface, address) in TUNNELS.items():
        spawn(f"wireguard-{namespace}", ["wireguard-go", "-f", interface], namespace)
        wait_for(lambda: run(["ip", "link", "show", interface], namespace, check=False).returncode == 0,
                 f"{interface} in {namespace}")
        run(["ip", "addr", "add", f"{address}/32", "dev", interface], namespace)
        run(["ip", "link", "set", interface, "up"], namespace)
    key = lambda ns: str(STATE / "wg" / f"{ns}.key")  # noqa: E731
    run(["wg", "set", "wg-gw", "private-key", key(GATEWAY), "listen-port", str(WG_PORT),
         "peer", public[HOME], "allowed-ips", f"{HOME_TAILNET}/32"], GATEWAY)
    # Home dials out with keepalive, as it must from behind CGNAT.
    run(["wg", "set", HOME_TUNNEL, "private-key", key(HOME), "listen-port", str(WG_PORT),
         "peer", public[GATEWAY], "allowed-ips", f"{GATEWAY_TAILNET}/32",
         "endpoint", f"{GATEWAY_UNDERLAY}:{WG_PORT}", "persistent-keepalive", "1",
         "peer", public[SPOOF], "allowed-ips", f"{SPOOF_TAILNET}/32"], HOME)
    run(["wg", "set", "wg-spoof", "private-key", key(SPOOF), "listen-port", str(WG_PORT),
         "peer", public[HOME], "allowed-ips", f"{HOME_TAILNET}/32",
         "endpoint", f"{HOME_SPOOF_UNDERLAY}:{WG_PORT}", "persistent-keepalive", "1"], SPOOF)
    for namespace, peers in ((GATEWAY, [HOME_TAILNET]), (HOME, [GATEWAY_TAILNET, SPOOF_TAILNET]),
                             (SPOOF, [HOME_TAILNET])):
        for peer in peers:
            run(["ip", "route", "add", f"{peer}/32", "dev", TUNNELS[namespace][0]], namespace)
    wait_for(lambda: handshake(GATEWAY), "the WireGuard handshake between gateway and home")


def handshake(namespace: str) -> bool:
    output = run(["wg", "show", TUNNELS[namespace][0], "latest-handshakes"], namespace, check=False).stdout
    return any(line.split()[-1] != "0" for line in output.splitlines() if line.strip())


def set_home_tunnel(up: bool) -> None:
    run(["ip", "link", "set", HOME_TUNNEL, "up" if up else "down"], HOME)
    if up:
        run(["ip", "route", "replace", f"{GATEWAY_TAILNET}/32", "dev", HOME_TUNNEL], HOME)
        run(["ip", "route", "replace", f"{SPOOF_TAILNET}/32", "dev", HOME_TUNNEL], HOME)


def delete_namespaces() -> None:
    for namespace in existing_namespaces():
        run(["ip", "netns", "delete", namespace], check=False)
