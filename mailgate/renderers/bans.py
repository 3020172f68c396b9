"""The gateway's ban loader: its config (what to fetch, what to enforce, what never to
ban) and the systemd units that run it every bans.intervalSeconds
(mailgate/templates/scripts/banlist.py is the program)."""

from __future__ import annotations

import json
from pathlib import Path

from mailgate.deployment import Deployment
from mailgate.renderers.watch import PYTHON
from mailgate.settings import TAILNET_RANGES, Settings

BANLIST_PROGRAM = Path(__file__).resolve().parent.parent / "templates" / "scripts" / "banlist.py"
BANLIST_PATH = "/f2b-banlist"
NFT_TABLE = "mailgate_bans"
NFT = "/usr/sbin/nft"
FETCH_TIMEOUT_SECONDS = 10
LOOPBACK = ("127.0.0.0/8", "::1/128")


def never_banned(settings: Settings, deployment: Deployment) -> list[str]:
    """Sources the gateway never drops, whatever the list says."""
    own = [f"{address}/{32 if ':' not in address else 128}"
           for address in (deployment.public_ipv4, deployment.public_ipv6)
           if address and address[0].isalnum() and not address.startswith("<")]
    return [*LOOPBACK, *(str(network) for network in TAILNET_RANGES), settings.gateway.vcn_cidr,
            *settings.gateway.admin_cidrs, *own, *settings.bans.never_ban]


def banned_ports(settings: Settings) -> list[int]:
    """Every public port the gateway forwards: a banned source reaches none of them."""
    return [s.public_port for s in settings.enabled_services]


def render_banlist_config(settings: Settings, banlist_id: str | None, deployment: Deployment,
                          interval_seconds: int | None = None) -> str:
    config: dict = {"enabled": settings.bans_active and banlist_id is not None, "stack": settings.names.stack}
    if not config["enabled"]:
        return json.dumps(config, indent=2) + "\n"
    bans = settings.bans
    config.update({
        "host": settings.mail_hostname,
        "address": settings.home.tailnet_ip,
        "port": bans.home_https_port,
        "path": BANLIST_PATH,
        "id": banlist_id,
        "interval_seconds": interval_seconds or bans.interval_seconds,
        "timeout_seconds": FETCH_TIMEOUT_SECONDS,
        "max_prefix": {"4": bans.max_prefix_v4, "6": bans.max_prefix_v6},
        "max_entries": bans.max_entries,
        "never": never_banned(settings, deployment),
        "ports": banned_ports(settings),
        "table": NFT_TABLE,
        "nft": NFT,
    })
    return json.dumps(config, indent=2) + "\n"


def render_banlist_service(settings: Settings) -> str:
    names = settings.names
    return f"""# Rendered by mailgate: Mailcow's bans from home, loaded into the gateway's nft set.
[Unit]
Description=mailgate {names.stack}: load Mailcow's ban list
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
# An unprivileged user made for each run, allowed to change the firewall and nothing else;
# the root-only config (the ban-list id) reaches it as a credential.
DynamicUser=yes
AmbientCapabilities=CAP_NET_ADMIN
CapabilityBoundingSet=CAP_NET_ADMIN
LoadCredential=bans.json:{names.bans_config}
StateDirectory={names.bans_unit}
ExecStart={PYTHON} {names.bans_script}
TimeoutStartSec=120
ProtectSystem=strict
ProtectHome=yes
PrivateDevices=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
"""


def render_banlist_timer(settings: Settings) -> str:
    names, interval = settings.names, settings.bans.interval_seconds
    return f"""# Rendered by mailgate: runs {names.bans_unit}.service every {interval} s.
[Unit]
Description=mailgate {names.stack}: fetch Mailcow's ban list every {interval} s

[Timer]
OnBootSec=10s
OnUnitActiveSec={interval}s
AccuracySec=1s

[Install]
WantedBy=timers.target
"""

