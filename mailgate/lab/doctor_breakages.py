"""What `lab doctor`'s tests break, one at a time, on a running lab prepared for the
doctor (doctor_lab.prepare). Each is a context manager: the lab is broken inside the
`with` and healthy again after it, so one lab serves every breakage.

    with BREAKAGES["mx-elsewhere"](settings):
        status, answer = doctor_lab.run(settings)
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from mailgate import catalogue
from mailgate.lab import GATEWAY, MAILCOW, PUBLIC_IP, topology
from mailgate.lab import doctor_dns, doctor_lab
from mailgate.lab.daemons import LAB_RELAY_PASSWORD, NGINX_CONF, POSTFIX_DIR
from mailgate.lab.doctor_dns import Record
from mailgate.lab.system import LabError, recorded_pids, run, wait_for
from mailgate.renderers.mailcow import RELAY_PASSWORD_MAP, render_relay_password_map
from mailgate.settings import Settings

OUTSIDE_NETWORK = "198.51.100.0/24"  # the internet side's network, where the doctor stands
TABLE = "mglab_doctor"


@contextlib.contextmanager
def _zone(settings: Settings, edit):
    values = doctor_lab._values()
    doctor_dns.serve(settings, values, edit)
    try:
        yield
    finally:
        doctor_dns.serve(settings, values)


def mx_elsewhere(settings: Settings):
    """The domain's MX names another host."""
    return _zone(settings, lambda records: [
        Record(r.name, r.type, f"10 {doctor_lab.ELSEWHERE}") if r.type == "MX" else r for r in records])


def second_spf(settings: Settings):
    """A second SPF record beside mailgate's (receivers then treat SPF as a permanent error)."""
    return _zone(settings, lambda records: [*records, Record(settings.domain, "TXT", "v=spf1 mx ~all")])


@contextlib.contextmanager
def _certificate(settings: Settings, kind: str):
    doctor_lab.install(settings, doctor_lab.certificate(settings, kind))
    try:
        yield
    finally:
        doctor_lab.install(settings, doctor_lab.certificate(settings, "healthy"))


def certificate_for_another_name(settings: Settings):
    """Postfix and Dovecot serve a certificate for mail.example.net only."""
    return _certificate(settings, "other-name")


def certificate_expiring(settings: Settings):
    """Postfix and Dovecot serve a certificate with 2 days left."""
    return _certificate(settings, "expiring")


@contextlib.contextmanager
def submission_dropped(settings: Settings):
    """The gateway drops every packet to port 587 (a firewall in front of nginx)."""
    port = catalogue.BY_NAME["submission"].public_port
    run(["nft", "-f", "-"], GATEWAY, stdin=(
        f"table inet {TABLE} {{\n chain input {{\n  type filter hook input priority -10;\n"
        f"  ip daddr {PUBLIC_IP} tcp dport {port} drop\n }}\n}}\n"))
    try:
        yield
    finally:
        run(["nft", "delete", "table", "inet", TABLE], GATEWAY)


@contextlib.contextmanager
def tunnel_down(settings: Settings):
    """Home's end of the tunnel is down (the Mini PC off the tailnet)."""
    topology.set_home_tunnel(False)
    try:
        yield
    finally:
        topology.set_home_tunnel(True)
        # Home's keepalive (every second) reaching the gateway again: the tunnel carries.
        received = _received_at_gateway()
        wait_for(lambda: _received_at_gateway() > received, "home's keepalive at the gateway", timeout=15)


def _received_at_gateway() -> int:
    output = run(["wg", "show", topology.TUNNELS[GATEWAY][0], "transfer"], GATEWAY).stdout
    return sum(int(line.split()[1]) for line in output.splitlines() if line.strip())


def _without_proxy_protocol(text: str, port: int) -> str:
    server = re.compile(rf"(server \{{\s*listen {re.escape(PUBLIC_IP)}:{port} [^}}]*?)\n\s*proxy_protocol on;")
    edited, count = server.subn(r"\1", text)
    if count != 1:
        raise LabError(f"no stream server for port {port} with proxy_protocol in {NGINX_CONF}")
    return edited


def _reload_nginx(text: str) -> None:
    """A new nginx.conf, reloaded; returns when every old worker is gone."""
    master = recorded_pids()["nginx"]
    old = set(_children(master))
    NGINX_CONF.write_text(text)
    run(["nginx", "-c", str(NGINX_CONF), "-s", "reload"], GATEWAY)
    wait_for(lambda: (now := set(_children(master))) and not now & old, "nginx's new workers", timeout=15)


@contextlib.contextmanager
def nginx_without_proxy_protocol(settings: Settings):
    """nginx passes port 25 home without the PROXY header (Postfix's twin then reads the
    client's first line as a broken header)."""
    original = NGINX_CONF.read_text()
    _reload_nginx(_without_proxy_protocol(original, catalogue.BY_NAME["smtp"].public_port))
    try:
        yield
    finally:
        _reload_nginx(original)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _reload_postfix() -> None:
    """`postfix reload`; returns when every process the old configuration started is gone."""
    master = recorded_pids()["postfix-master"]
    old = set(_children(master))
    run(["postfix", "-c", str(POSTFIX_DIR), "reload"], MAILCOW)
    wait_for(lambda: not set(_children(master)) & old, "Postfix's reload", timeout=15)


@contextlib.contextmanager
def open_relay(settings: Settings):
    """Postfix trusts the whole internet-side network (mynetworks), so it relays for the doctor."""
    original = run(["postconf", "-c", str(POSTFIX_DIR), "-h", "mynetworks"]).stdout.strip()
    run(["postconf", "-c", str(POSTFIX_DIR), "-e", f"mynetworks = {original} {OUTSIDE_NETWORK}"])
    _reload_postfix()
    try:
        yield
    finally:
        run(["postconf", "-c", str(POSTFIX_DIR), "-e", f"mynetworks = {original}"])
        _reload_postfix()


@contextlib.contextmanager
def wrong_relay_password(settings: Settings):
    """Home's relay password map holds a key the relay does not know (a revoked Brevo key)."""
    passwords = POSTFIX_DIR / RELAY_PASSWORD_MAP
    passwords.write_text(render_relay_password_map(settings, f"revoked-{LAB_RELAY_PASSWORD}"))
    try:
        yield
    finally:
        passwords.write_text(render_relay_password_map(settings, LAB_RELAY_PASSWORD))


BREAKAGES = {
    "mx-elsewhere": mx_elsewhere,
    "second-spf": second_spf,
    "certificate-other-name": certificate_for_another_name,
    "certificate-expiring": certificate_expiring,
    "submission-dropped": submission_dropped,
    "tunnel-down": tunnel_down,
    "nginx-without-proxy-protocol": nginx_without_proxy_protocol,
    "open-relay": open_relay,
    "wrong-relay-password": wrong_relay_password,
}
