"""The home files inside the Mailcow checkout that Mailcow keeps for its users.

mailcow.conf variables, Dovecot's extra.conf and Postfix's extra.cf are shared with the
user: mailgate writes a marked block (see managed_block) and leaves the rest alone.
"""

from __future__ import annotations

from mailgate.deployment import Deployment
from mailgate.managed_block import merge_block
from mailgate.settings import Settings

# Inside the postfix-mailcow container, data/conf/postfix is mounted here.
POSTFIX_CONTAINER_CONF = "/opt/postfix/conf"
RELAY_PASSWORD_MAP = "mailgate_relay_passwd"
# Mailcow's own per-sender relay credentials; it must stay first in the list.
MAILCOW_SASL_MAP = f"proxy:mysql:{POSTFIX_CONTAINER_CONF}/sql/mysql_sasl_passwd_maps_sender_dependent.cf"


def mailcow_variables(settings: Settings) -> dict[str, str]:
    """mailcow.conf variables: each enabled twin port published on the tailnet IP only."""
    variables = {
        s.mailcow_variable: f"{settings.home.tailnet_ip}:{s.home_port}"
        for s in settings.enabled_services
        if s.mailcow_variable
    }
    if settings.web.enabled:
        # acme-mailcow compares the A record with the home line's own address, which is
        # not the gateway's; skip that check.
        variables["SKIP_IP_CHECK"] = "y"
    return variables


def render_mailcow_conf(settings: Settings, existing: str | None = None) -> str:
    """mailcow.conf with mailgate's block; earlier lines setting the same keys are
    commented out so there is one value for each key."""
    variables = mailcow_variables(settings)
    kept = []
    for line in (existing or "").splitlines(keepends=True):
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in variables:
            line = f"#mailgate# {line}"
        kept.append(line)
    body = "\n".join(f"{key}={value}" for key, value in variables.items())
    return merge_block("".join(kept) or None, body, settings.names.stack)


def relay_host_key(settings: Settings) -> str:
    """The relayhost value, which is also the key of the password map."""
    return f"[{settings.relay.host}]:{settings.relay.port}"


def render_postfix_extra(settings: Settings, existing: str | None = None) -> str:
    relay = settings.relay
    lines = [
        f"relayhost = {relay_host_key(settings)}",
        "smtp_sasl_auth_enable = yes",
        "smtp_sasl_security_options = noanonymous",
        "smtp_sasl_tls_security_options = noanonymous",
        f"smtp_sasl_password_maps = {MAILCOW_SASL_MAP},"
        f" texthash:{POSTFIX_CONTAINER_CONF}/{RELAY_PASSWORD_MAP}",
        # Never hand mail to the relay in clear text.
        "smtp_tls_security_level = encrypt",
        # A wrong or revoked key must defer mail, not bounce it (Mailcow ships 'no').
        "smtp_sasl_auth_soft_bounce = yes",
    ]
    if relay.port == 465:
        lines.append("smtp_tls_wrappermode = yes")
    return merge_block(existing, "\n".join(lines), settings.names.stack)


def render_relay_password_map(settings: Settings, password: str) -> str:
    if not password or "\n" in password or "\r" in password:
        raise ValueError("mailgate:relayPassword must be one non-empty line")
    return f"{relay_host_key(settings)} {settings.relay.username}:{password}\n"


def render_dovecot_extra(settings: Settings, deployment: Deployment, existing: str | None = None) -> str:
    # Dovecot honours a PROXY header only from these networks; others are dropped.
    return merge_block(existing, f"haproxy_trusted_networks = {deployment.gateway_tailnet_ip}/32",
                       settings.names.stack)


def render_docker_after_tailscale(firewall_rules: str, chain: str) -> str:
    """systemd drop-in for docker.service: start after tailscaled, and re-load the
    twin-port firewall each time dockerd (re)creates its DOCKER-USER chain.

    Nothing here may stop Docker: the `-` prefix makes systemd record a failing command
    and carry on (systemd.service(5)), and `-w` waits for the xtables lock that dockerd
    itself holds while it sets up its chains, instead of failing at once."""
    return (
        "# Rendered by mailgate. The twin ports bind to the tailnet address even before it\n"
        "# exists (the nonlocal-bind file in /etc/sysctl.d). A failing command below never\n"
        "# stops Docker ('-'), and iptables waits for the xtables lock ('-w').\n"
        "[Unit]\n"
        "After=tailscaled.service\n"
        "Wants=tailscaled.service\n"
        "\n"
        "[Service]\n"
        f"ExecStartPost=-/bin/sh -c 'iptables-restore -w --noflush {firewall_rules} && "
        f"(iptables -w -C DOCKER-USER -j {chain} 2>/dev/null || iptables -w -I DOCKER-USER -j {chain})'\n"
    )


def published_twin_ports(settings: Settings) -> dict[str, list[str]]:
    """Compose service -> port mappings that publish the enabled twin ports."""
    ports: dict[str, list[str]] = {}
    for service in settings.enabled_services:
        if service.mailcow_variable:
            mapping = (
                f"${{{service.mailcow_variable}:?set by mailgate in mailcow.conf}}"
                f":{service.home_port}"
            )
            ports.setdefault(service.container, []).append(mapping)
    return ports


def container_port(mapping: str) -> str:
    """'${VAR:-127.0.0.1:10025}:10025' or '127.0.0.1:10025:10025/tcp' -> '10025'."""
    return mapping.rsplit(":", 1)[-1].split("/", 1)[0]

