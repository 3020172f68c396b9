"""The ACME checks (`lab acme`): what acme.py's CA, client and web server show about the
gateway's port 80, proven from the logs at each hop and from outside.

Each check reads the two logs a request leaves on its way: the gateway's http access log
(its client is who reached the public address) and home's web log (its client is who
reached Mailcow's web port: the gateway's tailnet address, when the request came through
the tunnel).
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from mailgate import catalogue
from mailgate.lab import ACME_CA_IP, GATEWAY_TAILNET, HOME_UNDERLAY, INET, NAMESPACES, PUBLIC_IP
from mailgate.lab import topology
from mailgate.lab.acme import (
    CHAIN, CHALLENGE_PATH, CLIENT_DIR, ROOT, WEB_LOG, fetch_root, install_certificate, issue, start,
)
from mailgate.lab.checks import probe
from mailgate.lab.daemons import GATEWAY_DIR
from mailgate.lab.result import Result
from mailgate.lab.system import LabError, recorded_pids, run
from mailgate.settings import Settings

# The gateway's http access log (NginxRuntime.http_access_log in daemons.start_gateway).
GATEWAY_HTTP_LOG = GATEWAY_DIR / "http-access.log"
CLIENT_AGENT = "acme-tiny"  # the User-Agent of acme-tiny's own requests, its self-check included
# The gateway's log_format mailgate_http (templates/nginx-http.conf.j2):
# address:port "host" "request" status upstream=address time=seconds
ACCESS_LINE = re.compile(r'^(?P<client>[^\s:]+):\d+ "(?P<host>[^"]*)" "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
                         r'(?P<status>\d{3}) upstream=(?P<upstream>\S+)')
# Paths outside the challenge directory, which the gateway answers itself; the last two
# start with it, but nginx normalises them to /admin before it picks a location.
OTHER_PATHS = ("/", "/admin", "/.well-known/other", "/.well-known/acme-challenge",
               "/.well-known/acme-challenge/../../admin", "/.well-known/acme-challenge/%2e%2e/%2e%2e/admin")


OTHER_HOSTS = ("other.example.org", PUBLIC_IP)


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
    # Another path under a name mailgate does not know (or an address): answered at the
    # gateway too (only the challenge path goes home, whatever the name).
    foreign = {host: f"/.well-known/foreign-{uuid.uuid4().hex[:12]}" for host in OTHER_HOSTS}
    foreign_answers = {host: probe(INET, "http_get", PUBLIC_IP, 80, path, host) for host, path in foreign.items()}
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
    results += [Result(f"another path for Host {host} (a name mailgate does not know) never reaches home",
                       foreign_answers[host].get("status") is not None and path not in [r["path"] for r in seen],
                       f"gateway answered {foreign_answers[host]}")
                for host, path in foreign.items()]
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
