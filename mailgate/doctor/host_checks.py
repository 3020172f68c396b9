"""With --ssh: what only the hosts can tell. Did the doctor's own connections reach
Postfix and Dovecot with its real address; does the tunnel carry PROXY headers to every
twin port; is the home filter in place; does the relay take the credentials; is mail
stuck in the queue."""

from __future__ import annotations

import base64
import json
import re
import shlex
import ssl
import subprocess
import time
from datetime import timedelta

from mailgate import catalogue
from mailgate.deployment import Deployment
from mailgate.doctor.report import Finding, fail, ok, skipped, warn
from mailgate.doctor.target import Remote, Target, is_public, is_tailnet, own_address
from mailgate.doctor.wire import EHLO_NAME, Line, ProtocolError, Session, client_context, connect, explain, greet
from mailgate.renderers.firewall import render_home_firewall
from mailgate.renderers.mailcow import POSTFIX_CONTAINER_CONF, RELAY_PASSWORD_MAP

STUCK_AFTER = timedelta(minutes=30)
LOG_READS, LOG_READ_PAUSE = 10, 0.3  # up to 3 s for a session's log line to appear at home
LOG_WINDOW = "120s"  # the log lines real-address reads: the last two minutes, by home's clock
POSTFIX_CONNECT = re.compile(r"\bCONNECT from \[(?P<ip>[^\]]+)\]:\d+ to \[[^\]]*\]:(?P<port>\d+)"
                             r"|\bconnect from [^\s\[]*\[(?P<ip2>[^\]]+)\]")
DOVECOT_CONNECT = re.compile(r"\b(?:imap|pop3|managesieve)-login: .*\brip=(?P<ip>[0-9a-fA-F.:]+)")


class RemoteError(Exception):
    pass


def _compose(target: Target) -> str:
    return f"docker compose --project-directory {shlex.quote(target.settings.home.mailcow_dir)}"


def _run(remote: Remote, script: str, target: Target) -> str:
    try:
        result = remote.run(script, timeout=max(target.timeout * 3, 15))
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{remote.name} did not answer within {max(target.timeout * 3, 15):.0f} s") from None
    except OSError as error:
        raise RemoteError(f"could not start `{remote.describe()}`: {error}") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RemoteError(f"on {remote.name} `{script.strip().splitlines()[0][:60]}` failed "
                          f"(exit {result.returncode}): {last}")
    return result.stdout


def _unreachable(id: str, title: str, remote: Remote | None, error: Exception | None = None) -> Finding:
    if remote is None:
        return skipped(id, title, "needs --ssh", "run the doctor with --ssh on a machine of your tailnet")
    return fail(id, title, str(error), f"check that `{remote.describe()} true` works (the key, "
                "sudo without a password, the host on the tailnet)")


def home_dkim(target: Target) -> tuple[str, str] | str | None:
    """Mailcow's DKIM selector and public key for the domain (Redis); None without --ssh;
    a sentence when they could not be read."""
    if target.home is None:
        return None
    domain = shlex.quote(target.settings.domain)
    # The password in redis-cli's environment, not on its command line.
    redis = 'REDISCLI_AUTH="${REDISPASS:-}" redis-cli --no-auth-warning'
    inner = f"{redis} HGET DKIM_SELECTORS {domain}; {redis} HGET DKIM_PUB_KEYS {domain}"
    try:
        out = _run(target.home, f"{_compose(target)} exec -T redis-mailcow sh -c {shlex.quote(inner)}\n", target)
    except RemoteError as error:
        return f"could not read Mailcow's DKIM key: {error}"
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if len(lines) != 2:
        return f"Mailcow has no DKIM key for {target.settings.domain}"
    return lines[0], lines[1]


def _probe(target: Target, service: catalogue.Service) -> str:
    """Open one session through the gateway and close it; '' when greeted."""
    try:
        with Session(target.public_ipv4, service.public_port, target.timeout) as sock:
            if service.implicit_tls:
                with client_context(None, False).wrap_socket(sock, server_hostname=target.settings.mail_hostname) as tls:
                    greet(Line(tls), service, full=False)
            else:
                line = Line(sock)
                greet(line, service, full=False)
                line.send("QUIT" if service.protocol in ("smtp", "pop3") else
                          "a LOGOUT" if service.protocol == "imap" else "LOGOUT")
        return ""
    except (OSError, ProtocolError) as error:
        return explain(error)


def _connects(text: str, service: catalogue.Service) -> list[tuple[str, str]]:
    """(line, client address) of every connection the service's daemon logged: Postfix's
    for SMTP (postscreen's only when it names the service's public or twin port), Dovecot's
    login process of the protocol otherwise."""
    found = []
    login = {"imap": "imap-login:", "pop3": "pop3-login:", "sieve": "managesieve-login:"}.get(service.protocol)
    for line in text.splitlines():
        if service.protocol == "smtp":
            match = POSTFIX_CONNECT.search(line)
            # postscreen names the port the client asked for: the PROXY header's (the public
            # port) behind the gateway, the twin's without a header.
            if match and match.group("port") and match.group("port") not in (str(service.public_port),
                                                                             str(service.home_port)):
                continue
        else:
            match = DOVECOT_CONNECT.search(line) if login and login in line else None
        if match:
            found.append((line, match.group("ip") or match.groupdict().get("ip2") or ""))
    return found


# What a twin listener logs when a session comes without a PROXY header (Postfix:
# "warning: haproxy read: ...", Dovecot: "haproxy: ..." errors); no client address in it.
NO_PROXY_HEADER = re.compile(r"haproxy read|haproxy\S*: .*(error|invalid|timeout|timed out)", re.I)


def real_address(target: Target, ports_down: frozenset[str] = frozenset()) -> list[Finding]:
    """`ports_down`: services whose public port did not answer; not probed again."""
    services = [s for s in target.settings.enabled_services if s.proxy_protocol]
    ids = [(f"real-address.{s.name}", f"your address reaches home on {s.public_port}") for s in services]
    if target.home is None:
        return [_unreachable(id, title, None) for id, title in ids]
    down = [fail(id, title, f"not probed: port {s.public_port} does not answer", f"fix port.{s.name} first")
            for s, (id, title) in zip(services, ids) if s.name in ports_down]
    services = [s for s in services if s.name not in ports_down]
    ids = [(id, title) for id, title in ids if id.split(".", 1)[1] not in ports_down]
    own = own_address(target)
    behind_nat = own is None or not is_public(own)
    # A duration, so home's own clock decides what is recent; older lines are in `seen`.
    logs = (f"{_compose(target)} logs --no-color --no-log-prefix --since {LOG_WINDOW} "
            "postfix-mailcow dovecot-mailcow 2>&1\n")
    findings, seen = down, set()
    try:
        seen.update(_run(target.home, logs, target).splitlines())
    except RemoteError as error:
        return [_unreachable(id, title, target.home, error) for id, title in ids]
    for service, (id, title) in zip(services, ids):
        problem = _probe(target, service)
        new: list[str] = []
        mine: list[tuple[str, str]] = []
        tunnel: list[tuple[str, str]] = []
        try:
            # The daemons log through a log service, a moment after the session: read
            # again until this session's line is there (bounded).
            for _ in range(LOG_READS):
                time.sleep(LOG_READ_PAUSE)
                text = _run(target.home, logs, target)
                fresh = [line for line in text.splitlines() if line not in seen]
                seen.update(fresh)
                new += fresh
                connects = _connects("\n".join(new), service)
                # Behind NAT this machine cannot know its public address: any client address
                # counts, but only for a probe that was greeted (its own session ended cleanly).
                mine = [(l, ip) for l, ip in connects if (ip == own if not behind_nat else is_public(ip) and not problem)]
                tunnel = [(l, ip) for l, ip in connects if is_tailnet(ip)]
                if mine or tunnel or any(NO_PROXY_HEADER.search(line) for line in new):
                    break
        except RemoteError as error:
            findings.append(_unreachable(id, title, target.home, error))
            continue
        if mine:
            note = "" if not behind_nat else " (this machine is behind NAT; that is its public address)"
            findings.append(ok(id, title, f"home logged {mine[0][1]}{note}"))
        elif any(NO_PROXY_HEADER.search(line) for line in new):
            findings.append(fail(id, title, "home's twin listener got no PROXY header: "
                                 + next(l for l in new if NO_PROXY_HEADER.search(l)).strip()[:160],
                                 f"nginx on the gateway must send proxy_protocol on {service.public_port} "
                                 "(`pulumi up` restores the gateway's config)"))
        elif tunnel:
            findings.append(fail(id, title, f"home logged the tunnel's address {tunnel[0][1]}, not yours",
                                 f"the PROXY header is missing: nginx on the gateway must send proxy_protocol "
                                 f"on {service.public_port} to the twin port {service.home_port} (`pulumi up` "
                                 "restores the gateway's config)"))
        else:
            findings.append(fail(id, title, "no log line for this connection at home" +
                                 (f" (the probe: {problem})" if problem else ""),
                                 f"the session never reached Mailcow's twin port {service.home_port} with a "
                                 "PROXY header: check the tunnel, nginx's proxy_protocol and the twin listener"))
    return findings


TUNNEL_PROBE = r"""
import json, socket, sys, threading
home, public, ports, timeout = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
out = {}
def probe(port, public_port, greets):
    try:
        s = socket.create_connection((home, port), timeout=timeout)
        s.settimeout(timeout)
        s.sendall(f"PROXY TCP4 {public} {home} 40000 {public_port}\r\n".encode())
        if greets:
            data = s.recv(200)
            out[port] = "greeted: " + data.decode(errors="replace").splitlines()[0][:40] if data else "closed without a greeting"
        else:
            s.settimeout(1)
            try:
                out[port] = "closed after the PROXY header" if s.recv(1) == b"" else "connected"
            except socket.timeout:
                out[port] = "connected"
        s.close()
    except OSError as e:
        out[port] = "error: " + (str(e) or e.__class__.__name__)
threads = [threading.Thread(target=probe, args=p) for p in ports]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


def tunnel(target: Target) -> list[Finding]:
    id, title = "tunnel", "the gateway reaches every twin port with a PROXY header"
    if target.gateway is None and target.home is not None:
        return [skipped(id, title, "the gateway's address is unknown",
                        "give --outputs (`pulumi stack output --json`) or --gateway-exec")]
    if target.gateway is None:
        return [_unreachable(id, title, None)]
    home = target.settings.home.tailnet_ip
    ports = [(s.home_port, s.public_port, not s.implicit_tls)
             for s in target.settings.enabled_services if s.proxy_protocol]
    args = " ".join(shlex.quote(a) for a in (home, target.public_ipv4, json.dumps(ports), str(target.timeout)))
    script = f"python3 - {args} <<'MAILGATE_DOCTOR'\n{TUNNEL_PROBE}\nMAILGATE_DOCTOR\n"
    try:
        result = json.loads(_run(target.gateway, script, target))
    except (RemoteError, json.JSONDecodeError) as error:
        return [_unreachable(id, title, target.gateway, error)]
    welcome = ("greeted: 220", "greeted: * OK", "greeted: +OK", 'greeted: "', "greeted: OK", "connected")
    bad = {p: r for p, r in result.items() if not r.startswith(welcome)}
    seen = "; ".join(f"{home}:{p} {r}" for p, r in result.items())
    if bad:
        return [fail(id, title, seen, f"the gateway cannot reach {home} on {', '.join(bad)}: check `tailscale "
                     "status` on both ends, that Mailcow publishes its twin ports on the home tailnet IP "
                     "(`pulumi up` sets them in mailcow.conf) and the tailnet policy's grant for tag:mailgw")]
    return [ok(id, title, seen)]


def home_filter(target: Target, gateway_tailnet_ip: str | None) -> list[Finding]:
    id, title = "home-filter", "the home filter admits only the gateway to the twin ports"
    if target.home is None:
        return [_unreachable(id, title, None)]
    chain = target.settings.names.home_twin_chain
    try:
        out = _run(target.home, f"iptables -w -t raw -S PREROUTING && echo --- && iptables -w -t raw -S {chain}\n", target)
    except RemoteError as error:
        return [fail(id, title, str(error), "restore it: `pulumi up` (the home step loads the filter and hooks it first "
                     "in raw PREROUTING)")]
    prerouting, _, live = out.partition("---")
    rules = [line for line in prerouting.splitlines() if line.startswith("-A ")]
    first = rules[0] if rules else "no rule"
    live_rules = [line.strip() for line in live.splitlines() if line.startswith("-A ")]
    fix = "restore it: `pulumi up` (the home step loads the filter and hooks it first in raw PREROUTING)"
    if first != f"-A PREROUTING -j {chain}":
        return [fail(id, title, f"raw PREROUTING starts with: {first}", fix)]
    if gateway_tailnet_ip:
        rendered = render_home_firewall(target.settings, Deployment(gateway_tailnet_ip=gateway_tailnet_ip))
        want = [line.strip() for line in rendered.splitlines() if line.startswith("-A ")]
        if live_rules != want:
            return [fail(id, title, f"{chain} differs from the rendered filter ({len(live_rules)} rules, "
                         f"{len(want)} expected)", fix)]
    seen = f"{chain} first in raw PREROUTING, {len(live_rules)} rules"
    if not gateway_tailnet_ip:
        return [warn(id, title, seen + "; not compared with the rendered filter",
                     "give --outputs (`pulumi stack output --json`): the rules name the gateway's tailnet IP")]
    return [ok(id, title, seen + ", as rendered")]


def relay_auth(target: Target) -> list[Finding]:
    """The credentials Postfix uses, tried on the relay from here: STARTTLS, AUTH, QUIT."""
    relay = target.settings.relay
    id, title = "relay-auth", f"{relay.host} accepts the relay login"
    if target.home is None:
        return [_unreachable(id, title, None)]
    try:
        text = _run(target.home, f"{_compose(target)} exec -T postfix-mailcow cat "
                    f"{POSTFIX_CONTAINER_CONF}/{RELAY_PASSWORD_MAP}\n", target)
    except RemoteError as error:
        return [_unreachable(id, title, target.home, error)]
    entries = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    fields = entries[0].split(None, 1) if entries else []
    if len(fields) != 2 or ":" not in fields[1]:
        return [fail(id, title, f"{RELAY_PASSWORD_MAP} at home is not in the form mailgate writes",
                     "restore it: `pulumi up`")]
    user, password = fields[1].strip().split(":", 1)
    try:
        code, answer = _auth(target, user, password)
    except (OSError, ProtocolError, ssl.SSLError) as error:
        return [fail(id, title, f"{relay.host}:{relay.port}: {error}",
                     f"check that {relay.host}:{relay.port} is reachable and its certificate verifies")]
    finally:
        password = ""
    seen = f"AUTH as {user}: {code} {answer[:60]}"
    if code == 235:
        return [ok(id, title, seen)]
    return [fail(id, title, seen, "the relay refused the login: set the relay's SMTP key (Brevo: SMTP & API > SMTP, "
                 "not an API key) with `pulumi config set --secret mailgate:relayPassword`, check "
                 "mailgate:relay.username, then `pulumi up`")]


def _auth(target: Target, user: str, password: str) -> tuple[int, str]:
    relay = target.settings.relay
    import dns.resolver

    host = relay.host
    if target.resolvers:  # the relay's name through the same resolver as every other lookup
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.lifetime = list(target.resolvers), target.timeout
        host = resolver.resolve(relay.host, "A")[0].to_text()
    context = client_context(target.ca_file, True)
    with connect(host, relay.port, target.timeout) as raw:
        sock = context.wrap_socket(raw, server_hostname=relay.host) if relay.port == 465 else raw
        line = Line(sock)
        code, _ = line.smtp_reply()
        line.send(f"EHLO {EHLO_NAME}")
        line.smtp_reply()
        if relay.port != 465:
            line.send("STARTTLS")
            code, text = line.smtp_reply()
            if code != 220:
                raise ProtocolError(f"STARTTLS answered {code} {' '.join(text)}")
            sock = context.wrap_socket(sock, server_hostname=relay.host)
            line = Line(sock)
            line.send(f"EHLO {EHLO_NAME}")
            line.smtp_reply()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        line.send(f"AUTH PLAIN {token}")
        code, text = line.smtp_reply()
        line.send("QUIT")
        return code, " ".join(text)


def queue(target: Target) -> list[Finding]:
    id, title = "queue", "nothing stuck in Postfix's queue"
    if target.home is None:
        return [_unreachable(id, title, None)]
    try:
        out = _run(target.home, f"{_compose(target)} exec -T postfix-mailcow postqueue -j\n", target)
    except RemoteError as error:
        return [_unreachable(id, title, target.home, error)]
    now, stuck, total = time.time(), [], 0
    for line in out.splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        total += 1
        age = now - float(message.get("arrival_time", now))
        if message.get("queue_name") == "deferred" and age > STUCK_AFTER.total_seconds():
            reasons = [r.get("delay_reason", "") for r in message.get("recipients", [])]
            stuck.append(f"{message.get('queue_id')} ({age / 3600:.1f} h): {reasons[0] if reasons else '?'}")
    if stuck:
        return [fail(id, title, f"{len(stuck)} deferred over {int(STUCK_AFTER.total_seconds() // 60)} min; "
                     + stuck[0][:160], "fix the reason shown (relay login, DNS, the recipient), then "
                     "`docker compose exec postfix-mailcow postqueue -f` to retry")]
    return [ok(id, title, f"{total} queued, none deferred over {int(STUCK_AFTER.total_seconds() // 60)} min")]
