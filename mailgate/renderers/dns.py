"""The DNS records the user publishes for the mail domain."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mailgate.deployment import Deployment
from mailgate.settings import Settings

DKIM_SELECTOR = "dkim"
MAILCOW_DKIM_MENU = "System > Configuration > Options > ARC/DKIM keys"
MAILCOW_DKIM_PLACEHOLDER = f"<Mailcow's DKIM TXT: {MAILCOW_DKIM_MENU}>"


@dataclass(frozen=True)
class DnsRecord:
    name: str
    type: str
    value: str
    note: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def dns_records(settings: Settings, deployment: Deployment) -> list[DnsRecord]:
    domain, host = settings.domain, settings.mail_hostname
    records = [
        DnsRecord(host, "A", deployment.public_ipv4, "the gateway's reserved public IP"),
    ]
    if deployment.public_ipv6:
        records.append(DnsRecord(host, "AAAA", deployment.public_ipv6, "the gateway's IPv6"))
    records += [
        DnsRecord(domain, "MX", f"10 {host}.", "mail for the domain goes to the gateway"),
        DnsRecord(
            domain, "TXT", f"v=spf1 include:{settings.relay.spf_include} ~all",
            "SPF: the relay sends your outbound mail",
        ),
        DnsRecord(
            f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}",
            "DMARC; start with p=none if you are unsure",
        ),
        DnsRecord(
            f"{DKIM_SELECTOR}._domainkey.{domain}", "TXT", MAILCOW_DKIM_PLACEHOLDER,
            "Mailcow's DKIM key for the domain",
        ),
        DnsRecord(
            domain, "TXT", f"<verification code from {settings.relay.host}>",
            "the relay's domain verification (Brevo: Senders, Domains & Dedicated IPs > Domains)",
        ),
        DnsRecord(
            f"<relay DKIM selector>._domainkey.{domain}", "TXT or CNAME",
            f"<DKIM record from {settings.relay.host}>",
            "the relay's DKIM, so mail it sends is signed for your domain",
        ),
    ]
    records += [
        DnsRecord(f"_{s.srv}._tcp.{domain}", "SRV", f"0 1 {s.public_port} {host}.",
                  f"lets mail clients find {s.name}")
        for s in settings.enabled_services
        if s.srv
    ]
    # Every other name of Mailcow's certificate: ACME proves it through the gateway.
    for name in settings.certificate_names[1:]:
        records.append(DnsRecord(name, "A", deployment.public_ipv4,
                                 "on Mailcow's certificate; mail clients' auto-configuration"))
        if deployment.public_ipv6:
            records.append(DnsRecord(name, "AAAA", deployment.public_ipv6, "the gateway's IPv6"))
    if settings.web.enabled:
        records.append(DnsRecord(f"_autodiscover._tcp.{domain}", "SRV", f"0 1 443 {host}.",
                                 "lets Outlook find autodiscover over web forwarding"))
    return records


def render_dns_records(records: list[DnsRecord]) -> str:
    width = max(len(r.name) for r in records)
    lines = ["; DNS records to publish (rendered by mailgate). Replace every <...> value."]
    for record in records:
        value = record.value if record.type not in ("TXT",) or record.value.startswith("<") else f'"{record.value}"'
        lines.append(f"{record.name:<{width}}  {record.type:<5}  {value}  ; {record.note}")
    return "\n".join(lines) + "\n"
