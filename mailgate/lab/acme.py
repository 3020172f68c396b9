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
  the watchers get the relay's name.
- Mailcow's acme container and nginx: acme-tiny writes its challenges into a directory
  that acme_web.py serves on port 80, logging every request (client, path, status, user
  agent); the issued chain is installed into the lab's Postfix and Dovecot (their TLS
  dir) and both reloaded, as the acme container does after a renewal.
Only `start` (after `lab up`) makes any of it; `lab down` removes it with everything else.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mailgate import catalogue
from mailgate.lab import (
    ACME_CA, ACME_CA_IP, GATEWAY_TAILNET, HOME, HOME_UNDERLAY, INET, MAILCOW, NAMESPACES, PUBLIC_IP, STATE,
)
from mailgate.lab import topology
from mailgate.lab.daemons import (
    GATEWAY_DIR, HOME_DIR, POSTFIX_DIR, RELAY_CA, TLS, issue_certificate,
)
from mailgate.lab.checks import probe
from mailgate.lab.result import Result
from mailgate.lab.system import LabError, recorded_pids, run, spawn, wait_for
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
# The gateway's http access log (NginxRuntime.http_access_log in daemons.start_gateway).
GATEWAY_HTTP_LOG = GATEWAY_DIR / "http-access.log"
# acme-tiny's urlopen calls have no timeout of their own, so the whole run gets one.
ISSUE_TIMEOUT = 60
CHALLENGE_PATH = catalogue.ACME_CHALLENGE_PATH
CLIENT_AGENT = "acme-tiny"  # the User-Agent of acme-tiny's own requests, its self-check included
# The gateway's log_format mailgate_http (templates/nginx-http.conf.j2):
# address:port "host" "request" status upstream=address time=seconds
ACCESS_LINE = re.compile(r'^(?P<client>[^\s:]+):\d+ "(?P<host>[^"]*)" "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
                         r'(?P<status>\d{3}) upstream=(?P<upstream>\S+)')
# Paths outside the challenge directory, which the gateway answers itself; the last two
# start with it, but nginx normalises them to /admin before it picks a location.
OTHER_PATHS = ("/", "/admin", "/.well-known/other", "/.well-known/acme-challenge",
               "/.well-known/acme-challenge/../../admin", "/.well-known/acme-challenge/%2e%2e/%2e%2e/admin")
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


def _lines(path: Path, offset: int) -> list[str]:
    return path.read_bytes()[offset:].decode(errors="replace").splitlines() if path.exists() else []


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _gateway_requests(offset: int) -> list[dict[str, str]]:
    return [match.groupdict() for match in map(ACCESS_LINE.match, _lines(GATEWAY_HTTP_LOG, offset)) if match]


def _home_requests(offset: int) -> list[dict[str, str]]:
    """acme_web.py's lines: client method path status user-agent."""
    requests = []
    for line in _lines(WEB_LOG, offset):
        client, method, path, status, agent = (line.split(" ", 4) + [""] * 5)[:5]
        requests.append({"client": client, "method": method, "path": path, "status": status, "agent": agent})
    return requests


def _chain_verifies(settings: Settings) -> tuple[bool, str]:
    """The issued chain verifies against pebble's root for mailHostname (openssl's own check)."""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", CHAIN.read_text(), re.S)
    if not blocks:
        return False, "no certificate in the chain"
    leaf, intermediates = CLIENT_DIR / "leaf.pem", CLIENT_DIR / "intermediates.pem"
    leaf.write_text(blocks[0])
    intermediates.write_text("".join(blocks[1:]))
    answer = run(["openssl", "verify", "-CAfile", str(ROOT), "-untrusted", str(intermediates),
                  "-verify_hostname", settings.mail_hostname, str(leaf)], check=False)
    issuer = run(["openssl", "x509", "-noout", "-issuer", "-in", str(leaf)], check=False).stdout.strip()
    return answer.returncode == 0, f"{(answer.stdout + answer.stderr).strip()[-120:]}; {issuer}"


def issued_through_the_gateway(settings: Settings) -> list[Result]:
    """acme-tiny gets a certificate for mailHostname; the CA's validation request for the
    token crossed the gateway's port 80 (its http log, from the CA's address) and the
    tunnel (home's web log, from the gateway's tailnet address)."""
    gateway_offset, home_offset = _size(GATEWAY_HTTP_LOG), _size(WEB_LOG)
    issuance = issue(settings)
    root = fetch_root() if issuance.issued else ""
    verifies, chain = _chain_verifies(settings) if root else (False, "no chain")
    at_gateway = [r for r in _gateway_requests(gateway_offset) if r["path"].startswith(CHALLENGE_PATH)]
    validations = [r for r in at_gateway if r["client"] == ACME_CA_IP and r["status"] == "200"]
    tokens = {r["path"] for r in validations}
    at_home = [r for r in _home_requests(home_offset) if r["path"] in tokens]
    from_ca = [r for r in at_home if r["client"] == GATEWAY_TAILNET and r["status"] == "200"
               and not r["agent"].startswith(CLIENT_AGENT)]
    self_checks = [r for r in at_gateway if r["client"] == HOME_UNDERLAY]
    return [
        Result(f"acme-tiny gets a certificate for {settings.mail_hostname} that verifies against pebble's root",
               issuance.issued and verifies,
               f"exit {issuance.returncode} after {issuance.seconds:.1f} s ({issuance.last_words()}); {chain}"),
        Result(f"pebble's validation request for the token arrived at {PUBLIC_IP}:80 from the CA ({ACME_CA_IP})",
               bool(validations),
               f"gateway http log: {[(r['client'], r['path'][-12:], r['status'], r['upstream']) for r in at_gateway]}"
               f" (acme-tiny's self-check from {HOME_UNDERLAY}: {len(self_checks)})"),
        Result(f"and reached home's web server from the gateway's tailnet address {GATEWAY_TAILNET}",
               bool(from_ca) and len(from_ca) == len(validations),
               f"home's web log for those tokens: {[(r['client'], r['status'], r['agent'][:30]) for r in at_home]}"),
    ]


def install_certificate() -> None:
    """The issued chain and its key into the lab's Postfix and Dovecot, both reloaded."""
    (TLS / "cert.pem").write_text(CHAIN.read_text())
    (TLS / "key.pem").write_text(DOMAIN_KEY.read_text())
    run(["postfix", "-c", str(POSTFIX_DIR), "reload"], MAILCOW)
    dovecot = recorded_pids().get("dovecot")
    if dovecot is None:
        raise LabError("Dovecot is not running")
    os.kill(dovecot, signal.SIGHUP)


# Implicit TLS on 993 and 465, STARTTLS on 587 and 25 (probe.verified).
TLS_PORTS = (993, 465, 587, 25)


def certificate_serves_mail(settings: Settings) -> list[Result]:
    """After installation, each TLS port at the gateway's public address presents the
    certificate, verified against pebble's root alone with the host name checked. Before
    it, the lab's self-signed certificate must fail the same probe (so the probe checks)."""
    def answers() -> dict[int, dict]:
        return {port: probe(INET, "verified", PUBLIC_IP, port, ROOT, settings.mail_hostname) for port in TLS_PORTS}

    if not CHAIN.exists() or not ROOT.exists():
        return [Result("the issued certificate verifies on the TLS ports", False, "no certificate was issued")]
    before = answers()
    install_certificate()
    after: dict[int, dict] = {}
    deadline = time.monotonic() + 10  # Dovecot's and Postfix's new processes pick it up
    while time.monotonic() < deadline:
        after = answers()
        if all(answer.get("verified") for answer in after.values()):
            break
        time.sleep(0.5)
    return [Result(f"the issued certificate verifies on {port} through the gateway "
                   f"({'implicit TLS' if port in (465, 993) else 'STARTTLS'}, host name {settings.mail_hostname})",
                   after[port].get("verified") is True and before[port].get("verified") is False,
                   f"after: {after[port].get('issuer') or after[port].get('error')}; "
                   f"before (the lab's self-signed one): {before[port].get('error', 'verified').split('verify failed: ')[-1][:60]}")
            for port in TLS_PORTS]


def other_paths_stay_at_the_gateway(settings: Settings) -> list[Result]:
    """Port 80 passes home only the challenge directory: other paths get the gateway's own
    answer and leave no line at home, while a challenge path sent last does reach home
    (so a dead path home cannot pass for a closed one). 443 is closed without web."""
    offset = _size(WEB_LOG)
    answers = {path: probe(INET, "http_get", PUBLIC_IP, 80, path, settings.mail_hostname) for path in OTHER_PATHS}
    control = f"{CHALLENGE_PATH}lab-{uuid.uuid4().hex[:12]}"
    control_answer = probe(INET, "http_get", PUBLIC_IP, 80, control, settings.mail_hostname)
    seen: list[dict[str, str]] = []
    for _ in range(20):
        seen = _home_requests(offset)
        if any(r["path"] == control for r in seen):
            break
        time.sleep(0.1)
    leaked = [r["path"] for r in seen if r["path"] != control]
    results = [Result(f"GET {path} on port 80 is answered by the gateway and never reaches home",
                      answers[path].get("status") is not None and path not in leaked,
                      f"gateway answered {answers[path]}; home's web log: {[r['path'] for r in seen]}")
               for path in OTHER_PATHS]
    results.append(Result("a challenge path on port 80 does reach home (from the gateway's tailnet address)",
                          any(r["path"] == control and r["client"] == GATEWAY_TAILNET for r in seen),
                          f"answer {control_answer}; home saw {[(r['client'], r['status']) for r in seen if r['path'] == control]}"))
    if not settings.web.enabled:
        https = probe(INET, "connect", PUBLIC_IP, 443)
        results.append(Result(f"port 443 at {PUBLIC_IP} is closed with web forwarding off",
                              https.get("result") in ("refused", "TimeoutError"), f"connect: {https}"))
    return results


def issuance_fails_without_port_80(settings: Settings) -> list[Result]:
    """With no port 80 at the gateway (acme.method none), the CA's validation cannot
    connect and acme-tiny fails. It runs without its self-check, which would give up
    before asking the CA: this way the CA itself tries the gateway and says what it found."""
    home_offset = _size(WEB_LOG)
    port_80 = probe(INET, "connect", PUBLIC_IP, 80)
    issuance = issue(settings, self_check=False)
    reached_home = [r for r in _home_requests(home_offset) if r["path"].startswith(CHALLENGE_PATH)]
    refused = "connection refused" in issuance.last_words().lower()
    return [
        Result(f"no port 80 at {PUBLIC_IP}", port_80.get("result") in ("refused", "TimeoutError"),
               f"connect: {port_80}"),
        Result("issuance fails: pebble's validation cannot connect, acme-tiny exits non-zero",
               issuance.returncode not in (0, -1) and not issuance.issued and refused and not reached_home,
               f"exit {issuance.returncode} after {issuance.seconds:.1f} s: {issuance.last_words()}; "
               f"home's web log: {reached_home}"),
    ]


def run_checks(settings: Settings) -> list[Result]:
    """`lab acme`, on a lab just brought up with the same stack: with port 80 at the
    gateway, the certificate is issued through it, serves mail, and nothing else on port 80
    reaches home; without it, issuance fails."""
    missing = set(NAMESPACES) - set(topology.existing_namespaces())
    if missing:
        raise LabError(f"the lab is not up ({', '.join(sorted(missing))} missing); run `lab up` first")
    if "pebble" in recorded_pids():
        # The last run's certificate is installed, which the TLS check must not find there.
        raise LabError("the ACME checks already ran on this lab; run `lab up` again first")
    start(settings)
    if catalogue.HTTP_SERVICE not in settings.enabled_services:
        return issuance_fails_without_port_80(settings)
    return (issued_through_the_gateway(settings) + certificate_serves_mail(settings)
            + other_paths_stay_at_the_gateway(settings))
