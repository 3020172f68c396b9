"""ACME HTTP-01 in the lab: a certificate for mailHostname from a real ACME CA, validated
through the gateway's port 80 and the tunnel, as Let's Encrypt validates Mailcow's.

    mglab-acme 198.51.100.30   pebble (the CA: API on 14000, its root on 15000/roots/0;
                               its validator fetches http://<mailHostname>/... on port 80)
                               and nsd on :53, serving the mail domain's zone
                               (mailHostname A 203.0.113.10), the validator's resolver
    mglab-home                 acme-tiny, the client in Mailcow's acme container, with the
                               CA's API over its own link and nsd as its resolver; its
                               self-check fetches the challenge through the gateway too
    mglab-mailcow :80          acme_web.py, nginx-mailcow's stand-in: the challenge
                               directory, published on home like Mailcow's web port

What the lab substitutes (nothing else):
- Let's Encrypt: pebble, with PEBBLE_VA_NOSLEEP (no random wait before validating),
  PEBBLE_WFE_NONCEREJECT=0 (no nonces refused at random) and PEBBLE_AUTHZREUSE=0 (every
  order is validated afresh, so no check can pass on an earlier one's authorization). Its
  API certificate comes from the lab CA (daemons.py), which acme-tiny trusts through
  SSL_CERT_FILE, as the acme container trusts Let's Encrypt's through its CA store.
- Public DNS: nsd, authoritative for the domain. acme-tiny resolves through it with the
  lab's resolv.conf bind-mounted over /etc/resolv.conf for that one program, the way
  the watchers get the relay's name (not /etc/netns/mglab-home/resolv.conf, which `ip
  netns exec` would mount for every program in home and which lies outside STATE).
- Mailcow's acme container and nginx: acme-tiny writes its challenges into a directory
  that acme_web.py serves on port 80, logging every request (client, path, status, user
  agent); the issued chain is installed into the lab's Postfix and Dovecot (their TLS
  dir) and both reloaded, as the acme container does after a renewal.
Only `start` (after `lab up`) makes any of it; `lab down` removes it with everything else.
The checks are in acme_checks.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mailgate import catalogue
from mailgate.lab import ACME_CA, ACME_CA_IP, HOME, MAILCOW, PUBLIC_IP, STATE
from mailgate.lab.daemons import HOME_DIR, RELAY_CA, install_tls, issue_certificate
from mailgate.lab.system import LabError, run, spawn, wait_for
from mailgate.renderers import render_template
from mailgate.renderers.watch import PYTHON
from mailgate.settings import Settings

CA_DIR = STATE / "acme"
CA_TLS, NSD_DIR = CA_DIR / "tls", CA_DIR / "nsd"
PEBBLE_CONFIG, PEBBLE_LOG = CA_DIR / "pebble.json", STATE / "pebble.out"  # spawn's output file
API_PORT, ROOT_PORT = 14000, 15000
DIRECTORY_URL = f"https://{ACME_CA_IP}:{API_PORT}/dir"
ROOT_URL = f"https://{ACME_CA_IP}:{ROOT_PORT}/roots/0"
PEBBLE_ENV = ("PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")

CLIENT_DIR = HOME_DIR / "acme"  # the acme container's account key, CSR and certificates
ACCOUNT_KEY, DOMAIN_KEY, CSR = CLIENT_DIR / "account.key", CLIENT_DIR / "key.pem", CLIENT_DIR / "cert.csr"
CHAIN, ROOT = CLIENT_DIR / "cert.pem", CLIENT_DIR / "root.pem"
RESOLV = CLIENT_DIR / "resolv.conf"
WEBROOT = CLIENT_DIR / "web"
CHALLENGES = WEBROOT / ".well-known" / "acme-challenge"
WEB_LOG = CLIENT_DIR / "web.log"
WEB_SERVER = Path(__file__).resolve().parent / "acme_web.py"
WEB_PORT = catalogue.HTTP_SERVICE.home_port  # Mailcow's own web port: no PROXY twin
# acme-tiny's urlopen calls have no timeout of their own, so the whole run gets one.
ISSUE_TIMEOUT = 60
CHALLENGE_PATH = catalogue.ACME_CHALLENGE_PATH
PROGRAMS = ("pebble", "nsd", "nsd-checkconf", "acme-tiny")  # scripts/setup.sh installs them


def require_programs() -> None:
    missing = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        raise LabError(f"missing programs: {', '.join(missing)} (run bash scripts/setup.sh as root)")


def start(settings: Settings) -> None:
    """The CA, its DNS and the challenge web server, on a lab that is up."""
    require_programs()
    _start_nsd(settings)
    _start_pebble()
    _start_web()
    RESOLV.write_text(f"nameserver {ACME_CA_IP}\noptions timeout:2 attempts:2\n")


def _start_nsd(settings: Settings) -> None:
    NSD_DIR.mkdir(parents=True)
    conf = NSD_DIR / "nsd.conf"
    conf.write_text(render_template("lab/acme/nsd.conf.j2", address=ACME_CA_IP, dir=NSD_DIR,
                                    domain=settings.domain))
    (NSD_DIR / f"{settings.domain}.zone").write_text(render_template(
        "lab/acme/zone.j2", domain=settings.domain, mail_hostname=settings.mail_hostname,
        dns_address=ACME_CA_IP, public_ip=PUBLIC_IP))
    run(["nsd-checkconf", str(conf)])
    spawn("nsd", ["nsd", "-d", "-c", str(conf)], ACME_CA)
    log = NSD_DIR / "nsd.log"
    wait_for(lambda: log.exists() and "nsd started" in log.read_text(), "nsd", timeout=15)


def _start_pebble() -> None:
    issue_certificate(ACME_CA_IP, CA_TLS)
    PEBBLE_CONFIG.write_text(render_template(
        "lab/acme/pebble.json.j2", address=ACME_CA_IP, api_port=API_PORT, management_port=ROOT_PORT,
        tls=CA_TLS, http_port=catalogue.HTTP_SERVICE.public_port))
    spawn("pebble", ["env", *PEBBLE_ENV, "pebble", "-config", str(PEBBLE_CONFIG),
                     "-dnsserver", f"{ACME_CA_IP}:53"], ACME_CA)
    wait_for(lambda: PEBBLE_LOG.exists() and "Listening on" in PEBBLE_LOG.read_text(), "pebble", timeout=15)


def _start_web() -> None:
    CHALLENGES.mkdir(parents=True)
    spawn("acme-web", [PYTHON, str(WEB_SERVER), "--dir", str(WEBROOT), "--log", str(WEB_LOG),
                       "--port", str(WEB_PORT)], MAILCOW)
    out = STATE / "acme-web.out"
    wait_for(lambda: out.exists() and "serving" in out.read_text(), "the challenge web server", timeout=15)


def _in_home(argv: list[str]) -> list[str]:
    """A program run in home with nsd as its resolver and the lab CA as its trust store,
    in an otherwise empty environment (no proxy variables from the caller)."""
    command = " ".join(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"SSL_CERT_FILE={RELAY_CA}", *argv])
    return ["sh", "-c", f"mount --bind {RESOLV} /etc/resolv.conf && exec {command}"]


@dataclass
class Issuance:
    returncode: int
    said: str
    seconds: float

    @property
    def issued(self) -> bool:
        return self.returncode == 0 and CHAIN.exists() and "BEGIN CERTIFICATE" in CHAIN.read_text()

    def last_words(self) -> str:
        """The CA's reason when acme-tiny quotes one (a failed challenge's detail), else its last line."""
        reason = re.search(r"'detail': '([^']*)'", self.said)
        lines = [line for line in self.said.splitlines() if line.strip()]
        return reason[1][:200] if reason else (lines or ["nothing"])[-1][:200]


def issue(settings: Settings, self_check: bool = True) -> Issuance:
    """One run of acme-tiny for mailHostname, as the acme container runs it. Without
    `self_check` the CA's validator is the first to fetch the challenge."""
    CLIENT_DIR.mkdir(parents=True, exist_ok=True)
    if not ACCOUNT_KEY.exists():
        run(["openssl", "genrsa", "-out", str(ACCOUNT_KEY), "2048"])
    name = settings.mail_hostname
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(DOMAIN_KEY), "-out", str(CSR)])
    CHAIN.unlink(missing_ok=True)
    argv = ["acme-tiny", "--account-key", str(ACCOUNT_KEY), "--csr", str(CSR), "--acme-dir", str(CHALLENGES),
            "--directory-url", DIRECTORY_URL, *([] if self_check else ["--disable-check"])]
    started = time.monotonic()
    try:
        result = run(_in_home(argv), HOME, check=False, timeout=ISSUE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Issuance(-1, f"acme-tiny did not end within {ISSUE_TIMEOUT} s", ISSUE_TIMEOUT)
    if result.returncode == 0:
        CHAIN.write_text(result.stdout)
    return Issuance(result.returncode, result.stderr, time.monotonic() - started)


def fetch_root() -> str:
    """Pebble's root (it makes a new one at every start), fetched from home as a client would."""
    fetch = (f"{PYTHON} -c 'import sys, urllib.request; "
             f"sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' {ROOT_URL}")
    root = run(_in_home([fetch]), HOME).stdout
    ROOT.write_text(root)
    return root


def install_certificate() -> None:
    """The issued chain and its key into the lab's Postfix and Dovecot, both reloaded."""
    install_tls(CHAIN.read_text(), DOMAIN_KEY.read_text())
