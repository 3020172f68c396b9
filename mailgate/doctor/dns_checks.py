"""DNS as the world sees it: what senders, mail clients and Let's Encrypt look up."""

from __future__ import annotations

import ipaddress
import re

import dns.exception
import dns.resolver
import dns.reversename

from mailgate.deployment import Deployment
from mailgate.doctor import BLOCKLISTS
from mailgate.doctor.report import Finding, fail, ok, skipped, warn
from mailgate.doctor.target import Target
from mailgate.renderers.dns import DKIM_SELECTOR, MAILCOW_DKIM_MENU, dns_records

SPF_LOOKUP_LIMIT = 10  # RFC 7208 4.6.4
SPF_LOOKUP_TERMS = re.compile(r"^[+?~-]?(include|a|mx|ptr|exists|redirect)\b", re.I)
BREVO = "brevo.com"
BREVO_DKIM = ("brevo1", "brevo2")  # Brevo's current DKIM: two CNAMEs; older accounts: mail._domainkey TXT


class Dns:
    """Answers as plain strings; NXDOMAIN and "no answer" are an empty list, anything
    else (timeout, refused, SERVFAIL) raises DnsError with what happened."""

    def __init__(self, target: Target) -> None:
        self.where = ", ".join(target.resolvers) or "the system resolver"
        self.broken = ""
        try:
            self.resolver = dns.resolver.Resolver(configure=not target.resolvers)
        except dns.resolver.NoResolverConfiguration:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.broken = "this machine has no resolver configured (give --resolver IP)"
        if target.resolvers:
            self.resolver.nameservers = list(target.resolvers)
        self.resolver.lifetime = target.timeout

    def answer(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        if self.broken:
            raise DnsError(self.broken)
        try:
            return self.resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except dns.exception.Timeout:
            raise DnsError(f"{rdtype} {name}: {self.where} did not answer") from None
        except dns.resolver.NoNameservers:
            raise DnsError(f"{rdtype} {name}: {self.where} refused or failed (SERVFAIL/REFUSED)") from None
        except dns.exception.DNSException as error:
            raise DnsError(f"{rdtype} {name} through {self.where}: {error}") from None

    def query(self, name: str, rdtype: str) -> list[str]:
        answer = self.answer(name, rdtype)
        if answer is None or answer.rrset is None:
            return []
        if rdtype == "TXT":
            return [b"".join(r.strings).decode(errors="replace") for r in answer]
        return [r.to_text() for r in answer]

    def alias(self, name: str) -> str | None:
        """The CNAME a name's A lookup followed, if any."""
        answer = self.answer(name, "A")
        if answer is not None and answer.canonical_name.to_text().rstrip(".") != name.rstrip("."):
            return answer.canonical_name.to_text().rstrip(".")
        return None


class DnsError(Exception):
    pass


def _guarded(id: str, title: str, body) -> list[Finding]:
    try:
        return body()
    except DnsError as error:
        return [fail(id, title, f"the lookup failed: {error}",
                     "check that the resolver answers (--resolver IP picks another) and that the "
                     "domain's name servers are reachable")]


def address(target: Target, dns_: Dns) -> list[Finding]:
    settings, id, title = target.settings, "dns.a", f"{target.settings.mail_hostname} -> the gateway"
    host = settings.mail_hostname

    def body() -> list[Finding]:
        alias = dns_.alias(host)
        if alias:
            return [fail(id, title, f"{host} is a CNAME to {alias}",
                         f"publish {host} as A {target.public_ipv4} (an MX target must not be an alias)")]
        problems, seen = [], []
        for rdtype, want in (("A", target.public_ipv4), ("AAAA", target.public_ipv6)):
            got = sorted(dns_.query(host, rdtype))
            seen.append(f"{rdtype} {', '.join(got) or 'none'}")
            if want and got != [want]:
                problems.append(f"publish {host} {rdtype} {want} only")
            if not want and got:
                problems.append(f"remove {host} {rdtype} {', '.join(got)}: the gateway has no IPv6 "
                                "(or turn on mailgate:gateway.ipv6)")
        if problems:
            return [fail(id, title, "; ".join(seen), "; ".join(problems))]
        return [ok(id, title, "; ".join(seen))]

    return _guarded(id, title, body)


def mx(target: Target, dns_: Dns) -> list[Finding]:
    settings, id, title = target.settings, "dns.mx", f"MX of {target.settings.domain}"

    def body() -> list[Finding]:
        records = dns_.query(settings.domain, "MX")
        hosts = sorted({r.split()[1].rstrip(".").lower() for r in records})
        want = f"publish {settings.domain} MX 10 {settings.mail_hostname}. as its only MX"
        if not records:
            return [fail(id, title, "no MX record", want)]
        if hosts != [settings.mail_hostname.lower()]:
            return [fail(id, title, f"MX {', '.join(records)}", f"{want} (mail to other hosts never reaches Mailcow)")]
        return [ok(id, title, ", ".join(records))]

    return _guarded(id, title, body)


def _spf_lookups(dns_: Dns, record: str, depth: int = 0) -> int:
    """DNS-querying terms in an SPF record, with those of every include and redirect."""
    count = 0
    for term in record.split()[1:]:
        match = SPF_LOOKUP_TERMS.match(term)
        if not match:
            continue
        count += 1
        mechanism = match.group(1).lower()
        if mechanism in ("include", "redirect") and depth < 10:
            domain = term.split(":" if mechanism == "include" else "=", 1)[-1]
            nested = [r for r in dns_.query(domain, "TXT") if r.lower().startswith("v=spf1")]
            if nested:
                count += _spf_lookups(dns_, nested[0], depth + 1)
    return count


def spf(target: Target, dns_: Dns) -> list[Finding]:
    settings, id, title = target.settings, "dns.spf", f"SPF of {target.settings.domain}"
    include = f"include:{settings.relay.spf_include}"
    want = f'publish one TXT "v=spf1 {include} ~all" at {settings.domain}'

    def body() -> list[Finding]:
        records = [r for r in dns_.query(settings.domain, "TXT") if r.lower().startswith("v=spf1")]
        if not records:
            return [fail(id, title, "no v=spf1 record", want)]
        if len(records) > 1:
            return [fail(id, title, f"{len(records)} SPF records: " + " | ".join(records),
                         f"merge them into one (two SPF records are a permanent error): {want}")]
        record = records[0]
        if include.lower() not in record.lower().split():
            return [fail(id, title, record, f"add {include}: the relay sends your mail, and receivers "
                         "check that it may")]
        lookups = _spf_lookups(dns_, record)
        if lookups > SPF_LOOKUP_LIMIT:
            return [fail(id, title, f"{record} ({lookups} DNS lookups)",
                         f"cut it to {SPF_LOOKUP_LIMIT} lookups or fewer: drop includes you do not send through")]
        if record.split()[-1].lower() in ("+all", "all"):
            return [fail(id, title, record, "end it with ~all or -all: +all lets anyone send as you")]
        return [ok(id, title, f"{record} ({lookups} DNS lookup{'s' if lookups != 1 else ''})")]

    return _guarded(id, title, body)


def dmarc(target: Target, dns_: Dns) -> list[Finding]:
    name = f"_dmarc.{target.settings.domain}"
    id, title = "dns.dmarc", f"DMARC at {name}"

    def body() -> list[Finding]:
        records = [r for r in dns_.query(name, "TXT") if r.replace(" ", "").upper().startswith("V=DMARC1")]
        want = f'publish one TXT "v=DMARC1; p=none; rua=mailto:postmaster@{target.settings.domain}" at {name}'
        if not records:
            return [fail(id, title, "no v=DMARC1 record", want)]
        if len(records) > 1:
            return [fail(id, title, f"{len(records)} DMARC records: " + " | ".join(records),
                         f"keep one (receivers ignore DMARC when there are two): {want}")]
        tags = dict(part.strip().split("=", 1) for part in records[0].split(";") if "=" in part)
        policy = tags.get("p", "").strip().lower()
        if policy not in ("none", "quarantine", "reject"):
            return [fail(id, title, records[0], f"set p=none, p=quarantine or p=reject (now {policy or 'missing'})")]
        return [ok(id, title, records[0])]

    return _guarded(id, title, body)


def _key(record: str) -> str:
    tags = dict(part.strip().split("=", 1) for part in record.split(";") if "=" in part)
    return re.sub(r"\s+", "", tags.get("p", ""))


def dkim(target: Target, dns_: Dns, home_key: tuple[str, str] | str | None) -> list[Finding]:
    """`home_key`: (selector, public key) as Mailcow holds them, when --ssh reached home;
    a sentence when it could not be read there; None without --ssh."""
    if isinstance(home_key, str):
        return [fail("dns.dkim", "Mailcow's DKIM key", home_key,
                     "create the domain's key in Mailcow's admin UI, "
                     f"{MAILCOW_DKIM_MENU}, or fix the way in (see the other --ssh checks)")]
    selector = home_key[0] if home_key else DKIM_SELECTOR
    name = f"{selector}._domainkey.{target.settings.domain}"
    id, title = "dns.dkim", f"Mailcow's DKIM key at {name}"

    def body() -> list[Finding]:
        records = [r for r in dns_.query(name, "TXT") if "p=" in r]
        where = f"Mailcow's admin UI, {MAILCOW_DKIM_MENU}"
        if not records:
            return [fail(id, title, "no DKIM record", f"publish the TXT record shown in {where} at {name}")]
        published = _key(records[0])
        if home_key is None:
            return [ok(id, title, f"published ({len(published)} base64 characters); not compared with "
                       "Mailcow's key (needs --ssh)")]
        if published != re.sub(r"\s+", "", home_key[1]):
            return [fail(id, title, "the published key differs from Mailcow's",
                         f"publish the TXT record shown in {where} at {name} (receivers reject your signatures)")]
        return [ok(id, title, "published, equal to Mailcow's key")]

    return _guarded(id, title, body)


def relay_records(target: Target, dns_: Dns) -> list[Finding]:
    settings, id = target.settings, "dns.relay"
    title = f"{settings.relay.host}'s domain records"
    if not settings.relay.host.endswith(BREVO):
        return [skipped(id, title, "mailgate knows only Brevo's records",
                        f"check in {settings.relay.host}'s console that {settings.domain} is verified")]

    def body() -> list[Finding]:
        domain = settings.domain
        code = [r for r in dns_.query(domain, "TXT") if r.startswith("brevo-code:")]
        keys = [s for s in BREVO_DKIM if dns_.query(f"{s}._domainkey.{domain}", "CNAME")
                or dns_.query(f"{s}._domainkey.{domain}", "TXT")]
        legacy = [r for r in dns_.query(f"mail._domainkey.{domain}", "TXT") if "p=" in r]
        missing = ([] if code else [f"the brevo-code TXT at {domain}"]) + (
            [] if len(keys) == len(BREVO_DKIM) or legacy else
            [f"the DKIM records {' and '.join(f'{s}._domainkey.{domain}' for s in BREVO_DKIM)}"])
        seen = f"brevo-code {'present' if code else 'missing'}; DKIM " + (
            ", ".join(keys) or ("mail._domainkey" if legacy else "missing"))
        if missing:
            return [fail(id, title, seen, f"publish {' and '.join(missing)} as Brevo's Domains page "
                         "lists them, then Authenticate there (Brevo rewrites or drops mail from a "
                         "domain it has not authenticated)")]
        return [ok(id, title, seen)]

    return _guarded(id, title, body)


def other_names(target: Target, dns_: Dns) -> list[Finding]:
    """Every other A/AAAA and SRV record mailgate renders (certificate names, client
    auto-configuration), as rendered."""
    settings, id, title = target.settings, "dns.names", "other names and SRV records"
    deployment = Deployment(public_ipv4=target.public_ipv4, public_ipv6=target.public_ipv6)
    wanted = [r for r in dns_records(settings, deployment)
              if r.type in ("A", "AAAA", "SRV") and r.name != settings.mail_hostname]

    def body() -> list[Finding]:
        wrong = []
        for record in wanted:
            got = dns_.query(record.name, record.type)
            value = record.value.rstrip(".").lower()
            if not any(g.rstrip(".").lower() == value for g in got):
                wrong.append(f"{record.name} {record.type} {record.value} (found: {', '.join(got) or 'none'})")
        if wrong:
            return [fail(id, title, f"{len(wrong)} of {len(wanted)} missing or different",
                         "publish " + "; ".join(wrong))]
        return [ok(id, title, f"all {len(wanted)} as rendered")]

    return _guarded(id, title, body)


def ptr(target: Target, dns_: Dns) -> list[Finding]:
    id, title = "dns.ptr", f"reverse DNS of {target.public_ipv4}"

    def body() -> list[Finding]:
        names = [n.rstrip(".").lower() for n in dns_.query(dns.reversename.from_address(target.public_ipv4).to_text(), "PTR")]
        if target.settings.mail_hostname.lower() not in names:
            return [warn(id, title, ", ".join(names) or "no PTR",
                         f"optional (outbound mail leaves through the relay): ask Oracle to set the "
                         f"reverse DNS of {target.public_ipv4} to {target.settings.mail_hostname}")]
        return [ok(id, title, ", ".join(names))]

    try:
        return body()
    except DnsError as error:
        return [warn(id, title, f"the lookup failed: {error}", "optional; check again later")]


def blocklists(target: Target, dns_: Dns) -> list[Finding]:
    id, title = "blocklist", f"{target.public_ipv4} on DNS blocklists"
    reversed_ip = ".".join(reversed(target.public_ipv4.split(".")))
    listed, refused, failed = [], [], []
    for zone in BLOCKLISTS:
        try:
            answers = dns_.query(f"{reversed_ip}.{zone}", "A")
        except DnsError as error:
            failed.append(f"{zone}: {error}")
            continue
        codes = [a for a in answers if ipaddress.ip_address(a) in ipaddress.ip_network("127.0.0.0/8")]
        if any(ipaddress.ip_address(a) in ipaddress.ip_network("127.255.255.0/24") for a in codes):
            refused.append(zone)
        elif codes:
            listed.append(f"{zone} ({', '.join(codes)})")
    if listed:
        return [warn(id, title, "listed on " + ", ".join(listed),
                     "inbound mail still works; ask each list for removal (their sites say how)")]
    if refused:
        return [warn(id, title, "refused: " + ", ".join(refused + failed),
                     "the lists refuse queries from big public resolvers: use your own (--resolver)")]
    if failed:
        return [warn(id, title, "not answered: " + ", ".join(failed), "check again later, or with --resolver")]
    return [ok(id, title, f"not listed on {', '.join(BLOCKLISTS)}")]
