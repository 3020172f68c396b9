"""The settings models: every invalid value is reported by the key path the user types."""

from __future__ import annotations

import copy

import pytest

from mailgate.config_report import ConfigError
from mailgate.settings import acme_credentials_problems, load_settings


def problems(dev_raw, mutate) -> list[str]:
    raw = copy.deepcopy(dev_raw)
    mutate(raw)
    with pytest.raises(ConfigError) as error:
        load_settings(raw, stack="dev")
    return error.value.problems


def set_path(path: str, value):
    """set_path('gateway.adminCidrs[1]', x) -> a mutator for a raw config dict."""

    def mutate(raw):
        node, parts = raw, path.replace("]", "").replace("[", ".").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def delete_path(path: str):
    def mutate(raw):
        node, parts = raw, path.split(".")
        for part in parts[:-1]:
            node = node[part]
        del node[parts[-1]]

    return mutate


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("domain", "example", "mailgate:domain: 'example' is not a fully qualified DNS name"),
        ("domain", 42, "mailgate:domain: Input should be a valid string"),
        ("mailHostname", "mail.example.org", "mailgate:mailHostname: mail.example.org is not under the domain example.com"),
        ("mailHostname", "example.com", "mailgate:mailHostname: example.com is not under the domain"),
        ("gateway.compartmentId", "ocid1.instance.oc1..abc", "mailgate:gateway.compartmentId: 'ocid1.instance.oc1..abc' is not a compartment OCID"),
        ("gateway.shape", "VM.Standard.A2.Flex", "mailgate:gateway.shape: unknown shape 'VM.Standard.A2.Flex'; expected one of VM.Standard.A1.Flex"),
        ("gateway.ocpus", 5, "mailgate:gateway.ocpus: 5 OCPUs is outside what VM.Standard.A1.Flex allows here; expected 1 to 4 OCPUs (Always Free)"),
        ("gateway.ocpus", 0.5, "mailgate:gateway.ocpus: 0.5 OCPUs is outside"),
        ("gateway.ocpus", "two", "mailgate:gateway.ocpus: Input should be a valid number"),
        ("gateway.memoryInGbs", 25, "mailgate:gateway.memoryInGbs: 25 GB is outside what VM.Standard.A1.Flex allows with 1 OCPU(s); expected 1 to 24 GB (Always Free)"),
        ("gateway.bootVolumeSizeInGbs", 20, "mailgate:gateway.bootVolumeSizeInGbs: 20 GB is outside what OCI allows; expected 50 to 200 GB (Always Free)"),
        ("gateway.bootVolumeSizeInGbs", 300, "mailgate:gateway.bootVolumeSizeInGbs: 300 GB is outside what OCI allows; expected 50 to 200 GB"),
        ("gateway.imageId", "ocid1.compartment.oc1..abc", "mailgate:gateway.imageId: 'ocid1.compartment.oc1..abc' is not an image OCID"),
        ("gateway.availabilityDomain", "AD-1", "mailgate:gateway.availabilityDomain: 'AD-1' is not an availability domain name"),
        ("gateway.sshPublicKeys", [], "mailgate:gateway.sshPublicKeys: List should have at least 1 item"),
        ("gateway.sshPublicKeys[0]", "ssh-ed25519 AAAA", "mailgate:gateway.sshPublicKeys[0]: the key's data is not a ssh-ed25519 key"),
        ("gateway.sshPublicKeys[0]", "ssh-ed25519 !!!notbase64", "mailgate:gateway.sshPublicKeys[0]: the key's base64 part does not decode"),
        ("gateway.sshPublicKeys[0]", "ecdsa AAAAC3Nz", "mailgate:gateway.sshPublicKeys[0]: not an OpenSSH public key"),
        ("gateway.sshPublicKeys[0]", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----",
         "mailgate:gateway.sshPublicKeys[0]: this is a private key"),
        ("gateway.adminCidrs[1]", "0.0.0.0/0", "mailgate:gateway.adminCidrs[1]: 0.0.0.0/0 would open SSH to the whole internet"),
        ("gateway.adminCidrs[0]", "::/0", "mailgate:gateway.adminCidrs[0]: ::/0 would open SSH to the whole internet"),
        ("gateway.adminCidrs[0]", "0.0.0.0/1", "mailgate:gateway.adminCidrs[0]: 0.0.0.0/1 is too wide for an admin network"),
        ("gateway.adminCidrs[0]", "198.51.100.7/24", "mailgate:gateway.adminCidrs[0]: '198.51.100.7/24' has host bits set; expected a network address such as 198.51.100.0/24"),
        ("gateway.adminCidrs[0]", "my-home", "mailgate:gateway.adminCidrs[0]: 'my-home' is not a CIDR network"),
        ("gateway.adminCidrs[1]", "198.51.100.0/24", "mailgate:gateway.adminCidrs: 198.51.100.0/24 is listed twice (items 0 and 1)"),
        ("gateway.adminCidrs", "198.51.100.0/24", "mailgate:gateway.adminCidrs: Input should be a valid list"),
        ("gateway.vcnCidr", "10.0.0.0/8", "mailgate:gateway.vcnCidr: 10.0.0.0/8 is not an IPv4 network of /16 to /30"),
        ("gateway.vcnCidr", "100.64.0.0/16", "mailgate:gateway.vcnCidr: 100.64.0.0/16 overlaps Tailscale's 100.64.0.0/10"),
        ("gateway.subnetCidr", "10.1.0.0/24", "mailgate:gateway.subnetCidr: 10.1.0.0/24 is not inside the VCN's 10.0.0.0/16"),
        ("gateway.subnetCidr", "2001:db8::/64", "mailgate:gateway.subnetCidr: 2001:db8::/64 is not an IPv4 network"),
        ("gateway.ipv6", "maybe", "mailgate:gateway.ipv6: Input should be a valid boolean"),
        ("gateway.sshUser", "Ubuntu Admin", "mailgate:gateway.sshUser: 'Ubuntu Admin' is not a valid user name"),
        ("gateway.colour", "blue", "mailgate:gateway.colour: unknown key"),
        ("home.tailnetIp", "192.168.1.4", "mailgate:home.tailnetIp: 192.168.1.4 is outside Tailscale's address ranges"),
        ("home.tailnetIp", "fd7a:115c:a1e0::2", "mailgate:home.tailnetIp: fd7a:115c:a1e0::2 is IPv6; expected the IPv4 tailnet address"),
        ("home.tailnetIp", "minipc", "mailgate:home.tailnetIp: 'minipc' is not an IP address"),
        ("home.mailcowDir", "mailcow-dockerized", "mailgate:home.mailcowDir: 'mailcow-dockerized' is relative; expected an absolute path"),
        ("home.mailcowDir", "/opt/../etc", "mailgate:home.mailcowDir: '/opt/../etc' is not a Mailcow directory"),
        ("home.mailcowDir", "/opt/mail cow", "mailgate:home.mailcowDir: '/opt/mail cow' has characters a shell would interpret"),
        ("home.sshPort", 0, "mailgate:home.sshPort: Input should be greater than or equal to 1"),
        ("home.sshPort", 70000, "mailgate:home.sshPort: Input should be less than or equal to 65535"),
        ("home.sshHost", "0.0.0.0", "mailgate:home.sshHost: 0.0.0.0 cannot be connected to"),
        ("home.sshHost", "mini pc", "mailgate:home.sshHost: 'mini pc' is neither an IP address nor a host name"),
        ("home.sshHostKey", "AAAAC3NzaC1", "mailgate:home.sshHostKey: not an OpenSSH public key"),
        ("services", ["smtp", "imap", "imap"], "mailgate:services: imap is listed twice (items 1 and 2)"),
        ("services", ["smtp", "pop4"], "mailgate:services[1]: unknown service 'pop4'; expected one of smtp, submissions"),
        ("services", ["smtp", "https"], "mailgate:services[1]: 'https' is web forwarding; set mailgate:web.enabled instead"),
        ("services", ["imap", "imaps"], "mailgate:services: must include 'smtp'"),
        ("services", "smtp", "mailgate:services: Input should be a valid list"),
        ("relay.port", 2526, "mailgate:relay.port: 2526 is not a relay submission port; expected one of 25, 465, 587, 2525"),
        ("relay.port", "587x", "mailgate:relay.port: Input should be a valid integer"),
        ("relay.host", "smtp relay", "mailgate:relay.host: 'smtp relay' is not a fully qualified DNS name"),
        ("relay.username", "", "mailgate:relay.username: String should have at least 1 character"),
        ("relay.username", "me:you", "mailgate:relay.username: must not contain spaces or ':'"),
        ("tailscale.gatewayTag", "mailgw", "mailgate:tailscale.gatewayTag: 'mailgw' is not a Tailscale tag"),
        ("tailscale.homeTag", "tag:mailgw", "mailgate:tailscale.homeTag: tag:mailgw is also the gateway's tag"),
        ("tailscale.authKeyExpirySeconds", 60, "mailgate:tailscale.authKeyExpirySeconds: Input should be greater than or equal to 300"),
        ("tailscale.authKeyExpirySeconds", 10**9, "mailgate:tailscale.authKeyExpirySeconds: Input should be less than or equal to 7776000"),
        ("tailscale.gatewayHostname", "Mail_GW", "mailgate:tailscale.gatewayHostname: 'Mail_GW' is not a machine name"),
        ("web.enabled", "sometimes", "mailgate:web.enabled: Input should be a valid boolean"),
        ("web", True, "mailgate:web: Input should be a valid dictionary or instance of WebSettings"),
        ("colour", "blue", "mailgate:colour: unknown key"),
        ("alerts", {"to": "me@"}, "mailgate:alerts.to: 'me@' is not a mail address"),
        ("alerts", {"to": "me@example.net", "sender": "alerts"}, "mailgate:alerts.sender: 'alerts' is not a mail address"),
        ("alerts", {"to": "me@example.net", "afterMinutes": 1}, "mailgate:alerts.afterMinutes: 1 is outside 5 to 1440 minutes"),
        ("alerts", {"to": "me@example.com"}, "mailgate:alerts.to: me@example.com is served by this Mailcow"),
        ("alerts", {"to": "me@lists.example.com"}, "mailgate:alerts.to: me@lists.example.com is served by this Mailcow"),
        ("alerts", {"to": "me@example.net", "cc": "x@example.net"}, "mailgate:alerts.cc: unknown key"),
        ("bans", {"intervalSeconds": 5}, "mailgate:bans.intervalSeconds: Input should be greater than or equal to 10"),
        ("bans", {"maxPrefixV4": 4}, "mailgate:bans.maxPrefixV4: Input should be greater than or equal to 8"),
        ("bans", {"neverBan": ["198.51.100.7/24"]}, "mailgate:bans.neverBan[0]: '198.51.100.7/24' has host bits set"),
        ("bans", {"neverBan": ["home"]}, "mailgate:bans.neverBan[0]: 'home' is not a CIDR network"),
    ],
)
def test_invalid_value_is_reported_by_key_path(dev_raw, path, value, expected):
    found = problems(dev_raw, set_path(path, value))
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("domain", "mailgate:domain: missing; this key is required"),
        ("gateway", "mailgate:gateway: missing; this key is required"),
        ("gateway.compartmentId", "mailgate:gateway.compartmentId: missing"),
        ("home.tailnetIp", "mailgate:home.tailnetIp: missing"),
        ("relay.username", "mailgate:relay.username: missing"),
    ],
)
def test_missing_required_key_is_reported(dev_raw, path, expected):
    assert any(p.startswith(expected) for p in problems(dev_raw, delete_path(path)))


def test_every_mistake_is_reported_at_once(dev_raw):
    def many(raw):
        raw["mailHostname"] = "mail.other.org"
        raw["gateway"]["adminCidrs"] = ["0.0.0.0/0", "198.51.100.1/24"]
        raw["home"]["tailnetIp"] = "192.0.2.4"
        raw["relay"]["port"] = 26
        raw["tailscale"]["gatewayTag"] = "gw"
        raw["services"] = ["smtp", "pop4"]

    found = problems(dev_raw, many)
    assert [p.split(":", 2)[1] for p in found] == [
        "mailHostname", "gateway.adminCidrs[0]", "gateway.adminCidrs[1]", "home.tailnetIp",
        "services[1]", "relay.port", "tailscale.gatewayTag",
    ]


def test_required_secret_missing_is_reported_with_the_rest(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["relay"]["port"] = 26
    with pytest.raises(ConfigError) as error:
        load_settings(raw, stack="dev", secrets_present=set())
    assert error.value.problems[-1].startswith(
        "mailgate:relayPassword: missing; set it with `pulumi config set --secret mailgate:relayPassword"
    )
    assert len(error.value.problems) == 2


def test_the_report_is_one_readable_message(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["relay"]["port"] = 26
    raw["domain"] = "x"
    with pytest.raises(ConfigError) as error:
        load_settings(raw, stack="dev")
    assert str(error.value).splitlines()[0] == "mailgate: the stack config has 2 problems:"
    assert all(line.startswith("  - mailgate:") for line in str(error.value).splitlines()[1:])


def test_example_stack_is_valid_and_defaults_apply(dev_settings):
    assert dev_settings.domain == "example.com"
    assert dev_settings.gateway.effective_ocpus == 1
    assert dev_settings.gateway.effective_memory_in_gbs == 6
    assert [s.name for s in dev_settings.enabled_services] == [
        "smtp", "submissions", "submission", "imap", "imaps", "managesieve", "http",
    ]
    assert dev_settings.acme.method == "http-01"
    assert dev_settings.tailscale.gateway_tag == "tag:mailgw"


def test_micro_shape_takes_its_own_defaults(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["gateway"] = {k: v for k, v in raw["gateway"].items() if k not in ("ocpus", "memoryInGbs")}
    raw["gateway"]["shape"] = "VM.Standard.E2.1.Micro"
    settings = load_settings(raw, stack="dev")
    assert (settings.gateway.effective_ocpus, settings.gateway.effective_memory_in_gbs) == (1, 1)
    raw["gateway"]["memoryInGbs"] = 6
    with pytest.raises(ConfigError, match=r"gateway.memoryInGbs: 6 GB is outside what VM.Standard.E2.1.Micro"):
        load_settings(raw, stack="dev")


def test_paid_shape_needs_always_free_off(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["gateway"].update(shape="VM.Standard.E4.Flex", ocpus=8, memoryInGbs=64)
    with pytest.raises(ConfigError, match=r"gateway.shape: VM.Standard.E4.Flex is not an Always Free shape"):
        load_settings(raw, stack="dev")
    raw["gateway"]["alwaysFree"] = False
    assert load_settings(raw, stack="dev").gateway.effective_memory_in_gbs == 64


def test_settings_are_immutable(dev_settings):
    with pytest.raises(Exception):
        dev_settings.domain = "evil.example"  # type: ignore[misc]


def test_names_are_normalised(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["domain"] = "Example.COM."
    raw["mailHostname"] = "Mail.Example.com"
    settings = load_settings(raw, stack="dev")
    assert (settings.domain, settings.mail_hostname) == ("example.com", "mail.example.com")


def test_a_jump_through_the_gateway_needs_the_mini_pcs_tailnet_ip(dev_raw):
    """The gateway dials the jump's last leg and resolves no tailnet names (it runs with
    --accept-dns=false): a name there would never connect."""
    assert problems(dev_raw, set_path("home.viaGateway", True)) == [
        "mailgate:home.viaGateway: true needs mailgate:home.sshHost to be the Mini PC's tailnet IP, "
        "not 'minipc.home.example.com' (the gateway dials it and resolves no tailnet names); expected "
        "e.g. `pulumi config set mailgate:home.sshHost $(tailscale ip -4)` run on the Mini PC"]

    def jump_to_tailnet_ip(raw):
        raw["home"]["viaGateway"] = True
        raw["home"]["sshHost"] = "100.64.0.2"
    raw = copy.deepcopy(dev_raw)
    jump_to_tailnet_ip(raw)
    assert load_settings(raw, stack="dev").home.via_gateway


def test_the_mini_pcs_host_key_is_required_and_the_error_says_how_to_get_it(dev_raw):
    assert problems(dev_raw, delete_path("home.sshHostKey")) == [
        "mailgate:home.sshHostKey: missing; mailgate never trusts the Mini PC's SSH host on first "
        "sight. Get its key with `ssh-keyscan -p 22 -t ed25519 minipc.home.example.com 2>/dev/null "
        "| cut -d' ' -f2-` (or `cat /etc/ssh/ssh_host_ed25519_key.pub` on the Mini PC), compare it "
        "there, then `pulumi config set mailgate:home.sshHostKey '<that line>'`"]


def test_a_managed_policy_needs_a_tagged_mini_pc(dev_raw):
    message = problems(dev_raw, set_path("tailscale.manageAcl", True))
    assert len(message) == 1 and message[0].startswith(
        "mailgate:tailscale.manageAcl: true needs mailgate:tailscale.homeTag: the managed policy lets")


def test_a_policy_test_user_must_be_a_login(dev_raw):
    [message] = problems(dev_raw, set_path("tailscale", {"policyTestUser": "not a login"}))
    assert message.startswith("mailgate:tailscale.policyTestUser: 'not a login' is not a tailnet login")


def test_alerts_need_a_port_home_can_check_and_a_way_out_for_the_gateway(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["alerts"] = {"to": "me@example.net"}
    raw["services"] = ["smtp"]
    with pytest.raises(ConfigError) as error:
        load_settings(raw, stack="dev", secrets_present={"relayPassword"})
    assert [p.split(": ", 1)[0] for p in error.value.problems] == ["mailgate:alerts.to"] * 2
    assert "besides smtp" in error.value.problems[0]
    assert "mailgate:alertsRelayPassword" in error.value.problems[1]
    raw["services"] = ["smtp", "submission"]
    for channel in ("alertsRelayPassword", "alertsWebhookUrl"):
        settings = load_settings(raw, stack="dev", secrets_present={"relayPassword", channel})
        assert settings.alerts.enabled and settings.alert_sender == "mailgate@example.com"


def test_alerts_are_off_unless_an_address_is_set(dev_settings):
    assert not dev_settings.alerts.enabled
    assert dev_settings.alerts.after_minutes == 15


def test_bans_follow_the_banlist_id_unless_set_and_need_it_when_on(dev_raw):
    raw = copy.deepcopy(dev_raw)
    assert not load_settings(raw, stack="dev", secrets_present={"relayPassword"}).bans_active
    assert load_settings(raw, stack="dev", secrets_present={"relayPassword", "banlistId"}).bans_active
    raw["bans"] = {"enabled": False}
    assert not load_settings(raw, stack="dev", secrets_present={"relayPassword", "banlistId"}).bans_active
    raw["bans"] = {"enabled": True}
    with pytest.raises(ConfigError) as error:
        load_settings(raw, stack="dev", secrets_present={"relayPassword"})
    assert error.value.problems == [
        "mailgate:bans.enabled: true, but there is no ban list to fetch; set its id with `pulumi config set "
        "--secret mailgate:banlistId <id>` (Mailcow's UI: Configuration > Fail2ban), or unset bans.enabled"]



def acme_problems(dev_raw, acme: dict, secrets: set[str] | None = None) -> list[str]:
    raw = copy.deepcopy(dev_raw)
    raw["acme"] = acme
    try:
        load_settings(raw, stack="dev", secrets_present=secrets or {"relayPassword"})
    except ConfigError as error:
        return error.problems
    return []


def test_acme_settings_say_what_each_method_needs(dev_raw):
    assert acme_problems(dev_raw, {"method": "dns-01"}) == [
        "mailgate:acme.dnsProvider: missing; mailgate:acme.method dns-01 needs the acme.sh DNS API of your "
        "DNS provider, e.g. `pulumi config set --path 'mailgate:acme.dnsProvider' dns_cf`",
        "mailgate:acme.accountEmail: missing; with dns-01 Mailcow registers an ACME account with it, and "
        "Let's Encrypt refuses Mailcow's default (me@example.com); expected e.g. "
        "`pulumi config set --path 'mailgate:acme.accountEmail' you@example.net`",
    ]
    complete = {"method": "dns-01", "dnsProvider": "dns_cf", "accountEmail": "me@example.net"}
    [missing_secret] = acme_problems(dev_raw, complete)
    assert missing_secret.startswith("mailgate:acme.method: dns-01, but Mailcow has no credentials for dns_cf")
    assert acme_problems(dev_raw, complete, {"relayPassword", "acmeDnsCredentials"}) == []
    assert acme_problems(dev_raw, {"method": "dns-01", "dnsProvider": "cloudflare", "accountEmail": "me@example.net"},
                         {"relayPassword", "acmeDnsCredentials"})[0].startswith(
        "mailgate:acme.dnsProvider: 'cloudflare' is not an acme.sh DNS API name")
    assert acme_problems(dev_raw, {"method": "http-1"})[0].startswith("mailgate:acme.method: Input should be")
    assert acme_problems(dev_raw, {"additionalSan": ["*.example.com"]}) == [
        "mailgate:acme.additionalSan: *.example.com is a wildcard, which only dns-01 can prove; expected "
        "plain names, or mailgate:acme.method dns-01"]
    assert acme_problems(dev_raw, {"additionalSan": ["imap.*", "webmail.example.com"]}) == []
    assert acme_problems(dev_raw, {"additionalSan": ["not a name"]})[0].startswith("mailgate:acme.additionalSan[0]:")


def test_dns_credentials_are_checked_and_never_quoted():
    assert acme_credentials_problems({"CF_Token": "s3cret", "CF_Account_ID": "abc"}) == []
    problems = acme_credentials_problems({"CF Token": "s3cret-1", "PATH": "/tmp", "CF_Account_ID": "a\nb",
                                          "LD_PRELOAD": "x"})
    assert [p.split(":")[1].split()[0] for p in problems] == [
        "acmeDnsCredentials.CF", "acmeDnsCredentials.PATH", "acmeDnsCredentials.CF_Account_ID",
        "acmeDnsCredentials.LD_PRELOAD"]
    assert not any("s3cret" in p or "/tmp" in p for p in problems)
    assert acme_credentials_problems("CF_Token=abc")[0].startswith("mailgate:acmeDnsCredentials: expected an object")
