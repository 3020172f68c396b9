"""Every file mailgate lays down: which host, which path, which renderer, which mode.

The render command writes this tree for review; the Pulumi components ship the same
entries to the hosts; the lab runs them. Secrets come in as plain strings here: the
render command passes placeholders, `pulumi up` passes values inside secret Outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from mailgate.deployment import Deployment
from mailgate.renderers.cloud_init import render_cloud_init
from mailgate.renderers.compose import render_compose_override
from mailgate.renderers.bans import (
    BANLIST_PROGRAM,
    render_banlist_config,
    render_banlist_service,
    render_banlist_timer,
)
from mailgate.renderers.dns import dns_records, render_dns_records
from mailgate.renderers.firewall import render_gateway_firewall, render_home_firewall, render_home_firewall_v6
from mailgate.renderers.mailcow import (
    RELAY_PASSWORD_MAP,
    render_docker_after_tailscale,
    render_dovecot_extra,
    render_mailcow_conf,
    render_acme_dns_conf,
    render_postfix_extra,
    render_relay_password_map,
)
from mailgate.renderers.nginx import render_nginx_http, render_nginx_stream
from mailgate.renderers.sysctl import render_nonlocal_bind_sysctl
from mailgate.renderers.tailscale_policy import render_policy_snippet
from mailgate.renderers.watch import (
    GATEWAY_END,
    HOME_END,
    WATCH_PROGRAM,
    render_watch_config,
    render_watch_service,
    render_watch_timer,
)
from mailgate.settings import Settings

GATEWAY, HOME, PUBLISH = "gateway", "home", "publish"
BLOCK, COMPOSE = "block", "compose"

# Where the home-side files sit relative to the Mailcow checkout.
COMPOSE_OVERRIDE = "docker-compose.override.yml"
MAILCOW_CONF = "mailcow.conf"
DOVECOT_EXTRA = "data/conf/dovecot/extra.conf"
POSTFIX_EXTRA = "data/conf/postfix/extra.cf"
POSTFIX_RELAY_MAP = f"data/conf/postfix/{RELAY_PASSWORD_MAP}"
# Mailcow's acme container reads its DNS provider's credentials here (mounted at /etc/acme).
ACME_DNS_CONF = "data/conf/acme/dns-01.conf"
# The packaged nginx.conf stays as the package left it (replacing it makes upgrades prompt
# or hold); it includes modules-enabled/*.conf at the top level, after the module loaders.
NGINX_PACKAGED_CONF = "/etc/nginx/nginx.conf"
NGINX_STREAM = "/etc/nginx/modules-enabled/70-mailgate-stream.conf"
# Port 80's server, inside the packaged http block (Debian's and Ubuntu's nginx.conf
# include conf.d/*.conf there). Always laid down: a comment alone when port 80 is closed.
NGINX_HTTP = "/etc/nginx/conf.d/70-mailgate-http.conf"
GATEWAY_FIREWALL_V4 = "/etc/iptables/mailgate.rules.v4"
GATEWAY_FIREWALL_V6 = "/etc/iptables/mailgate.rules.v6"
CLOUD_INIT = "cloud-init/user-data.yaml"

PASSWORD_PLACEHOLDER = "<relay password: pulumi config set --secret mailgate:relayPassword>"
BANLIST_ID_PLACEHOLDER = "<Mailcow's ban-list id: pulumi config set --secret mailgate:banlistId>"
ALERT_KEY_PLACEHOLDER = "<the gateway's own relay key: pulumi config set --secret mailgate:alertsRelayPassword>"


@dataclass(frozen=True)
class RenderedFile:
    host: str
    """gateway, home, or publish (not laid down anywhere: for the user to copy)."""
    path: str
    """Absolute path on the host (cloud-init: where it travels, relative)."""
    text: str
    mode: int = 0o644
    secret: bool = False
    splice: str = ""
    """A home file shared with Mailcow and its user: BLOCK (key = value lines) or COMPOSE
    (the override). `text` is then mailgate's block alone, which the host splices into
    the live file at each run (see managed_block); `mode` is for a file it creates."""


@dataclass(frozen=True)
class Secrets:
    relay_password: str = PASSWORD_PLACEHOLDER
    bootstrap_url: str | None = None
    """The bootstrap bucket's read-only URL (None: a placeholder naming the stack's bucket)."""
    alerts_relay_password: str | None = ALERT_KEY_PLACEHOLDER
    """The gateway's own relay key for its alerts (None: not configured)."""
    alerts_webhook_url: str | None = None
    banlist_id: str | None = BANLIST_ID_PLACEHOLDER
    """Mailcow's ban-list id (None: not configured)."""
    acme_dns_credentials: dict[str, str] | None = None
    """The DNS provider's API credentials for dns-01 (None: a placeholder line)."""


def home_path(settings: Settings, relative: str) -> str:
    return str(PurePosixPath(settings.home.mailcow_dir) / relative)


def watch_files(settings: Settings, host: str, config: str) -> list[RenderedFile]:
    """The watcher on `host`: the program, its config (secret: it holds a relay key), and
    the units that run it. Laid down with alerts off too (the timer then stays off), so
    that turning alerts off is a change of files like any other."""
    names = settings.names
    end = GATEWAY_END if host == GATEWAY else HOME_END
    return [
        RenderedFile(host, names.watch_script, WATCH_PROGRAM.read_text(), 0o755),
        RenderedFile(host, names.watch_config, config, 0o600, secret=True),
        RenderedFile(host, names.watch_unit_path("service"), render_watch_service(settings, end)),
        RenderedFile(host, names.watch_unit_path("timer"), render_watch_timer(settings)),
    ]


def ban_files(settings: Settings, config: str) -> list[RenderedFile]:
    """The gateway's ban loader, laid down with bans off too (its timer then stays off)."""
    names = settings.names
    return [
        RenderedFile(GATEWAY, names.bans_script, BANLIST_PROGRAM.read_text(), 0o755),
        RenderedFile(GATEWAY, names.bans_config, config, 0o600, secret=True),
        RenderedFile(GATEWAY, names.bans_unit_path("service"), render_banlist_service(settings)),
        RenderedFile(GATEWAY, names.bans_unit_path("timer"), render_banlist_timer(settings)),
    ]


def gateway_files(settings: Settings, secrets: Secrets = Secrets(),
                  deployment: Deployment = Deployment()) -> list[RenderedFile]:
    files = [
        RenderedFile(GATEWAY, CLOUD_INIT, render_cloud_init(settings, secrets.bootstrap_url or (
            f"https://objectstorage.region.oraclecloud.com/p/placeholder-created-by-pulumi-up"
            f"/n/namespace/b/{settings.names.bootstrap_bucket}/o/")),
                     0o600, secret=True),
        RenderedFile(GATEWAY, NGINX_STREAM, render_nginx_stream(settings)),
        RenderedFile(GATEWAY, NGINX_HTTP, render_nginx_http(settings)),
        RenderedFile(GATEWAY, GATEWAY_FIREWALL_V4, render_gateway_firewall(settings, 4), 0o640),
    ]
    if settings.gateway.ipv6:
        files.append(RenderedFile(GATEWAY, GATEWAY_FIREWALL_V6,
                                  render_gateway_firewall(settings, 6), 0o640))
    files += watch_files(settings, GATEWAY, render_watch_config(
        settings, GATEWAY_END, deployment, secrets.alerts_relay_password, secrets.alerts_webhook_url))
    files += ban_files(settings, render_banlist_config(settings, secrets.banlist_id, deployment))
    return files


def home_files(settings: Settings, deployment: Deployment, secrets: Secrets = Secrets()) -> list[RenderedFile]:
    """Shared files hold mailgate's block only: each is the whole file where the host has
    none, and is spliced into the one it has."""
    names = settings.names
    return [
        RenderedFile(HOME, home_path(settings, COMPOSE_OVERRIDE), render_compose_override(settings),
                     splice=COMPOSE),
        RenderedFile(HOME, home_path(settings, MAILCOW_CONF), render_mailcow_conf(settings), 0o600, splice=BLOCK),
        RenderedFile(HOME, home_path(settings, DOVECOT_EXTRA), render_dovecot_extra(settings, deployment),
                     splice=BLOCK),
        RenderedFile(HOME, home_path(settings, POSTFIX_EXTRA), render_postfix_extra(settings), splice=BLOCK),
        RenderedFile(HOME, home_path(settings, ACME_DNS_CONF),
                     render_acme_dns_conf(settings, secrets.acme_dns_credentials), 0o600, secret=True,
                     splice=BLOCK),
        RenderedFile(HOME, home_path(settings, POSTFIX_RELAY_MAP),
                     render_relay_password_map(settings, secrets.relay_password), 0o640, secret=True),
        RenderedFile(HOME, names.home_firewall_path, render_home_firewall(settings, deployment), 0o640),
        RenderedFile(HOME, names.home_firewall_v6_path, render_home_firewall_v6(settings), 0o640),
        RenderedFile(HOME, names.docker_drop_in,
                     render_docker_after_tailscale(names.home_firewall_path, names.home_firewall_v6_path,
                                                   names.home_twin_chain)),
        RenderedFile(HOME, names.home_nonlocal_bind_sysctl, render_nonlocal_bind_sysctl(names.stack)),
        *watch_files(settings, HOME, render_watch_config(
            settings, HOME_END, deployment, secrets.relay_password, secrets.alerts_webhook_url)),
    ]


def publish_files(settings: Settings, deployment: Deployment) -> list[RenderedFile]:
    return [
        RenderedFile(PUBLISH, "dns-records.txt", render_dns_records(dns_records(settings, deployment))),
        RenderedFile(PUBLISH, "tailscale-policy.hujson", render_policy_snippet(settings)),
    ]


def all_files(settings: Settings, deployment: Deployment, secrets: Secrets = Secrets()) -> list[RenderedFile]:
    return (
        gateway_files(settings, secrets)
        + home_files(settings, deployment, secrets)
        + publish_files(settings, deployment)
    )
