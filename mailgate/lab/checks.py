"""`lab check`: what the design promises, proven from the outside of a running lab."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from mailgate.lab import (
    CLIENT_IP, CLIENT_IP6, DEFAULT_IMAP_IDLE, GATEWAY, GATEWAY_TAILNET, HOME, HOME_TAILNET, INET, NAMESPACES, MAIL_PASSWORD, MAIL_USER,
    PUBLIC_IP, PUBLIC_IP6, SHORT_CUT_MARGIN, SHORT_IDLE_MARGIN, SHORT_IMAP_TIMEOUT, SPOOF,
)
from mailgate.lab import docker_rules, tailnet, topology, watchers
from mailgate.lab.daemons import other_gateway_ports
from mailgate.lab.daemons import DOVECOT_LOG, IMAP_TIMEOUT, POSTFIX_LOG, RELAY_LOG, SENDER_DIR, SENDER_LOG
from mailgate.lab.result import Result
from mailgate.lab.system import LabError, alive, recorded_pids, run, wait_for
from mailgate.settings import Settings

REPO = Path(__file__).resolve().parent.parent.parent


def probe(namespace: str, action: str, *args: object) -> dict:
    result = run([sys.executable, "-m", "mailgate.lab.probe", action, *map(str, args)], namespace,
                 check=False, timeout=40)
    if result.returncode != 0:
        return {"error": result.stderr.strip()}
    return json.loads(result.stdout)


def _log_from(path: Path, offset: int) -> str:
    return path.read_text(errors="replace")[offset:] if path.exists() else ""


def _size(path: Path) -> int:
    return len(path.read_text(errors="replace")) if path.exists() else 0


def _session_lines(service, host: str = PUBLIC_IP) -> list[str]:
    """Probe one public port; return the log lines that session left at the twin."""
    log = POSTFIX_LOG if service.container == "postfix-mailcow" else DOVECOT_LOG
    start = _size(log)
    probe(INET, "banner", host, service.public_port)
    if service.container == "postfix-mailcow":
        marker = f"postfix/twin{service.home_port}/"
    else:
        marker = "managesieve-login:" if service.name == "managesieve" else "imap-login:"
    lines: list[str] = []
    for _ in range(40):  # logged when the session ends; bounded wait
        lines = [line for line in _log_from(log, start).splitlines() if marker in line]
        if lines:
            break
        time.sleep(0.1)
    return lines


def _evidence(lines: list[str], client: str) -> str:
    """The logged line that names the client (or the first line, to show what was seen)."""
    if not lines:
        return "nothing logged"
    line = next((line for line in lines if client in line or GATEWAY_TAILNET in line), lines[0])
    return line.split(": ", 1)[-1][:100]


# (how a result names the family, the gateway's public address, the client's own address)
FAMILIES = (("", PUBLIC_IP, CLIENT_IP), (" over IPv6", PUBLIC_IP6, CLIENT_IP6))


def real_client_address(settings: Settings) -> list[Result]:
    """Every PROXY service (port 80 sends only ACME's path home, without a PROXY header),
    from an IPv4 and an IPv6 client: the tunnel is IPv4, so the IPv6 client's address
    reaches home only in nginx's PROXY TCP6 header."""
    results = []
    for family, public, client in FAMILIES:
        for service in (s for s in settings.enabled_services if s.proxy_protocol):
            lines = _session_lines(service, public)
            real = any(f"[{client}]" in line or f"rip={client}," in line for line in lines)
            tunnel = any(GATEWAY_TAILNET in line for line in lines)
            results.append(Result(f"real client address{family} on {service.name} ({service.public_port})",
                                  real and not tunnel, _evidence(lines, client)))
    return results


def delivery(public: str = PUBLIC_IP) -> Result:
    family = " over IPv6" if ":" in public else ""
    subject = f"lab-{uuid.uuid4().hex[:8]}"
    sent = probe(INET, "send", public, 25, "sender@example.net", MAIL_USER, subject)
    count = None
    for _ in range(20):
        count = probe(INET, "fetch", public, MAIL_USER, MAIL_PASSWORD, subject).get("count")
        if count:
            break
        time.sleep(0.5)
    return Result(f"mail to 25 is delivered and fetched over IMAPS via the gateway{family}",
                  sent.get("code") == 250 and count == 1, f"send {sent}, found {count}")


def no_open_relay() -> list[Result]:
    results = []
    for port in (25, 465, 587):
        answer = probe(INET, "send", PUBLIC_IP, port, "someone@example.net", "victim@example.org", "relay")
        code = answer.get("code")
        results.append(Result(f"no open relay on {port}", isinstance(code, int) and 500 <= code < 600,
                              f"answer {answer}"))
    answer = probe(SPOOF, "send", HOME_TAILNET, 25, "someone@example.net", "victim@example.org", "relay")
    code = answer.get("code")
    results.append(Result("no open relay from a tailnet peer on plain 25",
                          isinstance(code, int) and 500 <= code < 600, f"answer {answer}"))
    return results


def submission_leaves_through_the_relay(settings: Settings) -> Result:
    subject = f"relay-{uuid.uuid4().hex[:8]}"
    start = _size(RELAY_LOG)
    answer = probe(INET, "submit", PUBLIC_IP, 587, MAIL_USER, MAIL_PASSWORD, "friend@example.org", subject)
    login = delivered = False
    for _ in range(40):
        log = _log_from(RELAY_LOG, start)
        login = f"sasl_username={settings.relay.username}" in log
        delivered = "to=<friend@example.org>" in log and "status=sent" in log
        if login and delivered:
            break
        time.sleep(0.5)
    return Result("authenticated submission on 587 leaves through the relay (SASL login seen there)",
                  answer.get("code") == 250 and login and delivered,
                  f"submit {answer}, relay saw login={login}, message={delivered}")


FORGED_CLIENT, FORGED_CLIENT6 = "192.0.2.66", "2001:db8:66::66"


def _twins(settings: Settings) -> str:
    return ",".join(str(s.home_port) for s in settings.enabled_services if s.proxy_protocol)


def forged_proxy_refused(settings: Settings) -> list[Result]:
    """A second tailnet peer sends a forged PROXY header to each twin, claiming an IPv4
    and an IPv6 client: no connection may open, so no server reads it (the home filter
    drops the SYN: it times out)."""
    results = []
    for family, forged in (("", FORGED_CLIENT), (" (IPv6 claim)", FORGED_CLIENT6)):
        answers = probe(SPOOF, "forge", HOME_TAILNET, _twins(settings), forged)
        if "error" in answers:
            results.append(Result(f"forged PROXY header{family} refused on the twins", False, answers["error"][-200:]))
            continue
        results += [Result(f"forged PROXY header{family} refused on twin {port}",
                           not str(answer).startswith("open"), f"from {SPOOF}: {answer}")
                    for port, answer in answers.items()]
    return results


def gateway_ipv6_firewall_opens_exactly_the_catalogue(settings: Settings) -> Result:
    """Over IPv6 the gateway's firewall (the rendered MAILGATE-IN on an Oracle-shaped
    base) lets in the enabled ports and nothing else: other services listening on the
    gateway answer inside it, and are refused from outside."""
    enabled = [str(s.public_port) for s in settings.enabled_services]
    others = [str(p) for p in other_gateway_ports(settings)]
    inside: dict = {}
    for _ in range(30):  # the other services' listener starts with the gateway; bounded wait
        inside = probe(GATEWAY, "reach", PUBLIC_IP6, ",".join(others))
        if all(inside.get(p) == "open" for p in others):
            break
        time.sleep(0.1)
    outside = probe(INET, "reach", PUBLIC_IP6, ",".join(enabled + others))
    passed = (all(inside.get(p) == "open" for p in others)
              and all(outside.get(p) == "open" for p in enabled)
              # REJECT's ICMPv6 error may come after the probe's 1 s (a SYN retransmission
              # later): refused or timed out, either way not open.
              and all(outside.get(p) in ("refused", "TimeoutError") for p in others))
    return Result("over IPv6 the gateway's firewall opens the enabled ports and nothing else", passed,
                  f"from {INET}: {outside}; inside the gateway: {inside}")


def filter_holds_after_restarts(settings: Settings) -> list[Result]:
    """tailscaled restarted (its chains back first in INPUT and FORWARD) and Docker
    restarted (its chains rebuilt, DOCKER-USER kept): the second tailnet peer still gets
    no banner from any twin, and the gateway, speaking PROXY as nginx does, gets one from
    each."""
    tailnet.restart_tailscaled()
    docker_rules.restart(settings)
    first = {builtin: run(["iptables", "-S", builtin], HOME).stdout.splitlines()[1:2]
             for builtin in ("INPUT", "FORWARD")}
    restarted = first == {"INPUT": ["-A INPUT -j ts-input"], "FORWARD": ["-A FORWARD -j ts-forward"]}
    spoofed = probe(SPOOF, "forge", HOME_TAILNET, _twins(settings), FORGED_CLIENT)
    gateway = probe(GATEWAY, "forge", HOME_TAILNET, _twins(settings), CLIENT_IP)
    return [
        Result("after tailscaled and Docker restarts, a second tailnet peer gets no banner from any twin",
               restarted and "error" not in spoofed and not any(str(a).startswith("open") for a in spoofed.values()),
               f"first in INPUT/FORWARD {first}; from {SPOOF}: {spoofed}"),
        Result("after tailscaled and Docker restarts, the gateway gets a banner from every twin",
               "error" not in gateway and all(str(a).startswith("open, banner") for a in gateway.values()),
               f"from {GATEWAY}: {gateway}"),
    ]


def plain_ports_closed_to_the_tunnel(settings: Settings) -> Result:
    """The tailnet policy lets the gateway reach the PROXY twins and nothing else at home:
    a plain port would log the gateway's address (and Mailcow's ban logic would then ban
    the gateway, see mailcow-facts), so forwarding to one must be impossible, not only
    not configured. The twins must answer in the same probe, so a dead tunnel or stopped
    daemons cannot pass for a closed port."""
    services = [s for s in settings.enabled_services if s.proxy_protocol]
    twins = [str(s.home_port) for s in services]
    plain = [str(s.public_port) for s in services]
    answer = probe(GATEWAY, "reach", HOME_TAILNET, ",".join(twins + plain))
    twins_open = all(answer.get(port) == "open" for port in twins)
    # Tailscale drops what the policy denies, so the connection times out (no reset).
    plain_dropped = all(answer.get(port) == "TimeoutError" for port in plain)
    return Result("plain ports unreachable from the gateway over the tunnel, twins reachable",
                  twins_open and plain_dropped, f"{HOME_TAILNET} from {GATEWAY}: {answer}")


class IdleImap:
    """IMAP sessions left idle through the gateway while other checks run.

    Against the stack's own config (1860 s for IMAP) one session idles `idle` seconds
    (default 610, beyond nginx's 600 s default) and must still answer. After
    `lab up --imap-timeout T` (T <= 120) both sides can be watched: a session idle T - 2 s
    answers and one idle T + 4 s has been cut, so the timeout in force lies in
    (T - 2, T + 4]: the rendered value, not nginx's default and nothing much shorter."""

    def __init__(self, idle: float | None = None):
        self.timeout = int(IMAP_TIMEOUT.read_text())
        short = self.timeout in SHORT_IMAP_TIMEOUT
        if short and idle is not None:
            raise LabError(f"--imap-idle does not apply: the lab was started with --imap-timeout "
                           f"{self.timeout}, so check picks {self.timeout - SHORT_IDLE_MARGIN} s "
                           f"and {self.timeout + SHORT_CUT_MARGIN} s itself")
        if short:
            self.idle: float = self.timeout - SHORT_IDLE_MARGIN
        else:
            self.idle = DEFAULT_IMAP_IDLE if idle is None else idle
        if not 0 < self.idle < self.timeout:
            raise LabError(f"--imap-idle {self.idle:g} must be above 0 and below the configured "
                           f"IMAP timeout {self.timeout} s")
        self.cut_after = self.timeout + SHORT_CUT_MARGIN if short else None
        self.sessions: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        self.sessions["survives"] = self._start(self.idle)
        if self.cut_after:
            self.sessions["cut"] = self._start(self.cut_after)

    def stop(self) -> None:
        """End sessions still running (a check raised before their results were read)."""
        for process in self.sessions.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    @staticmethod
    def _start(seconds: float) -> subprocess.Popen:
        argv = ["ip", "netns", "exec", INET, sys.executable, "-m", "mailgate.lab.probe", "idle",
                PUBLIC_IP, MAIL_USER, MAIL_PASSWORD, f"{seconds:.1f}"]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _answer(self, process: subprocess.Popen) -> dict:
        try:
            out, err = process.communicate(timeout=max(self.idle, self.cut_after or 0) + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return {"error": "the probe did not finish"}
        return json.loads(out) if process.returncode == 0 else {"error": err.strip()[-200:]}

    def results(self) -> list[Result]:
        answers = {name: self._answer(process) for name, process in self.sessions.items()}
        results = [Result(f"IMAP session idle {self.idle:.0f} s through the gateway stays open",
                          answers["survives"].get("open") is True,
                          f"nginx proxy_timeout for IMAP {self.timeout} s; {answers['survives']}")]
        if self.cut_after:
            results.append(Result(f"IMAP session idle {self.cut_after} s is cut at the configured {self.timeout} s",
                                  answers["cut"].get("open") is False, f"{answers['cut']}"))
        return results


def gateway_survives_home_outage() -> Result:
    nginx = recorded_pids().get("nginx")
    topology.set_home_tunnel(False)
    try:
        during = probe(INET, "banner", PUBLIC_IP, 25)
    finally:
        topology.set_home_tunnel(True)
    wait_for(lambda: topology.handshake(GATEWAY), "the tunnel to come back", timeout=15)
    after = {}
    for _ in range(20):
        after = probe(INET, "banner", PUBLIC_IP, 25)
        if (after.get("banner") or "").startswith("220"):
            break
        time.sleep(0.5)
    no_reply = not (during.get("banner") or "").strip()
    passed = no_reply and nginx is not None and alive(nginx) and (after.get("banner") or "").startswith("220")
    return Result("home down: no reply (sender retries), nginx stays up, serves again after", passed,
                  f"during {during}, after {after.get('banner', after)!r:.40}")


def queued_during_outage_then_delivered_once(messages: int = 3) -> Result:
    """A real sending Postfix keeps its mail queued while home is away (temporary failure,
    no bounce) and delivers every message exactly once after the tunnel returns."""
    start = _size(SENDER_LOG)
    subjects = [f"outage-{uuid.uuid4().hex[:8]}" for _ in range(messages)]
    topology.set_home_tunnel(False)
    try:
        for subject in subjects:
            run(["sendmail", "-C", str(SENDER_DIR), "-f", "sender@example.net", MAIL_USER], INET,
                stdin=f"Subject: {subject}\n\nsent while home was down\n")
        deferred = 0
        for _ in range(60):  # bounded: each attempt waits out nginx's 5 s connect timeout
            deferred = _log_from(SENDER_LOG, start).count("status=deferred")
            if deferred >= messages:
                break
            time.sleep(0.5)
    finally:
        topology.set_home_tunnel(True)
    wait_for(lambda: topology.handshake(GATEWAY), "the tunnel to come back", timeout=15)
    run(["postqueue", "-c", str(SENDER_DIR), "-f"], INET)
    counts: list = []
    for _ in range(60):
        counts = [probe(INET, "fetch", PUBLIC_IP, MAIL_USER, MAIL_PASSWORD, s).get("count") for s in subjects]
        if counts == [1] * messages:
            break
        time.sleep(0.5)
    bounced = "status=bounced" in _log_from(SENDER_LOG, start)
    passed = deferred >= messages and not bounced and counts == [1] * messages
    return Result("home down: mail stays queued (no bounce), arrives exactly once after", passed,
                  f"{deferred} deferrals, bounced={bounced}, delivered counts {counts}")


def run_checks(settings: Settings, imap_idle: float | None = None) -> list[Result]:
    missing = set(NAMESPACES) - set(topology.existing_namespaces())
    if missing:
        raise LabError(f"the lab is not up ({', '.join(sorted(missing))} missing); run `lab up` first")
    idle_sessions = IdleImap(imap_idle)
    try:
        results = real_client_address(settings)
        # After the address check, whose Dovecot log reading must see only its own
        # sessions; before the rest, so the idle wait overlaps them.
        idle_sessions.start()
        results.append(delivery())
        results.append(delivery(PUBLIC_IP6))
        results.append(gateway_ipv6_firewall_opens_exactly_the_catalogue(settings))
        results += no_open_relay()
        results.append(submission_leaves_through_the_relay(settings))
        results += forged_proxy_refused(settings)
        results.append(plain_ports_closed_to_the_tunnel(settings))
        # Collected before the outages: a NOOP stalled by a downed tunnel would prove nothing.
        results += idle_sessions.results()
        results += filter_holds_after_restarts(settings)
        results.append(gateway_survives_home_outage())
        results.append(queued_during_outage_then_delivered_once())
        from mailgate.lab.ban_checks import bans_bite  # it uses this module's probe
        results += bans_bite(settings)
        # Last: the watchers probe every port, which the log-reading checks above must not see.
        results += watchers.flapping_sends_nothing(settings)
        results += watchers.outage_alerts_once_then_recovers(settings)
    finally:
        idle_sessions.stop()
    return results
