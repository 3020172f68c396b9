"""What anyone on the internet sees: the public ports, greetings, certificates, relaying."""

from __future__ import annotations

import errno
import ipaddress
from concurrent.futures import ThreadPoolExecutor

from mailgate import catalogue
from mailgate.catalogue import Service
from mailgate.doctor.report import Finding, fail, ok, warn
from mailgate.doctor.target import Target, is_public, own_address
from mailgate.doctor.wire import (
    REFUSED_GREETING, Certificate, Line, ProtocolError, Session, client_context, connect, explain, greet, http_answer,
    tls_certificate,
)

CERT_WARN_DAYS, CERT_FAIL_DAYS = 14, 3
CLOSED_TIMEOUT = 3.0  # a port the gateway's firewall drops gives no answer at all
RELAY_PROBE_SENDER, RELAY_PROBE_RECIPIENT = "doctor@example.net", "relay-test@example.org"  # RFC 2606


def _home_unreachable_hint(service: Service) -> str:
    return (f"the gateway accepted {service.public_port} but nothing answered from home: check the "
            "tunnel (`tailscale status` on both), that Mailcow runs, and its twin port "
            f"{service.home_port} (run the doctor with --ssh)")


def reach(target: Target, service: Service, address: str) -> str:
    """Greet the port end to end (TCP, the daemon's greeting or TLS, HTTP's status line)."""
    with Session(address, service.public_port, target.timeout) as sock:
        if service.protocol == "http":
            if service.implicit_tls:
                with client_context(None, False).wrap_socket(sock, server_hostname=target.settings.mail_hostname) as tls:
                    return http_answer(tls, target.settings.mail_hostname)
            return http_answer(sock, target.settings.mail_hostname)
        if service.implicit_tls:
            with client_context(None, False).wrap_socket(sock, server_hostname=target.settings.mail_hostname) as tls:
                return greet(Line(tls), service, full=False).text
        return greet(Line(sock), service, full=False).text


def ports(target: Target) -> list[Finding]:
    """port.<service> over IPv4; port6.<service> over IPv6 when the gateway has it. An IPv6
    route this machine lacks is a warning about this machine, not a failure of the port."""
    findings = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        jobs = {(s, a): pool.submit(reach, target, s, a)
                for s in target.settings.enabled_services for a in target.public_addresses}
        for address in target.public_addresses:
            family = "port6" if ":" in address else "port"
            for service in target.settings.enabled_services:
                id, title = f"{family}.{service.name}", f"port {service.public_port} ({service.name})"
                try:
                    findings.append(ok(id, title, f"{address}: {jobs[(service, address)].result()[:60]}"))
                except (OSError, ProtocolError) as error:
                    if family == "port6" and getattr(error, "errno", None) in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                        findings.append(warn(id, title, f"{address}: {explain(error)}",
                                             "this machine has no IPv6 route: run the doctor from one that has"))
                    else:
                        findings.append(fail(id, title, f"{address}: {explain(error)}", _fix_for(service, error)))
    return findings


def _fix_for(service: Service, error: Exception) -> str:
    if isinstance(error, ProtocolError) and REFUSED_GREETING in str(error) and service.protocol == "smtp":
        return (f"Postfix at home refused the session: when its log says `haproxy read`, nginx on the "
                f"gateway sends no PROXY header on {service.public_port} (`pulumi up` restores it); "
                "otherwise read `docker compose logs postfix-mailcow` on the Mini PC")
    if isinstance(error, ConnectionRefusedError):
        return (f"nothing listens on {service.public_port} at the gateway: run `pulumi up` (the gateway "
                "step renders nginx), then `sudo nginx -t` and `systemctl status nginx` there")
    if isinstance(error, OSError):  # connecting timed out or the route is gone
        return (f"port {service.public_port} is dropped on the way: check the OCI security list and the "
                "gateway's firewall (`sudo iptables -S MAILGATE-IN`; `pulumi up` restores both)")
    return _home_unreachable_hint(service)


def closed_ports(target: Target) -> list[Finding]:
    """The catalogue's ports that are not enabled, and SSH, must not answer."""
    id, title = "port.closed", "ports that must stay closed"
    enabled = {s.public_port for s in target.settings.enabled_services}
    shut = sorted({s.public_port for s in catalogue.SERVICES} - enabled)
    notes = []
    cidrs = [ipaddress.ip_network(c) for c in target.settings.gateway.admin_cidrs]
    own = own_address(target)
    if not cidrs:
        shut.append(catalogue.SSH_PORT)
    elif own is None or not is_public(own):
        notes.append("SSH is open to mailgate:gateway.adminCidrs, and this machine is behind NAT "
                     "(its public address is unknown): not tested")
    elif any(ipaddress.ip_address(own) in c for c in cidrs if c.version == ipaddress.ip_address(own).version):
        notes.append("SSH is open to mailgate:gateway.adminCidrs; not tested from inside them")
    else:
        shut.append(catalogue.SSH_PORT)

    def answers(port: int) -> bool:
        try:
            with connect(target.public_ipv4, port, CLOSED_TIMEOUT):
                return True
        except OSError:
            return False

    with ThreadPoolExecutor(max_workers=16) as pool:
        open_ = [p for p, up in zip(shut, pool.map(answers, shut)) if up]
    if open_:
        return [fail(id, title, f"open: {', '.join(map(str, open_))}",
                     "close them: run `pulumi up` (the security list and the gateway's firewall open only "
                     "the enabled ports) and check nothing else listens on the gateway (`sudo ss -tlnp`)")]
    return [ok(id, title, f"closed: {', '.join(map(str, shut))}" + (f"; {notes[0]}" if notes else ""))]


SMTP_STARTTLS_PORTS = ("smtp", "submission")


def smtp(target: Target) -> list[Finding]:
    host = target.settings.mail_hostname
    findings = []
    services = [s for s in target.settings.enabled_services if s.protocol == "smtp"]
    with ThreadPoolExecutor(max_workers=len(services) or 1) as pool:
        results = list(pool.map(lambda s: _smtp_one(target, s), services))
    for service, (greeting, error) in zip(services, results):
        id, title = f"smtp.{service.name}", f"SMTP on {service.public_port}"
        if error:
            findings.append(fail(id, title, explain(error), _fix_for(service, error)))
            continue
        problems = []
        if host.lower() not in greeting.text.lower():
            problems.append(f"the banner does not name {host}: set MAILCOW_HOSTNAME={host} in mailcow.conf")
        if host.lower() not in greeting.ehlo_name.lower():
            problems.append(f"EHLO answers as {greeting.ehlo_name.split()[0] if greeting.ehlo_name else '?'}: "
                            f"set MAILCOW_HOSTNAME={host} in mailcow.conf")
        if service.name in SMTP_STARTTLS_PORTS and "STARTTLS" not in greeting.capabilities:
            problems.append("STARTTLS is not offered: Postfix has no certificate or TLS is off")
        if not service.implicit_tls and "AUTH" in greeting.capabilities:
            problems.append("AUTH is offered before TLS: passwords could cross in the clear "
                            "(smtpd_tls_auth_only = yes)")
        seen = f"{greeting.text[:50]}; EHLO {' '.join(greeting.capabilities)}"
        findings.append(fail(id, title, seen, "; ".join(problems)) if problems else ok(id, title, seen))
    return findings


def _smtp_one(target: Target, service: Service):
    try:
        with Session(target.public_ipv4, service.public_port, target.timeout) as sock:
            if service.implicit_tls:
                with client_context(None, False).wrap_socket(sock, server_hostname=target.settings.mail_hostname) as tls:
                    return greet(Line(tls), service), ""
            line = Line(sock)
            greeting = greet(line, service)
            line.send("QUIT")
            return greeting, ""
    except (OSError, ProtocolError) as error:
        return None, error


def certificates(target: Target) -> list[Finding]:
    host = target.settings.mail_hostname
    services = [s for s in target.settings.enabled_services if s.protocol != "http" or s.implicit_tls]
    with ThreadPoolExecutor(max_workers=len(services) or 1) as pool:
        jobs = {s: pool.submit(tls_certificate, target.public_ipv4, s, host, target.ca_file, target.timeout)
                for s in services}
    findings, keys = [], {}
    for service in services:
        id, title = f"tls.{service.name}", f"certificate on {service.public_port}"
        try:
            cert: Certificate = jobs[service].result()
        except (OSError, ProtocolError) as error:
            findings.append(fail(id, title, f"no TLS: {explain(error)}", _fix_for(service, error)))
            continue
        keys[service.public_port] = cert.key_hash
        seen = f"{', '.join(cert.names[:3])}; {cert.days_left:.0f} days left; key {cert.key_hash}"
        renew = ("renew it: `docker compose restart acme-mailcow` on the Mini PC, then read "
                 "`docker compose logs acme-mailcow` (see the README's Certificates)")
        if not cert.verified:
            why = cert.error
            fix = (f"the certificate is not valid for {host}: Mailcow must get one for it (MAILCOW_HOSTNAME, "
                   f"see the README's Certificates)" if "mismatch" in why.lower() or host not in cert.names else
                   f"it does not verify ({why}): " + ("use --ca-file for a private CA; else " if not target.ca_file else "") + renew)
            findings.append(fail(id, title, f"{why}; {seen}", fix))
        elif cert.days_left < CERT_FAIL_DAYS:
            findings.append(fail(id, title, seen, f"expires in under {CERT_FAIL_DAYS} days: {renew}"))
        elif cert.days_left < CERT_WARN_DAYS:
            findings.append(warn(id, title, seen, f"expires in under {CERT_WARN_DAYS} days, renewal should have "
                                 f"happened by now: {renew}"))
        else:
            findings.append(ok(id, title, seen))
    distinct = sorted(set(keys.values()))
    title = "one key on every TLS port"
    if len(distinct) > 1:
        by_key = {k: [p for p, v in keys.items() if v == k] for k in distinct}
        findings.append(fail("tls.same-key", title, "; ".join(f"key {k}: ports {', '.join(map(str, p))}"
                                                          for k, p in by_key.items()),
                             "Postfix and Dovecot serve different certificates: `docker compose restart "
                             "postfix-mailcow dovecot-mailcow` after a renewal (the acme container does it)"))
    elif distinct:
        findings.append(ok("tls.same-key", title, f"key {distinct[0]} on {len(keys)} ports"))
    else:
        findings.append(fail("tls.same-key", title, "no port presented a certificate", "see the tls.* checks"))
    return findings


def open_relay(target: Target) -> list[Finding]:
    """From outside, to an outside recipient: must be refused. Stops at RCPT; nothing is sent."""
    id, title = "open-relay", "not an open relay"
    service = catalogue.BY_NAME["smtp"]
    if service not in target.settings.enabled_services:
        return [ok(id, title, "port 25 is not forwarded")]
    try:
        with Session(target.public_ipv4, service.public_port, target.timeout) as sock:
            line = Line(sock)
            greet(line, service)
            line.send(f"MAIL FROM:<{RELAY_PROBE_SENDER}>")
            code, text = line.smtp_reply()
            if code != 250:
                line.send("QUIT")
                return [warn(id, title, f"MAIL FROM:<{RELAY_PROBE_SENDER}> answered {code} {' '.join(text)[:80]}: "
                             "relaying was not tried", "run the doctor again from another address")]
            line.send(f"RCPT TO:<{RELAY_PROBE_RECIPIENT}>")
            code, text = line.smtp_reply()
            line.send("QUIT")
    except (OSError, ProtocolError) as error:
        return [fail(id, title, f"could not ask: {explain(error)}", _fix_for(service, error))]
    seen = f"RCPT TO:<{RELAY_PROBE_RECIPIENT}> from outside answered {code} {' '.join(text)[:80]}"
    if 200 <= code < 300:
        return [fail(id, title, seen, "Postfix relays for strangers: remove outside networks from mynetworks "
                     "(Mailcow: data/conf/postfix/extra.cf) and keep the twin ports reachable only through "
                     "the gateway; then `docker compose restart postfix-mailcow`")]
    if 400 <= code < 500:
        return [warn(id, title, seen, "refused only for now (4xx): run the doctor again later")]
    return [ok(id, title, seen)]
