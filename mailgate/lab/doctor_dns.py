"""The public DNS of `lab doctor`: nsd in mglab-dns, authoritative for every zone the doctor
asks, so each of its answers is an authoritative one (a name that is not there is NXDOMAIN).

Zones (records from mailgate.renderers.dns.dns_records, each <...> filled with the lab's value):
- settings.domain: as rendered, with Mailcow's DKIM TXT (the lab's key), the relay's
  verification TXT (`brevo-code:`) and the relay's DKIM as Brevo publishes it now, two
  CNAMEs (brevo1/brevo2._domainkey -> b1/b2.<domain with dashes>.dkim.brevo.com);
- the zone of those CNAME targets, answering each with a DKIM TXT (the relay's key);
- settings.relay.host -> the relay's address; settings.relay.spf_include -> an SPF record;
- the reverse zone of the public address: its PTR names mailHostname;
- mailgate.doctor.BLOCKLISTS, each empty: the gateway's address is not listed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.deployment import Deployment
from mailgate.doctor import BLOCKLISTS
from mailgate.lab import DNS, DNS_IP, GATEWAY_TAILNET, INET, PUBLIC_IP, RELAY_IP, STATE
from mailgate.lab.system import LabError, recorded_pids, run, spawn, wait_for
from mailgate.renderers import render_template
from mailgate.renderers.dns import DKIM_SELECTOR, dns_records
from mailgate.settings import Settings

NSD_DIR = STATE / "doctor" / "nsd"
SERIAL = NSD_DIR / "serial"
# Brevo's DKIM for a domain as it publishes it now: two CNAMEs into its own zone.
BREVO_DKIM = (("brevo1", "b1"), ("brevo2", "b2"))
BREVO_DKIM_ZONE = "dkim.brevo.com"


@dataclass(frozen=True)
class Record:
    name: str
    type: str
    value: str


@dataclass(frozen=True)
class LabValues:
    """What a user would copy from Mailcow's and the relay's consoles."""
    mailcow_dkim: str  # base64 of the public key, as Mailcow shows it
    relay_dkim: str
    relay_code: str


def _fill(settings: Settings, record, values: LabValues) -> list[Record]:
    """One rendered record with its placeholders replaced by the lab's values."""
    domain = settings.domain
    if record.name == f"{DKIM_SELECTOR}._domainkey.{domain}" and record.value.startswith("<"):
        return [Record(record.name, "TXT", f"v=DKIM1; k=rsa; p={values.mailcow_dkim}")]
    if record.name == domain and record.type == "TXT" and record.value.startswith("<"):
        return [Record(domain, "TXT", f"brevo-code:{values.relay_code}")]
    if record.name.startswith("<") and "._domainkey." in record.name:
        return [Record(f"{selector}._domainkey.{domain}", "CNAME",
                       f"{label}.{domain.replace('.', '-')}.{BREVO_DKIM_ZONE}.")
                for selector, label in BREVO_DKIM]
    if "<" in record.name or "<" in record.value:
        raise LabError(f"dns_records has a placeholder the lab does not fill: {record}")
    return [Record(record.name, record.type, record.value)]


def zones(settings: Settings, values: LabValues) -> dict[str, list[Record]]:
    """Every zone nsd serves, by name, with its records (SOA and NS are added when written)."""
    deployment = Deployment(gateway_tailnet_ip=GATEWAY_TAILNET, public_ipv4=PUBLIC_IP)
    domain_records = [filled for record in dns_records(settings, deployment)
                      for filled in _fill(settings, record, values)]
    served: dict[str, list[Record]] = {settings.domain: domain_records}
    for record in domain_records:
        if record.type == "CNAME" and not f".{record.value.rstrip('.')}".endswith(f".{settings.domain}"):
            target = record.value.rstrip(".")
            served.setdefault(target.split(".", 1)[1], []).append(
                Record(target, "TXT", f"v=DKIM1; k=rsa; p={values.relay_dkim}"))
    served.setdefault(settings.relay.host, []).append(Record(settings.relay.host, "A", RELAY_IP))
    served.setdefault(settings.relay.spf_include, []).append(
        Record(settings.relay.spf_include, "TXT", f"v=spf1 ip4:{RELAY_IP} ~all"))
    reverse = PUBLIC_IP.split(".")
    served[".".join(reversed(reverse[:3])) + ".in-addr.arpa"] = [
        Record(".".join(reversed(reverse)) + ".in-addr.arpa", "PTR", f"{settings.mail_hostname}.")]
    for blocklist in BLOCKLISTS:
        served.setdefault(blocklist, [])
    return served


def _value(record: Record) -> str:
    if record.type != "TXT":
        return record.value
    # One TXT record of several strings of at most 255 bytes, as DNS consoles split a DKIM key.
    chunks = [record.value[i:i + 255] for i in range(0, len(record.value), 255)]
    return " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)


def zone_text(zone: str, records: list[Record], serial: int) -> str:
    lines = [f"$ORIGIN {zone}.", "$TTL 60",
             f"@ IN SOA ns.{zone}. hostmaster.{zone}. {serial} 3600 600 86400 60",
             f"@ IN NS ns.{zone}.", f"ns.{zone}. IN A {DNS_IP}"]
    lines += [f"{record.name}. IN {record.type} {_value(record)}" for record in records]
    return "\n".join(lines) + "\n"


def _next_serial() -> int:
    serial = int(SERIAL.read_text()) + 1 if SERIAL.exists() else 1
    SERIAL.write_text(str(serial))
    return serial


def write_zones(served: dict[str, list[Record]]) -> int:
    serial = _next_serial()
    for zone, records in served.items():
        (NSD_DIR / f"{zone}.zone").write_text(zone_text(zone, records, serial))
    return serial


def serial_served(zone: str) -> int | None:
    """The SOA serial nsd answers for `zone`, asked from the internet side."""
    script = ("import sys, dns.resolver; r = dns.resolver.Resolver(configure=False); "
              f"r.nameservers = ['{DNS_IP}']; r.lifetime = 2; "
              f"print(r.resolve('{zone}', 'SOA')[0].serial)")
    answer = run([sys.executable, "-c", script], INET, check=False, timeout=10)
    return int(answer.stdout) if answer.returncode == 0 and answer.stdout.strip().isdigit() else None


def start(settings: Settings, values: LabValues) -> None:
    NSD_DIR.mkdir(parents=True)
    served = zones(settings, values)
    serial = write_zones(served)
    conf = NSD_DIR / "nsd.conf"
    conf.write_text(render_template("lab/doctor/nsd.conf.j2", address=DNS_IP, dir=NSD_DIR, zones=sorted(served)))
    run(["nsd-checkconf", str(conf)])
    spawn("doctor-nsd", ["nsd", "-d", "-c", str(conf)], DNS)
    wait_for(lambda: serial_served(settings.domain) == serial, "the doctor's nsd", timeout=15)


def serve(settings: Settings, values: LabValues,
          edit: Callable[[list[Record]], list[Record]] | None = None) -> None:
    """The zones again, the domain's records passed through `edit` (a breakage), reloaded
    (SIGHUP) and answered before this returns."""
    served = zones(settings, values)
    if edit:
        served[settings.domain] = edit(served[settings.domain])
    serial = write_zones(served)
    nsd = recorded_pids().get("doctor-nsd")
    if nsd is None:
        raise LabError("the doctor's nsd is not running")
    os.kill(nsd, signal.SIGHUP)  # nsd reads its zone files again
    wait_for(lambda: serial_served(settings.domain) == serial, "nsd to serve the edited zone", timeout=15)
