"""Run every check concurrently and put the findings in reading order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace

from mailgate.doctor import dns_checks, host_checks, public_checks
from mailgate.doctor.report import FAIL, Finding, fail
from mailgate.doctor.target import Target
from mailgate.doctor.wire import REFUSED_GREETING

# Whatever a check does, every one of its reads has a timeout; this bounds the whole run.
OVERALL_TIMEOUT = 120


def checks(target: Target) -> list[tuple[str, object]]:
    """(id of the check's first finding, callable) in the order a user reads them."""
    resolver = dns_checks.Dns(target)
    return [
        ("dns.a", lambda: dns_checks.address(target, resolver)),
        ("dns.mx", lambda: dns_checks.mx(target, resolver)),
        ("dns.spf", lambda: dns_checks.spf(target, resolver)),
        ("dns.dmarc", lambda: dns_checks.dmarc(target, resolver)),
        ("dns.dkim", lambda: dns_checks.dkim(target, resolver, host_checks.home_dkim(target))),
        ("dns.relay", lambda: dns_checks.relay_records(target, resolver)),
        ("dns.names", lambda: dns_checks.other_names(target, resolver)),
        ("dns.ptr", lambda: dns_checks.ptr(target, resolver)),
        ("port", lambda: public_checks.ports(target)),
        ("port.closed", lambda: public_checks.closed_ports(target)),
        ("smtp", lambda: public_checks.smtp(target)),
        ("tls", lambda: public_checks.certificates(target)),
        ("open-relay", lambda: public_checks.open_relay(target)),
        ("tunnel", lambda: host_checks.tunnel(target)),
        ("home-filter", lambda: host_checks.home_filter(target, target.gateway_tailnet_ip)),
        ("relay-auth", lambda: host_checks.relay_auth(target)),
        ("queue", lambda: host_checks.queue(target)),
        ("blocklist", lambda: dns_checks.blocklists(target, resolver)),
    ]




# The order of the table: as a user reads it (the real-address check runs last, reads 6th).
ORDER = ("dns", "port", "port6", "smtp", "tls", "open-relay", "real-address", "tunnel", "home-filter",
         "relay-auth", "queue", "blocklist")


def _place(finding: Finding) -> int:
    return next(i for i, prefix in enumerate(ORDER) if finding.id.split(".")[0] == prefix)


def run(target: Target) -> list[Finding]:
    findings = _concurrently(checks(target))
    # Alone, after the others: it reads which connections home logged, and must see only
    # its own. A port that did not answer at all is not probed again (one whose daemon
    # answered with a refusal is: home's log says why).
    down = frozenset(f.id.split(".", 1)[1] for f in findings
                     if f.id.startswith("port.") and f.status == FAIL and REFUSED_GREETING not in f.saw)
    findings += _concurrently([("real-address", lambda: host_checks.real_address(target, down))])
    return _point_to_causes(sorted(findings, key=_place))


def _point_to_causes(findings: list[Finding]) -> list[Finding]:
    """A port that does not answer fails its greeting and certificate checks too: their
    fix is the port's. A port the gateway accepts but home never answers, while the
    tunnel check fails: the fix is the tunnel's."""
    down = {f.id.split(".", 1)[1] for f in findings if f.id.startswith("port.") and f.status == FAIL}
    tunnel_down = any(f.id == "tunnel" and f.status == FAIL for f in findings)

    def cause(f: Finding) -> Finding:
        if f.status != FAIL:
            return f
        if tunnel_down and f.id.startswith("port.") and "connected, then" in f.saw:
            return replace(f, fix="see the tunnel check: the gateway cannot reach home")
        if f.id.split(".")[0] in ("smtp", "tls") and f.id.split(".", 1)[1] in down:
            return replace(f, fix=f"fix port.{f.id.split('.', 1)[1]} first")
        if f.id == "open-relay" and "smtp" in down:
            return replace(f, fix="fix port.smtp first")
        return f

    return [cause(f) for f in findings]


def _concurrently(planned: list[tuple[str, object]]) -> list[Finding]:
    pool = ThreadPoolExecutor(max_workers=len(planned))
    try:
        futures = [(name, pool.submit(check)) for name, check in planned]
        wait([f for _, f in futures], timeout=OVERALL_TIMEOUT)
        findings: list[Finding] = []
        for name, future in futures:
            if not future.done():
                findings.append(fail(name, name, f"did not finish within {OVERALL_TIMEOUT} s",
                                     "run the doctor again; if it repeats, report it"))
                continue
            try:
                findings += future.result()
            except Exception as error:  # a doctor bug must never look like a pass
                findings.append(fail(name, name, f"the check itself failed: {error.__class__.__name__}: {error}",
                                     "report it; the other checks are unaffected"))
        return findings
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a stuck check is reported, not waited for
