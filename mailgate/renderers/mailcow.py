"""The home files inside the Mailcow checkout that Mailcow keeps for its users.

mailcow.conf variables, Dovecot's extra.conf and Postfix's extra.cf are shared with the
user and with Mailcow: mailgate renders only its marked block (see managed_block), which
the host splices into the live file.
"""

from __future__ import annotations

from mailgate.deployment import Deployment
from mailgate.managed_block import block_text
from mailgate.settings import ACME_CREDENTIALS, NAMESPACE, Settings, acme_credentials_problems

# Inside the postfix-mailcow container, data/conf/postfix is mounted here.
POSTFIX_CONTAINER_CONF = "/opt/postfix/conf"
RELAY_PASSWORD_MAP = "mailgate_relay_passwd"
# Mailcow's own per-sender relay credentials; it must stay first in the list.
MAILCOW_SASL_MAP = f"proxy:mysql:{POSTFIX_CONTAINER_CONF}/sql/mysql_sasl_passwd_maps_sender_dependent.cf"


def mailcow_variables(settings: Settings) -> dict[str, str]:
    """mailcow.conf variables: each enabled twin port published on the tailnet IP only, and
    how Mailcow's acme container gets its certificate (mailgate:acme)."""
    variables = {
        s.mailcow_variable: f"{settings.home.tailnet_ip}:{s.home_port}"
        for s in settings.enabled_services
        if s.mailcow_variable
    }
    acme = settings.acme
    if acme.method != "none" or settings.web.enabled:
        # acme-mailcow compares each name's A record with the home line's own address,
        # which behind the gateway it never is; skip that check.
        variables["SKIP_IP_CHECK"] = "y"
    if acme.method == "none":
        return variables
    if acme.method == "dns-01":
        variables["ACME_DNS_CHALLENGE"] = "y"
        variables["ACME_DNS_PROVIDER"] = acme.dns_provider
        variables["ACME_ACCOUNT_EMAIL"] = acme.account_email
    # http-01 writes no ACME_DNS_CHALLENGE: Mailcow's default is HTTP-01, and a DNS-01 the
    # user set up in their own lines keeps working (its names may be wildcards).
    # Unset keys leave Mailcow's own line (or the user's) in force.
    if acme.additional_san is not None:
        variables["ADDITIONAL_SAN"] = ",".join(acme.additional_san)
    if acme.autodiscover_san is not None:
        variables["AUTODISCOVER_SAN"] = "y" if acme.autodiscover_san else "n"
    return variables


def render_mailcow_conf(settings: Settings) -> str:
    """mailgate's block in mailcow.conf. An earlier line setting one of its keys (Mailcow
    writes SKIP_IP_CHECK=n) may stay: Compose's .env and Mailcow's scripts (`source`) take
    the last value. The host refuses a later one, which would win."""
    body = "\n".join(f"{key}={value}" for key, value in mailcow_variables(settings).items())
    return block_text(body, settings.names.stack)


def relay_host_key(settings: Settings) -> str:
    """The relayhost value, which is also the key of the password map."""
    return f"[{settings.relay.host}]:{settings.relay.port}"


def render_acme_dns_conf(settings: Settings, credentials: dict[str, str] | None) -> str:
    """mailgate's block in data/conf/acme/dns-01.conf, which Mailcow's acme container reads
    line by line (KEY=value, one pair of surrounding quotes taken off). `credentials`: the
    secret mailgate:acmeDnsCredentials, None for a render (a placeholder line then)."""
    if settings.acme.method != "dns-01":
        body = "# mailgate:acme.method is not dns-01: mailgate gives Mailcow no DNS credentials."
    elif credentials is None:
        body = (f"# <{settings.acme.dns_provider}'s variables: pulumi config set --secret --path "
                f"'{NAMESPACE}:{ACME_CREDENTIALS}.<NAME>' <value>>")
    else:
        problems = acme_credentials_problems(credentials)
        if problems:
            raise ValueError("; ".join(problems))
        body = "\n".join(f'{name}="{value}"' for name, value in credentials.items())
    return block_text(body, settings.names.stack)


def render_postfix_extra(settings: Settings) -> str:
    """mailgate's block in extra.cf (Postfix, too, takes the last value of a parameter)."""
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
    return block_text("\n".join(lines), settings.names.stack)


def render_relay_password_map(settings: Settings, password: str) -> str:
    if not password or "\n" in password or "\r" in password:
        raise ValueError("mailgate:relayPassword must be one non-empty line")
    return f"{relay_host_key(settings)} {settings.relay.username}:{password}\n"


def render_dovecot_extra(settings: Settings, deployment: Deployment) -> str:
    # Dovecot honours a PROXY header only from these networks; others are dropped.
    return block_text(f"haproxy_trusted_networks = {deployment.gateway_tailnet_ip}/32", settings.names.stack)


def block_keys(block: str) -> list[str]:
    """The keys a block sets (`KEY=value`, `key = value`), which no later line may set."""
    return [line.split("=", 1)[0].strip() for line in block.splitlines()
            if "=" in line and not line.lstrip().startswith("#")]


def render_docker_after_tailscale(firewall_rules: str, firewall_rules_v6: str, chain: str) -> str:
    """systemd drop-in for docker.service: start after tailscaled, and load the twin-port
    filter (raw PREROUTING, IPv4 and IPv6) each time dockerd starts, every boot included:
    the raw table survives Docker and tailscaled restarts, not a reboot, and nothing else
    saves it.

    Nothing here may stop Docker: the `-` prefix makes systemd record a failing command
    and carry on (systemd.service(5)), and `-w` waits for the xtables lock that dockerd
    itself holds while it sets up its chains, instead of failing at once. IPv4 and IPv6
    are separate lines, so a host without IPv6 still gets the IPv4 filter."""
    def load(tool: str, rules: str) -> str:
        return (f"ExecStartPost=-/bin/sh -c '{tool}-restore -w --noflush {rules} && "
                f"({tool} -w -t raw -C PREROUTING -j {chain} 2>/dev/null || "
                f"{tool} -w -t raw -I PREROUTING -j {chain})'\n")

    return (
        "# Rendered by mailgate. The twin ports bind to the tailnet address even before it\n"
        "# exists (the nonlocal-bind file in /etc/sysctl.d). A failing command below never\n"
        "# stops Docker ('-'), and iptables waits for the xtables lock ('-w').\n"
        "[Unit]\n"
        "After=tailscaled.service\n"
        "Wants=tailscaled.service\n"
        "\n"
        "[Service]\n"
        + load("iptables", firewall_rules)
        + load("ip6tables", firewall_rules_v6)
    )
