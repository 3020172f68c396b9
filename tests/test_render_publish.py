"""What the user publishes: DNS records and the tailnet policy snippet."""

from __future__ import annotations

import json
import re

from mailgate.deployment import Deployment
from mailgate.renderers.dns import dns_records, render_dns_records
from mailgate.renderers.tailscale_policy import render_policy_snippet
from tests.settings_variants import everything, variant


def by_type(records, record_type):
    return [r for r in records if r.type == record_type]


def test_records_point_mail_at_the_gateway(dev_settings):
    records = dns_records(dev_settings, Deployment(public_ipv4="203.0.113.10"))
    # mailHostname, then the other names of Mailcow's certificate (ACME checks each at the gateway).
    assert [(r.name, r.value) for r in by_type(records, "A")] == [
        ("mail.example.com", "203.0.113.10"), ("autoconfig.example.com", "203.0.113.10"),
        ("autodiscover.example.com", "203.0.113.10")]
    assert [(r.name, r.value) for r in by_type(records, "MX")] == [("example.com", "10 mail.example.com.")]
    txt = {r.name: r.value for r in by_type(records, "TXT") if not r.value.startswith("<")}
    assert txt["example.com"] == "v=spf1 include:spf.brevo.com ~all"
    assert txt["_dmarc.example.com"].startswith("v=DMARC1; p=quarantine;")
    assert not by_type(records, "AAAA")


def test_srv_records_follow_the_enabled_services(dev_raw):
    records = dns_records(variant(dev_raw, services=["smtp", "imaps", "submission"]), Deployment())
    assert [(r.name, r.value) for r in by_type(records, "SRV")] == [
        ("_submission._tcp.example.com", "0 1 587 mail.example.com."),
        ("_imaps._tcp.example.com", "0 1 993 mail.example.com."),
    ]


def test_ipv6_and_web_add_their_records(dev_raw):
    records = dns_records(everything(dev_raw), Deployment(public_ipv6="2001:db8::10"))
    assert [(r.name, r.value) for r in by_type(records, "AAAA")] == [
        (name, "2001:db8::10") for name in ("mail.example.com", "autoconfig.example.com", "autodiscover.example.com")]
    assert ("_autodiscover._tcp.example.com", "0 1 443 mail.example.com.") in [
        (r.name, r.value) for r in by_type(records, "SRV")]


def test_every_certificate_name_points_at_the_gateway_and_autodiscover_can_be_left_out(dev_raw):
    settings = variant(dev_raw, acme={"additionalSan": ["webmail.example.com", "mail.example.org"],
                                      "autodiscoverSan": False})
    records = dns_records(settings, Deployment(public_ipv4="203.0.113.10"))
    assert [r.name for r in by_type(records, "A")] == ["mail.example.com", "webmail.example.com", "mail.example.org"]
    assert not any(r.name.startswith("_autodiscover") for r in records)  # web forwarding is off


def test_placeholders_are_marked_for_the_user(dev_settings):
    text = render_dns_records(dns_records(dev_settings, Deployment()))
    assert "<gateway public IPv4>" in text
    assert text.splitlines()[0].startswith("; DNS records to publish")


def hujson(text: str) -> dict:
    return json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))


def test_policy_lets_only_the_gateway_tag_reach_the_twin_ports(dev_settings):
    policy = hujson(render_policy_snippet(dev_settings))
    assert policy["acls"] == [{
        "action": "accept", "src": ["tag:mailgw"],
        "dst": ["mailgate-home:10025,10465,10587,10143,10993,14190,80"],
    }, {
        # pulumi up reaches the gateway over the tailnet.
        "action": "accept", "src": ["autogroup:admin"], "dst": ["tag:mailgw:22"],
    }]
    assert policy["hosts"] == {"mailgate-home": "100.64.0.2/32"}
    assert policy["tagOwners"] == {"tag:mailgw": ["autogroup:admin"]}


def test_a_jump_through_the_gateway_is_allowed_only_when_asked_for(dev_raw, dev_settings):
    jump = {"action": "accept", "src": ["tag:mailgw"], "dst": ["mailgate-home:2222"]}
    assert jump not in hujson(render_policy_snippet(dev_settings))["acls"]
    settings = variant(dev_raw, home__viaGateway=True, home__sshPort=2222, home__sshHost="100.64.0.2")
    assert jump in hujson(render_policy_snippet(settings))["acls"]


def test_policy_names_the_home_tag_when_there_is_one(dev_raw):
    settings = variant(dev_raw, tailscale={"homeTag": "tag:mailhome"}, services=["smtp"])
    policy = hujson(render_policy_snippet(settings))
    assert policy["acls"][0]["dst"] == ["tag:mailhome:10025,80"]
    assert "hosts" not in policy
    assert set(policy["tagOwners"]) == {"tag:mailgw", "tag:mailhome"}


def test_an_admin_reaching_the_mini_pc_over_the_tailnet_keeps_its_ssh_port(dev_raw, dev_settings):
    """A managed policy is the whole policy: without this rule `pulumi up` run from an
    admin's machine could no longer reach the Mini PC it configures."""
    admin = {"action": "accept", "src": ["autogroup:admin"], "dst": ["mailgate-home:22"]}
    assert admin not in hujson(render_policy_snippet(dev_settings))["acls"]  # a LAN name
    over_tailnet = variant(dev_raw, home__sshHost="100.64.0.2")
    assert admin in hujson(render_policy_snippet(over_tailnet))["acls"]
    jump = variant(dev_raw, home__sshHost="100.64.0.2", home__viaGateway=True)
    assert admin not in hujson(render_policy_snippet(jump))["acls"]


def test_the_snippet_tells_the_user_to_delete_the_default_allow_all_rule(dev_settings):
    """A new tailnet's policy lets every device reach every other one; the snippet's rules
    restrict nothing until that rule is gone."""
    comments = [line for line in render_policy_snippet(dev_settings).splitlines() if line.startswith("//")]
    text = " ".join(comments)
    assert '{"action": "accept", "src": ["*"], "dst": ["*:*"]}' in text and "Delete it" in text
    assert '"dst": ["autogroup:self:*"]' in text and "mailgate:tailscale.homeTag" in text


def test_policy_tests_check_the_gateway_reaches_the_twins_and_nothing_else_at_home(dev_raw, dev_settings):
    [test] = hujson(render_policy_snippet(dev_settings))["tests"]
    assert test["src"] == "tag:mailgw"
    assert test["accept"] == [f"mailgate-home:{s.home_port}" for s in dev_settings.enabled_services]
    assert {"mailgate-home:22", "mailgate-home:25", "mailgate-home:587", "mailgate-home:443"} <= set(test["deny"])
    assert not set(test["accept"]) & set(test["deny"])
    # With the jump, the gateway reaches the Mini PC's SSH port: no longer denied.
    jump = variant(dev_raw, home__viaGateway=True, home__sshHost="100.64.0.2", home__sshPort=2222)
    [test] = hujson(render_policy_snippet(jump))["tests"]
    assert "mailgate-home:2222" not in test["deny"] and "mailgate-home:22" in test["deny"]


def test_a_managed_policy_never_cuts_the_runner_off_the_mini_pc(dev_raw):
    """A name in home.sshHost may be a MagicDNS one; the managed policy is the whole file."""
    managed = variant(dev_raw, tailscale={"manageAcl": True, "homeTag": "tag:mailhome"})
    acls = hujson(render_policy_snippet(managed))["acls"]
    assert {"action": "accept", "src": ["autogroup:admin"], "dst": ["tag:mailhome:22"]} in acls


def test_a_users_devices_are_tested_against_the_twin_ports_when_named(dev_raw, dev_settings):
    assert len(hujson(render_policy_snippet(dev_settings))["tests"]) == 1
    named = variant(dev_raw, tailscale={"policyTestUser": "you@example.com"})
    tests = hujson(render_policy_snippet(named))["tests"]
    assert tests[1] == {"src": "you@example.com", "deny": tests[0]["accept"]}


def test_with_bans_the_gateway_may_also_fetch_the_ban_list_from_mailcows_https_port(dev_raw):
    banning = variant(dev_raw, bans={"enabled": True, "homeHttpsPort": 8443})
    policy = hujson(render_policy_snippet(banning))
    assert policy["acls"][0]["dst"] == ["mailgate-home:10025,10465,10587,10143,10993,14190,80,8443"]
    [test] = policy["tests"]
    assert "mailgate-home:8443" in test["accept"] and "mailgate-home:443" in test["deny"]
    assert "HTTPS port 8443 (the ban list)" in render_policy_snippet(banning)
    # Off: not even that.
    assert "8443" not in render_policy_snippet(variant(dev_raw, bans={"homeHttpsPort": 8443}))
