"""The port catalogue: every port mailgate forwards, declared once.

Security list rules, host firewall rules, nginx servers, Mailcow port bindings, the
Tailscale policy snippet, the lab and the README tables are all functions of SERVICES.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class IdleTimeout(Enum):
    """How long nginx lets a proxied session sit idle, per protocol family.

    Each is a little above what the protocol lets the endpoints wait, so Postfix and
    Dovecot, not the gateway, decide when an idle session ends.
    """

    # RFC 5321 4.5.3.2: a client may wait 10 min for the reply to the end of DATA.
    SMTP = 600
    # RFC 9051 5.4 / RFC 5804: autologout timer of at least 30 min.
    IMAP = 31 * 60
    # RFC 1939 3: autologout timer of at least 10 min.
    POP3 = 11 * 60
    WEB = 300

    @property
    def seconds(self) -> int:
        return self.value

    @property
    def proxy_buffer_size(self) -> str | None:
        """nginx's buffer per direction of a session where the stream module's 16k is not
        kept. IMAP's sessions sit idle for up to half an hour and are most of those held at
        a time: 2k takes an idle one from about 10 to under 6 kB of nginx's memory, for about
        1 ms more of nginx's CPU per MB fetched, with no throughput lost behind the tunnel
        (`lab tune`; docs/performance.md, tuning log). 4k saves no memory."""
        return "2k" if self is IdleTimeout.IMAP else None


@dataclass(frozen=True)
class Service:
    """One forwarded service: a public port on the gateway and where it lands at home."""

    name: str
    public_port: int
    home_port: int
    """Mailcow's PROXY-protocol twin listener (or its own web port for web services)."""
    proxy_protocol: bool
    container: str
    """The Mailcow compose service that listens on home_port."""
    mailcow_variable: str | None
    """mailcow.conf variable that publishes home_port (None: Mailcow publishes it)."""
    timeout: IdleTimeout
    default_enabled: bool
    group: str
    """'mail' services are chosen with mailgate:services, 'web' with mailgate:web.enabled,
    'acme' with mailgate:acme.method (or web.enabled)."""
    description: str
    srv: str | None = None
    """RFC 6186/8314/5804 SRV service label that lets mail clients find the port."""
    implicit_tls: bool = False
    """TLS from the first byte (the daemon greets only after the handshake)."""
    gateway_http: bool = False
    """Answered by the gateway's own nginx http server, not passed through as a stream: only
    ACME's challenge path reaches home_port, every other request is answered at the gateway."""
    protocol: str = "smtp"
    """What the port speaks (smtp, imap, pop3, sieve, http): how `mailgate doctor` greets it."""


MAIL = "mail"
WEB = "web"
ACME = "acme"
# The only path of Mailcow's web on port 80 the gateway passes home (RFC 8555 8.3).
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"

SERVICES: tuple[Service, ...] = (
    Service("smtp", 25, 10025, True, "postfix-mailcow", "SMTP_PORT_HAPROXY",
            IdleTimeout.SMTP, True, MAIL, "SMTP from other mail servers (MX, postscreen)"),
    Service("submissions", 465, 10465, True, "postfix-mailcow", "SMTPS_PORT_HAPROXY",
            IdleTimeout.SMTP, True, MAIL, "mail submission, implicit TLS", srv="submissions",
            implicit_tls=True),
    Service("submission", 587, 10587, True, "postfix-mailcow", "SUBMISSION_PORT_HAPROXY",
            IdleTimeout.SMTP, True, MAIL, "mail submission, STARTTLS", srv="submission"),
    Service("imap", 143, 10143, True, "dovecot-mailcow", "IMAP_PORT_HAPROXY",
            IdleTimeout.IMAP, True, MAIL, "IMAP, STARTTLS", srv="imap", protocol="imap"),
    Service("imaps", 993, 10993, True, "dovecot-mailcow", "IMAPS_PORT_HAPROXY",
            IdleTimeout.IMAP, True, MAIL, "IMAP, implicit TLS", srv="imaps", implicit_tls=True, protocol="imap"),
    Service("managesieve", 4190, 14190, True, "dovecot-mailcow", "SIEVE_PORT_HAPROXY",
            IdleTimeout.IMAP, True, MAIL, "ManageSieve filter upload (RFC 5804)", srv="sieve", protocol="sieve"),
    Service("pop3", 110, 10110, True, "dovecot-mailcow", "POP_PORT_HAPROXY",
            IdleTimeout.POP3, False, MAIL, "POP3, STARTTLS", srv="pop3", protocol="pop3"),
    Service("pop3s", 995, 10995, True, "dovecot-mailcow", "POPS_PORT_HAPROXY",
            IdleTimeout.POP3, False, MAIL, "POP3, implicit TLS", srv="pop3s", implicit_tls=True, protocol="pop3"),
    # Port 80 is the gateway's own http server: ACME's HTTP-01 challenge goes home to
    # Mailcow's web (no PROXY header: nginx-mailcow has no twin listener), nothing else does.
    Service("http", 80, 80, False, "nginx-mailcow", None,
            IdleTimeout.WEB, True, ACME, "ACME HTTP-01 challenges only; any other request is "
            "answered by the gateway", gateway_http=True, protocol="http"),
    # Mailcow's web has no PROXY twin: the stream is passed through as plain TCP.
    Service("https", 443, 443, False, "nginx-mailcow", None,
            IdleTimeout.WEB, False, WEB, "webmail, admin UI, autodiscover", implicit_tls=True, protocol="http"),
)

BY_NAME: dict[str, Service] = {service.name: service for service in SERVICES}
MAIL_SERVICE_NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES if s.group == MAIL)
DEFAULT_MAIL_SERVICES: tuple[str, ...] = tuple(
    s.name for s in SERVICES if s.group == MAIL and s.default_enabled
)
WEB_SERVICES: tuple[Service, ...] = tuple(s for s in SERVICES if s.group == WEB)
HTTP_SERVICE: Service = next(s for s in SERVICES if s.group == ACME)
STREAM_SERVICES: tuple[Service, ...] = tuple(s for s in SERVICES if not s.gateway_http)
PROXY_SERVICES: tuple[Service, ...] = tuple(s for s in SERVICES if s.proxy_protocol)

# Tailscale's default port for direct (peer-to-peer) WireGuard connections.
TAILSCALE_DIRECT_UDP_PORT = 41641
SSH_PORT = 22


def enabled(mail_service_names: tuple[str, ...], web_enabled: bool, http_port: bool) -> tuple[Service, ...]:
    """The services to forward, in catalogue order. `http_port`: the gateway answers port
    80 (ACME's HTTP-01, or web forwarding's redirect to HTTPS)."""
    chosen = set(mail_service_names)
    wanted = {MAIL: lambda s: s.name in chosen, WEB: lambda s: web_enabled, ACME: lambda s: http_port}
    return tuple(s for s in SERVICES if wanted[s.group](s))


def port_map(services: tuple[Service, ...]) -> list[dict[str, object]]:
    """The port map as plain data (a stack output and the `render` summary)."""
    return [
        {
            "service": s.name,
            "public_port": s.public_port,
            "home_port": s.home_port,
            "proxy_protocol": s.proxy_protocol,
            "idle_timeout_seconds": s.timeout.seconds,
            "only_path": ACME_CHALLENGE_PATH if s.gateway_http else None,
        }
        for s in services
    ]
