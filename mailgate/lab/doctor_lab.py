"""`lab doctor`: `python -m mailgate doctor` against a running lab, from the internet side
(mglab-inet, 198.51.100.7, to the public address 203.0.113.10), and the breakages that
must each turn one of its checks to FAIL.

What `prepare` adds to a lab that is up (`lab down` removes it with everything else):
- the public DNS (doctor_dns.py): nsd in mglab-dns with the records mailgate renders;
- one key and a certificate for every name of settings.certificate_names, from the lab
  CA, valid HEALTHY_DAYS, in Postfix and Dovecot (the doctor gets the CA as --ca-file,
  which stands in for the public CA store);
- a DKIM key for Mailcow (its public half in the zone and in the `docker` stand-in's
  Redis hashes) and one for the relay;
- the `docker` stand-in at home (docker_shim.py), first on the PATH --home-exec gives;
  everything else the doctor runs on the hosts is real (iptables at home, python3 at the
  gateway); the relay's login is checked from outside against the lab relay;
- the stack file with the lab's home tailnet address, and the stack outputs as JSON.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mailgate import catalogue
from mailgate.doctor import report
from mailgate.lab import (
    CONTAINER_IP, DNS_IP, GATEWAY, GATEWAY_TAILNET, HOME, HOME_TAILNET, INET, NAMESPACES, PUBLIC_IP, STATE,
)
from mailgate.lab import doctor_dns, system, topology
from mailgate.lab.daemons import (
    DOVECOT_LOG, POSTFIX_DIR, POSTFIX_LOG, RELAY_CA, install_tls, issue_certificate,
)
from mailgate.lab.doctor_dns import LabValues
from mailgate.lab.system import LabError, alive, recorded_pids, wait_for
from mailgate.names import gateway_machine_name
from mailgate.renderers.dns import DKIM_SELECTOR
from mailgate.settings import Settings

REPO = Path(__file__).resolve().parent.parent.parent
DOCTOR_DIR = STATE / "doctor"
BIN, REDIS_BIN = DOCTOR_DIR / "bin", DOCTOR_DIR / "redis-bin"
SHIM = Path(__file__).resolve().parent / "docker_shim.py"
SHIM_CONFIG, VALUES, OUTPUTS = DOCTOR_DIR / "docker.json", DOCTOR_DIR / "values.json", DOCTOR_DIR / "outputs.json"
CERTS, KEYS = DOCTOR_DIR / "certs", DOCTOR_DIR / "keys"
HOME_PATH = f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
HEALTHY_DAYS = 90  # as Let's Encrypt issues them; the doctor warns under 14 days left
EXPIRING_DAYS = 2  # the doctor fails under 3
OTHER_NAME = "mail.example.net"  # a certificate for this name serves none of the stack's
ELSEWHERE = "mx.example.net."
REDIS_PASSWORD = "lab-redis-password"
RELAY_CODE = "0mailgate0lab0verification0code0"  # Brevo's brevo-code:<32 characters>
LAB_INSTANCE = "ocid1.instance.oc1..mailgatelab"
RUN_TIMEOUT = 150  # beyond the doctor's own bound on a run (mailgate.doctor.run.OVERALL_TIMEOUT)
PROGRAMS = ("nsd", "nsd-checkconf")  # scripts/setup.sh --dev installs them (with the ACME lab's)


def prepared() -> bool:
    nsd = recorded_pids().get("doctor-nsd")
    return OUTPUTS.exists() and nsd is not None and alive(nsd)


def prepare(settings: Settings, config: Path) -> None:
    """Everything the doctor needs on a lab that is up (`settings`: lab.lab_settings of
    the stack in `config`)."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        raise LabError(f"missing programs: {', '.join(missing)} (run bash scripts/setup.sh --dev as root)")
    missing = set(NAMESPACES) - set(topology.existing_namespaces())
    if missing:
        raise LabError(f"the lab is not up ({', '.join(sorted(missing))} missing); run `lab up` first")
    if DOCTOR_DIR.exists():
        raise LabError(f"{DOCTOR_DIR} exists: the doctor's lab is prepared already (lab down, up, again)")
    for directory in (DOCTOR_DIR, BIN, REDIS_BIN, KEYS):
        directory.mkdir(parents=True, exist_ok=True)
    values = LabValues(mailcow_dkim=_dkim_key("mailcow"), relay_dkim=_dkim_key("relay"), relay_code=RELAY_CODE)
    VALUES.write_text(json.dumps(values.__dict__))
    _stack_file(settings, config)
    OUTPUTS.write_text(json.dumps({
        "public_ipv4": PUBLIC_IP, "gateway_tailnet_ip": GATEWAY_TAILNET,
        "gateway_machine_name": gateway_machine_name(settings.names.gateway_machine_prefix, LAB_INSTANCE)}))
    _install_shim(settings, values)
    doctor_dns.start(settings, values)
    install(settings, certificate(settings, "healthy"))


def _values() -> LabValues:
    return LabValues(**json.loads(VALUES.read_text()))


def stack_file(settings: Settings) -> Path:
    return DOCTOR_DIR / f"Pulumi.{settings.names.stack}.yaml"


def _stack_file(settings: Settings, config: Path) -> None:
    """The stack as the user wrote it, with the lab's home tailnet address (lab_settings)."""
    document = yaml.safe_load(config.read_text())
    document["config"].setdefault("mailgate:home", {})["tailnetIp"] = HOME_TAILNET
    stack_file(settings).write_text(yaml.safe_dump(document, sort_keys=False))


def _dkim_key(name: str) -> str:
    """A new RSA key; its public half base64 without PEM armour, as Mailcow stores and shows it."""
    key = KEYS / f"{name}-dkim.key"
    system.run(["openssl", "genrsa", "-out", str(key), "2048"])
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    return base64.b64encode(der).decode()


def _install_shim(settings: Settings, values: LabValues) -> None:
    SHIM_CONFIG.write_text(json.dumps({
        "mailcow_dir": settings.home.mailcow_dir,
        "logs": {"postfix-mailcow": str(POSTFIX_LOG), "dovecot-mailcow": str(DOVECOT_LOG)},
        "postfix_dir": str(POSTFIX_DIR),
        "redis_bin": str(REDIS_BIN),
        "redis_password": REDIS_PASSWORD,
        "redis": {"DKIM_PUB_KEYS": {settings.domain: values.mailcow_dkim},
                  "DKIM_SELECTORS": {settings.domain: DKIM_SELECTOR}},
    }, indent=1))
    for directory, program in ((BIN, "docker"), (REDIS_BIN, "redis-cli")):
        wrapper = directory / program
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(SHIM))} "
                           f"{shlex.quote(str(SHIM_CONFIG))} {program} \"$@\"\n")
        wrapper.chmod(0o755)


def certificate(settings: Settings, kind: str) -> Path:
    """The directory of one of the lab's certificates for Mailcow (made on first use):
    healthy, other-name or expiring."""
    directory = CERTS / kind
    if not (directory / "cert.pem").exists():
        names = {"healthy": settings.certificate_names, "expiring": settings.certificate_names,
                 "other-name": [OTHER_NAME]}[kind]
        days = EXPIRING_DAYS if kind == "expiring" else HEALTHY_DAYS
        issue_certificate(names[0], directory, days=days, other_names=tuple(names[1:]))
    return directory


def _fingerprint(pem: str) -> str:
    return system.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], stdin=pem).stdout.strip()


def _starttls(service: catalogue.Service) -> list[str]:
    return [] if service.implicit_tls else ["-starttls", service.protocol]


def install(settings: Settings, directory: Path) -> None:
    """A certificate into Postfix and Dovecot, waiting until every TLS port at home serves it."""
    pem = (directory / "cert.pem").read_text()
    install_tls(pem, (directory / "key.pem").read_text())
    wanted = _fingerprint(pem)
    for service in settings.enabled_services:
        if not service.proxy_protocol:
            continue
        probe = ["openssl", "s_client", "-connect", f"{CONTAINER_IP}:{service.public_port}", *_starttls(service)]

        def served() -> bool:
            answer = system.run(probe, HOME, check=False, stdin="", timeout=10).stdout
            chain = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", answer, re.S)
            return bool(chain) and _fingerprint(chain[0]) == wanted

        wait_for(served, f"the new certificate on {service.name} ({service.public_port})", timeout=15, interval=0.2)


def run_doctor(settings: Settings, extra_args: tuple[str, ...] = ()) -> tuple[int, dict, float]:
    """The doctor from the internet side: exit status, its --json answer, seconds taken."""
    if not prepared():
        raise LabError("the doctor's lab is not prepared (run `lab doctor` on a lab just up)")
    argv = ["ip", "netns", "exec", INET, sys.executable, "-m", "mailgate", "doctor",
            "--config", str(stack_file(settings)), "--outputs", str(OUTPUTS), "--resolver", DNS_IP,
            "--ca-file", str(RELAY_CA), "--ssh",
            "--home-exec", f"ip netns exec {HOME} env PATH={HOME_PATH}",
            "--gateway-exec", f"ip netns exec {GATEWAY}", "--json", *extra_args]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    seconds = time.monotonic() - started
    try:
        answer = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise LabError(f"the doctor printed no JSON (exit {result.returncode}): "
                       f"{(result.stderr or result.stdout).strip()[-500:]}") from None
    return result.returncode, answer, seconds


def run(settings: Settings, extra_args: tuple[str, ...] = ()) -> tuple[int, dict]:
    status, answer, _ = run_doctor(settings, extra_args)
    return status, answer


def table(answer: dict) -> str:
    """The doctor's --json answer as the doctor's own table."""
    return report.as_table([report.Finding(**check) for check in answer.get("checks", [])])