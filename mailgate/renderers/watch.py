"""The watcher pair: what each end checks, where it sends its one alert, and the systemd
units that run it once a minute (mailgate/templates/scripts/watch.py is the program).

The gateway checks home's twin ports over the tunnel (a PROXY header first, as nginx
sends it); the Mini PC checks the gateway's public ports (not 25, which home lines
block outbound), i.e. the whole path a client takes. Only mail services are checked:
their daemons greet first, so "answers" means the daemon is there, not just a socket.
"""

from __future__ import annotations

import json
from pathlib import Path

from mailgate import catalogue
from mailgate.deployment import Deployment
from mailgate.settings import Settings

WATCH_PROGRAM = Path(__file__).resolve().parent.parent / "templates" / "scripts" / "watch.py"
GATEWAY_END, HOME_END = "gateway", "home"
CHECK_EVERY_SECONDS = 60
PROBE_TIMEOUT_SECONDS = 10
# The relay ports that speak TLS from the first byte; the others use STARTTLS.
IMPLICIT_TLS_RELAY_PORTS = (465,)
PYTHON = "/usr/bin/python3"


def watch_targets(settings: Settings, end: str, deployment: Deployment) -> list[dict]:
    mail = [s for s in settings.enabled_services if s.group == catalogue.MAIL]
    if end == GATEWAY_END:
        return [{"name": s.name, "host": settings.home.tailnet_ip, "port": s.home_port,
                 "proxy": s.proxy_protocol, "tls": s.implicit_tls} for s in mail]
    return [{"name": s.name, "host": deployment.public_ipv4, "port": s.public_port,
             "proxy": False, "tls": s.implicit_tls} for s in mail if s.public_port != 25]


def _advice(settings: Settings, end: str, deployment: Deployment) -> str:
    if end == GATEWAY_END:
        return (f"Senders keep mail for {settings.domain} queued and retry for a few days, then bounce "
                "it. Check the Mini PC: is it running, does `tailscale status` show it connected, "
                "do `docker compose ps` in the Mailcow directory list postfix-mailcow and "
                "dovecot-mailcow as running?")
    return (f"Nobody on the internet reaches {settings.mail_hostname} ({deployment.public_ipv4}). "
            "Check the gateway VM in Oracle's console: Oracle stops idle Always Free VMs (start it, "
            "or run `pulumi refresh` and `pulumi up`). If it runs, check `tailscale status` here "
            "and on the gateway.")


def render_watch_config(settings: Settings, end: str, deployment: Deployment, relay_password: str | None,
                        webhook_url: str | None = None, after_seconds: int | None = None) -> str:
    """The watcher's JSON config for one end. `relay_password`: the key that end sends
    its alert mail with (home: the relay's, gateway: its own; None: no mail channel)."""
    config: dict = {"enabled": settings.alerts.enabled, "stack": settings.names.stack, "end": end}
    if not settings.alerts.enabled:
        return json.dumps(config, indent=2) + "\n"
    relay = settings.relay
    channels: list[dict] = []
    if relay_password is not None:
        channels.append({
            "kind": "smtp", "host": relay.host, "port": relay.port,
            "tls": "implicit" if relay.port in IMPLICIT_TLS_RELAY_PORTS else "starttls",
            "username": relay.username, "password": relay_password,
            "from": settings.alert_sender, "to": settings.alerts.to, "helo": settings.mail_hostname,
        })
    if webhook_url is not None:
        channels.append({"kind": "webhook", "url": webhook_url})
    watched = ("home's mail ports over the tunnel" if end == GATEWAY_END
               else f"the gateway's public address {deployment.public_ipv4}")
    config.update({
        "watched": watched,
        "targets": watch_targets(settings, end, deployment),
        "timeout_seconds": PROBE_TIMEOUT_SECONDS,
        "after_seconds": after_seconds if after_seconds is not None else settings.alerts.after_minutes * 60,
        "advice": _advice(settings, end, deployment),
        "channels": channels,
    })
    return json.dumps(config, indent=2) + "\n"


def render_watch_service(settings: Settings, end: str) -> str:
    names = settings.names
    other = "the Mini PC" if end == GATEWAY_END else "the gateway"
    return f"""# Rendered by mailgate: is {other} answering? One alert mail when it is not.
[Unit]
Description=mailgate {names.stack}: watch {other}
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
# An unprivileged user made for each run; the root-only config reaches it as a credential.
DynamicUser=yes
LoadCredential=watch.json:{names.watch_config}
StateDirectory={names.watch_unit}
ExecStart={PYTHON} {names.watch_script}
TimeoutStartSec={CHECK_EVERY_SECONDS * 2}
ProtectSystem=strict
ProtectHome=yes
PrivateDevices=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
"""


def render_watch_timer(settings: Settings) -> str:
    names = settings.names
    return f"""# Rendered by mailgate: runs {names.watch_unit}.service once a minute.
[Unit]
Description=mailgate {names.stack}: run the watcher every {CHECK_EVERY_SECONDS} s

[Timer]
OnBootSec=2min
OnUnitActiveSec={CHECK_EVERY_SECONDS}s
AccuracySec=5s

[Install]
WantedBy=timers.target
"""
