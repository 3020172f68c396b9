"""The lab's daemons, configured from mailgate's rendered files.

What the lab substitutes, and why (nothing else is changed):
- nginx: the runtime paths (pid, logs, user) and the listen address (the gateway
  namespace's public address), via NginxRuntime; the stream servers are as rendered.
- Postfix extra.cf: Mailcow's container path /opt/postfix/conf becomes the lab's config
  dir, and Mailcow's `proxy:mysql:` SASL map is dropped from the list: the lab has no
  MySQL (and Debian's Postfix no mysql map type). The relay settings stay as rendered.
- Postfix and Dovecot run in one "container" namespace (real Mailcow has one container
  each); Docker's port publication and tailscaled's chains are reproduced on home by
  docker_rules.py and tailnet.py. The home filter is loaded as the home apply loads it.
- Only with `lab up --imap-timeout N`: the IMAP idle-timeout class is rendered as N s
  (through the renderer's `idle_seconds`), so `check` can watch nginx enforce it.
- The tailnet policy snippet is enforced by iptables on home (see tailnet.py), since the
  lab's tunnel is bare WireGuard without Tailscale's packet filter.
- The relay (Brevo's stand-in) has a certificate for settings.relay.host from a CA made
  for the lab; the watchers verify it against that CA (`watch.py --ca-file RELAY_CA`),
  which stands in for the hosts' system CA store. The relay takes two keys for the one
  login (the relay password and the gateway's alert key) and logs every Subject, so a
  check can count the watchers' messages. How the watchers run is in watchers.py.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import sys
from pathlib import Path

from mailgate.catalogue import SERVICES, IdleTimeout
from mailgate.deployment import Deployment
from mailgate.lab import GATEWAY, GATEWAY_TAILNET, HOME, INET, MAILCOW, RELAY, RELAY_IP, MAIL_PASSWORD, MAIL_UID, MAIL_USER, PUBLIC_IP, PUBLIC_IP6, STATE
from mailgate.lab import docker_rules
from mailgate.lab.system import LabError, record_pid, recorded_pids, run, spawn, stop, wait_for
from mailgate.renderers import render_template
from mailgate.renderers.cloud_init import GATEWAY_INPUT_CHAIN
from mailgate.renderers.firewall import render_gateway_firewall, render_home_firewall
from mailgate.renderers.mailcow import (
    MAILCOW_SASL_MAP, POSTFIX_CONTAINER_CONF, RELAY_PASSWORD_MAP, render_dovecot_extra, render_postfix_extra,
    render_relay_password_map,
)
from mailgate.renderers.nginx import NginxRuntime, render_nginx_conf
from mailgate.settings import Settings

HOME_DIR, GATEWAY_DIR = STATE / "home", STATE / "gw"
TLS, MAIL_DIR = HOME_DIR / "tls", HOME_DIR / "mail"
POSTFIX_DIR, DOVECOT_DIR = HOME_DIR / "postfix", HOME_DIR / "dovecot"
POSTFIX_LOG, DOVECOT_LOG = HOME_DIR / "postfix.log", DOVECOT_DIR / "dovecot.log"
NGINX_CONF = GATEWAY_DIR / "nginx.conf"
IMAP_TIMEOUT = GATEWAY_DIR / "imap-timeout"  # the IMAP proxy_timeout rendered for nginx (before any nginx_edit)
RELAY_DIR = STATE / "relay"
RELAY_LOG = RELAY_DIR / "postfix.log"
RELAY_TLS = RELAY_DIR / "tls"
RELAY_CA = RELAY_TLS / "ca.pem"  # the lab CA: the relay's and the ban list's certificates
CA_KEY = RELAY_TLS / "ca.key"
HOSTS = STATE / "hosts"
SENDER_DIR = STATE / "inet" / "postfix"
SENDER_LOG = STATE / "inet" / "postfix.log"
LAB_RELAY_PASSWORD = "lab-relay-password"
LAB_ALERTS_RELAY_PASSWORD = "lab-gateway-alert-key"  # the secret mailgate:alertsRelayPassword
# The lab CA outlives any certificate it signs: the doctor's checks count a leaf's days.
CA_DAYS = 365


def make_tls() -> None:
    TLS.mkdir(parents=True, exist_ok=True)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=mail.example.com", "-keyout", str(TLS / "key.pem"), "-out", str(TLS / "cert.pem")])


def make_relay_tls(relay_host: str) -> None:
    """A CA for the lab and, signed by it, a certificate for the relay's host name."""
    RELAY_TLS.mkdir(parents=True)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(CA_DAYS),
         "-subj", "/CN=mailgate lab CA", "-keyout", str(CA_KEY), "-out", str(RELAY_CA),
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    issue_certificate(relay_host, RELAY_TLS)


def _san(name: str) -> str:
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        return f"DNS:{name}"


def issue_certificate(host: str, directory: Path, days: int = 2, other_names: tuple[str, ...] = ()) -> None:
    """key.pem and cert.pem in `directory`: a certificate for `host` and `other_names`
    (SANs; names, or an address such as the ACME CA's) valid `days` days, signed by the lab
    CA, as a client that verifies (Python's ssl, strict X.509 checks included) requires."""
    directory.mkdir(parents=True, exist_ok=True)
    san = ",".join(_san(name) for name in (host, *other_names))
    key, request = directory / "key.pem", directory / "cert.csr"
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
         "-keyout", str(key), "-out", str(request)])
    extensions = directory / "extensions.cnf"
    extensions.write_text(f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
                          "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                          "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")
    run(["openssl", "x509", "-req", "-in", str(request), "-CA", str(RELAY_CA), "-CAkey", str(CA_KEY),
         "-CAcreateserial", "-days", str(days), "-extfile", str(extensions), "-out", str(directory / "cert.pem")])


def install_tls(certificate: str, key: str) -> None:
    """A chain and its key into the lab's Postfix and Dovecot (their one TLS dir), both
    reloaded, as Mailcow's acme container does after a renewal. Sessions that start after
    the reload's children are up get the new certificate."""
    (TLS / "cert.pem").write_text(certificate)
    (TLS / "key.pem").write_text(key)
    run(["postfix", "-c", str(POSTFIX_DIR), "reload"], MAILCOW)
    dovecot = recorded_pids().get("dovecot")
    if dovecot is None:
        raise LabError("Dovecot is not running")
    os.kill(dovecot, signal.SIGHUP)


def lab_extra_cf(settings: Settings) -> str:
    text = render_postfix_extra(settings)
    text = text.replace(f"{MAILCOW_SASL_MAP}, ", "")
    return text.replace(POSTFIX_CONTAINER_CONF, str(POSTFIX_DIR))


def load_home_filter(settings: Settings) -> None:
    """The rendered home filter, loaded and hooked as home-apply.sh and the Docker
    drop-in do it (first in raw PREROUTING)."""
    run(["iptables-restore", "--noflush"], HOME,
        stdin=render_home_firewall(settings, Deployment(gateway_tailnet_ip=GATEWAY_TAILNET)))
    chain = settings.names.home_twin_chain
    if run(["iptables", "-t", "raw", "-C", "PREROUTING", "-j", chain], HOME, check=False).returncode:
        run(["iptables", "-t", "raw", "-I", "PREROUTING", "-j", chain], HOME)


def start_home(settings: Settings, home_firewall: bool = True) -> None:
    docker_rules.start(settings)
    if home_firewall:
        load_home_filter(settings)
    MAIL_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MAIL_DIR, MAIL_UID, MAIL_UID)
    _start_postfix(settings)
    _start_dovecot(settings)


def _start_postfix(settings: Settings) -> None:
    POSTFIX_DIR.mkdir(parents=True)
    (POSTFIX_DIR / "data").mkdir()
    (POSTFIX_DIR / "queue").mkdir()
    shutil.chown(POSTFIX_DIR / "data", "postfix")
    main_cf = render_template("lab/main.cf.j2", dir=POSTFIX_DIR, hostname=settings.mail_hostname,
                              domain=settings.domain, mail_dir=MAIL_DIR, uid=MAIL_UID, tls=TLS,
                              log=POSTFIX_LOG, auth_socket=DOVECOT_DIR / "postfix-auth")
    (POSTFIX_DIR / "main.cf").write_text(main_cf + lab_extra_cf(settings))
    (POSTFIX_DIR / "master.cf").write_text(render_template("lab/master.cf.j2"))
    local, domain = MAIL_USER.split("@")
    (POSTFIX_DIR / "vmailbox").write_text(f"{MAIL_USER} {domain}/{local}/\n")
    (POSTFIX_DIR / "transport").write_text("discard.example discard:\n")
    (POSTFIX_DIR / RELAY_PASSWORD_MAP).write_text(
        render_relay_password_map(settings, LAB_RELAY_PASSWORD))
    run(["postfix", "-c", str(POSTFIX_DIR), "check"], MAILCOW)
    # The relay's name resolves through the lab's hosts file (the master and its smtp
    # clients inherit this private mount); there is no DNS in the lab.
    HOSTS.write_text(f"127.0.0.1 localhost\n{RELAY_IP} {settings.relay.host}\n")
    run(["sh", "-c", f"mount --bind {HOSTS} /etc/hosts && exec postfix -c {POSTFIX_DIR} start"], MAILCOW)
    pid_file = POSTFIX_DIR / "queue" / "pid" / "master.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the Postfix master")
    record_pid("postfix-master", int(pid_file.read_text()))


def _start_dovecot(settings: Settings) -> None:
    DOVECOT_DIR.mkdir(parents=True)
    (DOVECOT_DIR / "var-lib").mkdir()
    (DOVECOT_DIR / "extra.conf").write_text(
        render_dovecot_extra(settings, Deployment(gateway_tailnet_ip=GATEWAY_TAILNET)))
    (DOVECOT_DIR / "users").write_text(
        f"{MAIL_USER}:{{PLAIN}}{MAIL_PASSWORD}:{MAIL_UID}:{MAIL_UID}::{MAIL_DIR}::\n")
    imap = (("imap", 143, False, False), ("imaps", 993, True, False),
            ("imap_haproxy", 10143, False, True), ("imaps_haproxy", 10993, True, True))
    conf = DOVECOT_DIR / "dovecot.conf"
    conf.write_text(render_template("lab/dovecot.conf.j2", dir=DOVECOT_DIR, tls=TLS,
                                    mail_dir=MAIL_DIR, imap_listeners=imap))
    # Dovecot always records itself in /var/lib/dovecot/instances: give it the lab's own.
    # Dovecot's login processes hold every idle session: as many files as the machine allows.
    spawn("dovecot", ["sh", "-c", f"ulimit -n $(ulimit -Hn) && mount --bind {DOVECOT_DIR / 'var-lib'} "
                      f"/var/lib/dovecot && exec dovecot -F -c {conf}"], MAILCOW)
    wait_for(lambda: (DOVECOT_DIR / "run" / "master.pid").exists(), "Dovecot", timeout=15)


def start_gateway(settings: Settings, nginx_edit=None, imap_timeout: int | None = None) -> None:
    GATEWAY_DIR.mkdir(parents=True)
    runtime = NginxRuntime(user="root", pid=str(GATEWAY_DIR / "nginx.pid"),
                           error_log=str(GATEWAY_DIR / "error.log"),
                           access_log=str(GATEWAY_DIR / "access.log"),
                           http_access_log=str(GATEWAY_DIR / "http-access.log"),
                           worker_connections=LAB_WORKER_CONNECTIONS, listen_address=PUBLIC_IP, listen_address6=PUBLIC_IP6)
    override = {IdleTimeout.IMAP: imap_timeout} if imap_timeout else None
    text = render_nginx_conf(settings, runtime, idle_seconds=override)
    IMAP_TIMEOUT.write_text(str(imap_timeout or IdleTimeout.IMAP.seconds))
    NGINX_CONF.write_text(nginx_edit(text) if nginx_edit else text)
    start_nginx()
    _gateway_firewall_v6(settings)


def start_nginx() -> None:
    """The gateway's nginx from NGINX_CONF, its master's PID recorded."""
    run(["nginx", "-c", str(NGINX_CONF)], GATEWAY)
    pid_file = GATEWAY_DIR / "nginx.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "nginx")
    record_pid("nginx", int(pid_file.read_text()))


def restart_nginx() -> None:
    """Stop the gateway's nginx and start it again from NGINX_CONF: new listening sockets,
    so a listen option left out is really gone (a reload keeps the old sockets' options)."""
    workers = list(nginx_workers())
    stop(recorded_pids()["nginx"])  # SIGTERM: the master ends its workers, then itself
    for worker in workers:  # any left (a master that had to be killed) would keep the ports
        stop(worker)
    (GATEWAY_DIR / "nginx.pid").unlink(missing_ok=True)
    start_nginx()


def nginx_workers() -> dict[int, dict[str, str]]:
    """The gateway nginx's workers (the master's children): pid -> /proc status fields."""
    master = str(recorded_pids()["nginx"])
    workers = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == master:
            workers[int(status.parent.name)] = fields
    return workers


# Enough for `lab bench` to hold 10,000 idle IMAP sessions (two connections each) over two
# workers, within a file limit of 20,000 (this machine's hard limit, which root here
# cannot raise).
LAB_WORKER_CONNECTIONS = 12000


# The shape of the rules Oracle's Ubuntu images ship for iptables (rules.v4: SSH only, then
# REJECT), written here in IPv6's terms as the base of the gateway's ip6tables. Assumed:
# what those images ship in rules.v6 has not been checked (the README says so where the
# lab departs from a deployment). ICMPv6 stays open, as ICMP does there, or neighbour
# discovery would fail.
ORACLE_SHAPED_BASE_V6 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p ipv6-icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT
-A FORWARD -j REJECT
COMMIT
"""
# Other services of the gateway host, which only its firewall keeps from the internet: a
# listener on every catalogue port that is not forwarded, and on one port of no service.
OTHER_SERVICE_PORT = 8080


def other_gateway_ports(settings: Settings) -> list[int]:
    enabled = {s.public_port for s in settings.enabled_services}
    return sorted({s.public_port for s in SERVICES} - enabled) + [OTHER_SERVICE_PORT]


def _gateway_firewall_v6(settings: Settings) -> None:
    """ip6tables as a gateway has it: the base, cloud-init's jump to MAILGATE-IN first in
    INPUT, and the chain `pulumi up` fills; then the other services it must keep out."""
    run(["ip6tables-restore"], GATEWAY, stdin=ORACLE_SHAPED_BASE_V6)
    run(["ip6tables", "-N", GATEWAY_INPUT_CHAIN], GATEWAY)
    run(["ip6tables", "-I", "INPUT", "1", "-j", GATEWAY_INPUT_CHAIN], GATEWAY)
    run(["ip6tables-restore", "--noflush"], GATEWAY, stdin=render_gateway_firewall(settings, 6))
    ports = ",".join(map(str, other_gateway_ports(settings)))
    spawn("gateway-other-services", [sys.executable, "-m", "mailgate.lab.probe", "serve", PUBLIC_IP6, ports,
                                     "7200"], GATEWAY)


def start_relay(settings: Settings) -> None:
    """The smart relay's stand-in: STARTTLS + SASL (a Dovecot auth service) on 587, with
    a certificate for the relay's name. One login, two keys, as Brevo gives them: Dovecot
    tries its passdbs in order and goes on to the next after a wrong password."""
    make_relay_tls(settings.relay.host)
    auth = RELAY_DIR / "dovecot"
    (auth / "var-lib").mkdir(parents=True)
    passdbs = []
    for name, key in (("relay-password", LAB_RELAY_PASSWORD), ("alerts-relay-password", LAB_ALERTS_RELAY_PASSWORD)):
        (auth / name).write_text(f"{settings.relay.username}:{{PLAIN}}{key}\n")
        passdbs.append(auth / name)
    conf = auth / "dovecot.conf"
    socket_path = auth / "auth-client"
    conf.write_text(render_template("lab/auth-dovecot.conf.j2", dir=auth, instance="mglab-relay-auth",
                                    uid=MAIL_UID, socket=socket_path, passdbs=passdbs))
    spawn("relay-dovecot", ["sh", "-c", f"mount --bind {auth / 'var-lib'} /var/lib/dovecot && "
                            f"exec dovecot -F -c {conf}"], RELAY)
    wait_for(socket_path.exists, "the relay's SASL socket", timeout=15)
    postfix = RELAY_DIR / "postfix"
    for sub in ("queue", "data"):
        (postfix / sub).mkdir(parents=True)
    shutil.chown(postfix / "data", "postfix")
    # Each message's Subject goes to the log (with the client's address), to be counted.
    (postfix / "header_checks").write_text("/^Subject:/ WARN\n")
    (postfix / "main.cf").write_text(render_template(
        "lab/relay-main.cf.j2", dir=postfix, relay_host=settings.relay.host, tls=RELAY_TLS,
        auth_socket=socket_path, log=RELAY_LOG))
    (postfix / "master.cf").write_text(render_template("lab/master.cf.j2"))
    run(["postfix", "-c", str(postfix), "start"], RELAY)
    pid_file = postfix / "queue" / "pid" / "master.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the relay's Postfix")
    record_pid("relay-postfix-master", int(pid_file.read_text()))


def start_sender() -> None:
    """A real MTA on the internet side, to show how a sender sees a home outage."""
    for sub in ("queue", "data"):
        (SENDER_DIR / sub).mkdir(parents=True)
    shutil.chown(SENDER_DIR / "data", "postfix")
    (SENDER_DIR / "main.cf").write_text(render_template(
        "lab/sender-main.cf.j2", dir=SENDER_DIR, gateway=PUBLIC_IP, log=SENDER_LOG))
    (SENDER_DIR / "master.cf").write_text(render_template("lab/master.cf.j2"))
    run(["postfix", "-c", str(SENDER_DIR), "start"], INET)
    pid_file = SENDER_DIR / "queue" / "pid" / "master.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the sender's Postfix")
    record_pid("sender-postfix-master", int(pid_file.read_text()))


def stop_postfix() -> None:
    for directory, namespace in ((POSTFIX_DIR, MAILCOW), (SENDER_DIR, INET), (RELAY_DIR / "postfix", RELAY)):
        if (directory / "main.cf").exists():
            run(["postfix", "-c", str(directory), "stop"], namespace, check=False)


def require_programs() -> None:
    programs = ("nginx", "postfix", "dovecot", "wireguard-go", "wg", "openssl", "iptables",
                "fail2ban-server", "fail2ban-client", "nft")
    missing = [p for p in programs
               if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        raise LabError(f"missing programs: {', '.join(missing)} (run bash scripts/setup.sh as root)")
