"""The home files in the Mailcow checkout: Postfix extra.cf, the relay password map,
Dovecot extra.conf and mailcow.conf, each read back by the program that uses it."""

from __future__ import annotations

import pytest

from mailgate.deployment import Deployment
from mailgate.managed_block import markers
from mailgate.renderers.mailcow import (
    MAILCOW_SASL_MAP,
    block_keys,
    mailcow_variables,
    render_acme_dns_conf,
    render_dovecot_extra,
    render_mailcow_conf,
    render_postfix_extra,
    render_relay_password_map,
)
from mailgate.renderers.compose import render_compose_override
from tests.settings_variants import everything, variant
from tests.splice import Splicer
from tests.validators import compose_config, doveconf, postconf, postfix_check, postfix_config, postmap_query

USER_EXTRA_CF = "# my own tweak\nmessage_size_limit = 52428800\n"

BEGIN, END = markers("dev")


def test_postfix_takes_the_relay_settings_over_mailcows(dev_settings, tmp_path):
    conf = postfix_config(render_postfix_extra(dev_settings), tmp_path)
    effective = postconf(
        conf, "relayhost", "smtp_sasl_password_maps", "smtp_tls_security_level",
        "smtp_sasl_auth_soft_bounce", "smtp_sasl_auth_enable", "smtp_tls_wrappermode",
    )
    assert effective["relayhost"] == "[smtp-relay.brevo.com]:587"
    maps = [m.strip() for m in effective["smtp_sasl_password_maps"].split(",")]
    # Mailcow's per-sender credentials first, then ours.
    assert maps == [MAILCOW_SASL_MAP, "texthash:/opt/postfix/conf/mailgate_relay_passwd"]
    assert effective["smtp_tls_security_level"] == "encrypt"  # Mailcow's fixture says dane
    assert effective["smtp_sasl_auth_soft_bounce"] == "yes"  # Mailcow ships no
    assert effective["smtp_sasl_auth_enable"] == "yes"
    assert effective["smtp_tls_wrappermode"] == "no"


def test_postfix_check_accepts_the_result(dev_settings, tmp_path):
    postfix_check(postfix_config(render_postfix_extra(dev_settings), tmp_path))


def test_postconf_refuses_a_misspelt_parameter(dev_settings, tmp_path):
    conf = postfix_config(render_postfix_extra(dev_settings) + "smtp_tls_securty_level = encrypt\n", tmp_path)
    with pytest.raises(AssertionError, match="unused parameter: smtp_tls_securty_level"):
        postconf(conf, "-n")


def test_implicit_tls_relay_port_turns_on_wrapper_mode(dev_raw, tmp_path):
    settings = variant(dev_raw, relay__port=465)
    effective = postconf(postfix_config(render_postfix_extra(settings), tmp_path),
                         "relayhost", "smtp_tls_wrappermode")
    assert effective == {"relayhost": "[smtp-relay.brevo.com]:465", "smtp_tls_wrappermode": "yes"}


def test_relay_password_map_answers_for_the_relayhost(dev_settings, tmp_path):
    text = render_relay_password_map(dev_settings, "xsmtpsib-secret with space")
    assert postmap_query(text, "[smtp-relay.brevo.com]:587", tmp_path) == (
        "relay-login@example.com:xsmtpsib-secret with space"
    )


@pytest.mark.parametrize("password", ["", "line1\nline2", "abc\r"])
def test_relay_password_must_be_one_line(dev_settings, password):
    with pytest.raises(ValueError, match="mailgate:relayPassword must be one non-empty line"):
        render_relay_password_map(dev_settings, password)


def test_user_lines_in_extra_cf_are_kept_and_merging_is_idempotent(dev_settings, dev_raw, tmp_path):
    host = Splicer(tmp_path / "host")
    once = host.splice(USER_EXTRA_CF, render_postfix_extra(dev_settings))
    assert once.startswith(USER_EXTRA_CF)
    assert host.splice(once, render_postfix_extra(dev_settings)) == once
    changed = host.splice(once, render_postfix_extra(variant(dev_raw, relay__port=2525)))
    assert changed.count(BEGIN) == 1 and "[smtp-relay.brevo.com]:2525" in changed
    assert "]:587" not in changed
    effective = postconf(postfix_config(changed, tmp_path), "message_size_limit", "relayhost")
    assert effective == {"message_size_limit": "52428800", "relayhost": "[smtp-relay.brevo.com]:2525"}


def test_dovecot_trusts_proxy_headers_from_the_gateway_only(dev_settings, tmp_path):
    text = render_dovecot_extra(dev_settings, Deployment(gateway_tailnet_ip="100.101.102.103"))
    assert doveconf(text, tmp_path, "haproxy_trusted_networks").strip() == "100.101.102.103/32"
    assert "haproxy_trusted_networks = 100.101.102.103/32" in doveconf(text, tmp_path)


def test_doveconf_refuses_a_broken_extra_conf(tmp_path):
    with pytest.raises(AssertionError, match="doveconf refused"):
        doveconf("haproxy_trusted_netwrks = 100.64.0.1/32\n", tmp_path)


def test_dovecot_extra_keeps_user_settings(dev_settings, tmp_path):
    user = "mail_max_userip_connections = 50\n"
    text = Splicer(tmp_path / "host").splice(user, render_dovecot_extra(dev_settings, Deployment()))
    assert text.startswith(user)
    out = doveconf(text, tmp_path, "mail_max_userip_connections", "haproxy_trusted_networks")
    assert out.split() == ["50", "100.64.0.1/32"]


def test_mailcow_conf_publishes_each_enabled_twin_on_the_tailnet_ip(dev_settings):
    assert mailcow_variables(dev_settings) == {
        "SMTP_PORT_HAPROXY": "100.64.0.2:10025",
        "SMTPS_PORT_HAPROXY": "100.64.0.2:10465",
        "SUBMISSION_PORT_HAPROXY": "100.64.0.2:10587",
        "IMAP_PORT_HAPROXY": "100.64.0.2:10143",
        "IMAPS_PORT_HAPROXY": "100.64.0.2:10993",
        "SIEVE_PORT_HAPROXY": "100.64.0.2:14190",
        # ACME's HTTP-01 through the gateway (the default): Mailcow's own address check skipped.
        "SKIP_IP_CHECK": "y",
    }
    assert mailcow_variables(everything(dev_raw_of(dev_settings)))["SKIP_IP_CHECK"] == "y"


ACME_KEYS = ("SKIP_IP_CHECK", "ACME_DNS_CHALLENGE", "ACME_DNS_PROVIDER", "ACME_ACCOUNT_EMAIL",
             "ADDITIONAL_SAN", "AUTODISCOVER_SAN")


def acme_variables(dev_raw, **acme) -> dict[str, str]:
    variables = mailcow_variables(variant(dev_raw, acme=acme))
    return {key: value for key, value in variables.items() if key in ACME_KEYS}


def test_mailcow_conf_says_how_mailcow_gets_its_certificate(dev_raw):
    assert acme_variables(dev_raw, additionalSan=["webmail.example.com", "mail.example.org"],
                          autodiscoverSan=False) == {
        # No ACME_DNS_CHALLENGE: Mailcow's default, or a DNS-01 the user set up, stays.
        "SKIP_IP_CHECK": "y",
        "ADDITIONAL_SAN": "webmail.example.com,mail.example.org", "AUTODISCOVER_SAN": "n"}
    assert acme_variables(dev_raw, method="dns-01", dnsProvider="dns_cf", accountEmail="me@example.net",
                          additionalSan=["*.example.com", "example.com"]) == {
        "SKIP_IP_CHECK": "y", "ACME_DNS_CHALLENGE": "y", "ACME_DNS_PROVIDER": "dns_cf",
        "ACME_ACCOUNT_EMAIL": "me@example.net", "ADDITIONAL_SAN": "*.example.com,example.com"}
    # none: Mailcow's certificate settings stay the user's, and port 80 stays closed.
    assert acme_variables(dev_raw, method="none") == {}
    assert "http" not in [s.name for s in variant(dev_raw, acme={"method": "none"}).enabled_services]


def test_dns_01_conf_holds_the_credentials_one_quoted_line_each(dev_raw):
    settings = variant(dev_raw, acme={"method": "dns-01", "dnsProvider": "dns_cf", "accountEmail": "me@example.net"})
    text = render_acme_dns_conf(settings, {"CF_Token": 'tok "en" x', "CF_Account_ID": "abc"})
    body = text.splitlines()[1:-1]
    # Mailcow's loader takes one pair of surrounding quotes off: the value comes back whole.
    assert body == ['CF_Token="tok "en" x"', 'CF_Account_ID="abc"']
    assert block_keys(text) == ["CF_Token", "CF_Account_ID"]
    with pytest.raises(ValueError, match=r"acmeDnsCredentials\.CF_Token: expected a non-empty text of one line"):
        render_acme_dns_conf(settings, {"CF_Token": "a\nB=c"})
    with pytest.raises(ValueError, match=r"acmeDnsCredentials\.1BAD: not a variable name"):
        render_acme_dns_conf(settings, {"1BAD": "x"})
    # Without dns-01, the block holds no credential at all.
    assert block_keys(render_acme_dns_conf(variant(dev_raw), {"CF_Token": "x"})) == []


def dev_raw_of(settings):
    return settings.model_dump(by_alias=True, exclude_none=True)


MAILCOW_CONF = """\
MAILCOW_HOSTNAME=mail.example.com
DBPASS=not-a-real-password
SMTP_PORT_HAPROXY=127.0.0.1:10025
# SKIP_IP_CHECK=n
"""


def test_mailcow_conf_keeps_user_lines_and_the_block_value_wins(dev_settings, tmp_path):
    """An earlier line for one of the block's keys stays as it is: the block comes after
    it, and Compose reads the last value (as Mailcow's scripts do with `source`)."""
    merged = Splicer(tmp_path / "host").splice(MAILCOW_CONF, render_mailcow_conf(dev_settings))
    assert merged == MAILCOW_CONF + render_mailcow_conf(dev_settings)
    config = compose_config(render_compose_override(dev_settings), merged, tmp_path)
    ports = {f"{p.get('host_ip', '')}:{p['published']}" if isinstance(p, dict) else p
             for p in config["services"]["postfix-mailcow"]["ports"]}
    assert "100.64.0.2:10025:10025/tcp" in ports and not any("127.0.0.1" in p for p in ports)
