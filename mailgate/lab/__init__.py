"""The lab: the whole mail path on one Linux machine, in network namespaces.

    mglab-inet 198.51.100.7 ── veth ── 203.0.113.10 mglab-gw (nginx, rendered config; watcher)
    (probes, and a sending Postfix)
                                        192.0.2.1 │ wg-gw 100.64.0.1
                                      WireGuard (wireguard-go), home dials out
                                        192.0.2.2 │ tailscale0 100.64.0.2
                                               mglab-home: the Mini PC's host side (watcher).
                                               tailscaled's ts-input/ts-forward chains,
                                               Docker 28's chains and DNAT publishing the
                                               ports, the rendered home filter (raw),
                                               the tailnet policy (gateway -> twins only)
                            br-mailcow 198.51.100.65 │ veth
                                   eth0 198.51.100.66 mglab-mailcow (Postfix + Dovecot:
                                               Mailcow's containers, rendered extra.cf /
                                               extra.conf)
    mglab-home 192.0.2.5 ── veth ── 192.0.2.6 mglab-spoof, wg-spoof 100.64.0.3
                                               (a second tailnet peer, would-be spoofer)
    mglab-home 192.0.2.9 ── veth ── 192.0.2.25 mglab-relay (Postfix + SASL, the smart relay)
    mglab-gw  192.0.2.13 ── veth ── 192.0.2.25 mglab-relay (the same address on a second link)
    mglab-attack 203.0.113.50 ── veth ── 203.0.113.10 mglab-gw (a second outside client, the
                                               attacker of the ban checks; the same public
                                               address on a second link)
    mglab-acme 198.51.100.30 ── veth ── 203.0.113.10 mglab-gw (the ACME CA, pebble, and the
                                               DNS it validates with, nsd)
    mglab-home 192.0.2.17 ── veth ── 198.51.100.30 mglab-acme (home's acme client reaches
                                               the CA's API; the same CA address again)
    mglab-dns 198.51.100.53 ── veth ── 198.51.100.7 mglab-inet (the public DNS `lab doctor`
                                               asks: nsd with the domain's records)
    mglab-inet 198.51.100.7 ── veth ── 192.0.2.25 mglab-relay (the doctor's relay login check
                                               from outside; the relay's address again)

Bans (bans.py): fail2ban on home reads the Mailcow namespace's Postfix and Dovecot logs and
writes what it bans to a file, which a small HTTPS server in mglab-mailcow (port 443,
published like Mailcow's nginx) serves in Mailcow's ban-list format; the gateway's
banlist.py fetches it over the tunnel and loads it into nftables.

The relay is reached from both ends, as Brevo is over the internet: home's Postfix and
watcher, and the gateway's watcher with its own key. Home reaches the gateway's public
address 203.0.113.10 over the underlay (a host route), as the Mini PC reaches the VM's
public address, so home's watcher checks what a client reaches.

ACME (acme.py, checks in acme_checks.py; only after `lab acme` or acme.start): pebble is
the CA, nsd serves the lab domain (mailHostname -> 203.0.113.10) to pebble's validator and
to home, where acme-tiny (Mailcow's acme client) runs; a small web server in mglab-mailcow
(port 80, published like Mailcow's nginx) serves its challenge directory. HTTP-01 crosses
the gateway's port 80 and the tunnel.

The doctor (doctor_lab.py, only after `lab doctor` or doctor_lab.prepare): nsd in mglab-dns
serves the records mailgate tells a user to publish, Postfix and Dovecot get a certificate
from the lab CA for every certificate name, and `python -m mailgate doctor` runs from
mglab-inet as from any machine on the internet, reaching home's commands through a `docker`
stand-in (docker_shim.py).

Only documentation and CGNAT ranges, host routes only, no default route anywhere:
nothing the lab sends can leave it.
"""

from __future__ import annotations

from pathlib import Path

STATE = Path("/tmp/mailgate-lab")  # under /tmp: Postfix's maillog_file must be there
INET, GATEWAY, HOME, SPOOF, RELAY = "mglab-inet", "mglab-gw", "mglab-home", "mglab-spoof", "mglab-relay"
MAILCOW = "mglab-mailcow"  # Mailcow's containers, behind home as behind Docker's bridge
ATTACK = "mglab-attack"  # a second client on the internet side, which the ban checks get banned
ACME_CA = "mglab-acme"  # the ACME CA (pebble) and the DNS it validates with (nsd)
DNS = "mglab-dns"  # the public DNS the doctor asks (nsd)
NAMESPACES = (INET, GATEWAY, HOME, SPOOF, RELAY, MAILCOW, ATTACK, ACME_CA, DNS)

CLIENT_IP = "198.51.100.7"
# IPv6 on the internet side only, from the documentation range: the client and the
# gateway's public address. The tunnel stays IPv4, as Tailscale's is used here; nginx
# tells home the IPv6 client in a PROXY TCP6 header.
CLIENT_IP6, PUBLIC_IP6 = "2001:db8:100::7", "2001:db8:113::10"
# Outside the example stack's admin CIDRs (198.51.100.0/24), which the gateway never bans.
ATTACKER_IP = "203.0.113.50"
PUBLIC_IP = "203.0.113.10"
GATEWAY_UNDERLAY, HOME_UNDERLAY = "192.0.2.1", "192.0.2.2"
HOME_SPOOF_UNDERLAY, SPOOF_UNDERLAY = "192.0.2.5", "192.0.2.6"
# The stand-in for the smart relay, reached from home over the (simulated) internet.
HOME_RELAY_UNDERLAY, RELAY_IP = "192.0.2.9", "192.0.2.25"
GATEWAY_RELAY_UNDERLAY = "192.0.2.13"  # the gateway's side of its own link to the relay
# The ACME CA on the internet, and home's side of its link there (the acme client's API calls).
ACME_CA_IP, HOME_ACME_UNDERLAY = "198.51.100.30", "192.0.2.17"
DNS_IP = "198.51.100.53"  # the doctor's resolver, authoritative for every zone it asks
GATEWAY_TAILNET, HOME_TAILNET, SPOOF_TAILNET = "100.64.0.1", "100.64.0.2", "100.64.0.3"
HOME_TUNNEL = "tailscale0"  # the name tailscaled gives its interface, which its rules match
# Docker's bridge for Mailcow (its compose network is called br-mailcow) and the one
# container address both Postfix and Dovecot stand behind in the lab.
BRIDGE, BRIDGE_IP, CONTAINER_IP, CONTAINER_SUBNET = "br-mailcow", "198.51.100.65", "198.51.100.66", "198.51.100.64/29"
WG_PORT = 51820

MAIL_USER, MAIL_PASSWORD = "user@example.com", "lab-password"
MAIL_UID = 5000

# The IMAP idle check. nginx's own proxy_timeout when none is set is 600 s: a session
# must outlast it. `lab up --imap-timeout T` takes T from SHORT_IMAP_TIMEOUT; `check` then
# has one session idle T - SHORT_IDLE_MARGIN (must answer) and one T + SHORT_CUT_MARGIN
# (must be cut): slack for login and scheduling on a shared machine.
NGINX_DEFAULT_PROXY_TIMEOUT = 600
DEFAULT_IMAP_IDLE = NGINX_DEFAULT_PROXY_TIMEOUT + 10
SHORT_IDLE_MARGIN, SHORT_CUT_MARGIN = 2, 4
SHORT_IMAP_TIMEOUT = range(5, 121)
