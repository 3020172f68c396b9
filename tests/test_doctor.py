"""`mailgate doctor` without the lab: its judgement on DNS answers (a stub resolver),
its command line, and its way into a host over real SSH with sudo. The lab
(tests/lab/test_lab_doctor.py) runs it against real daemons."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mailgate.doctor import dns_checks, host_checks, target as targets
from mailgate.doctor.report import FAIL, OK, SKIPPED, WARN
from tests.conftest import DEV_STACK

PUBLIC = "203.0.113.10"


class StubDns(dns_checks.Dns):
    """Answers from a table: {(name, type): [answers]}; ("name", "CNAME") also makes the
    name's A lookup follow that alias."""

    def __init__(self, records: dict) -> None:
        self.records, self.where = records, "the stub"

    def query(self, name: str, rdtype: str) -> list[str]:
        return list(self.records.get((name.rstrip("."), rdtype), []))

    def alias(self, name: str) -> str | None:
        found = self.records.get((name, "CNAME"))
        return found[0] if found else None


@pytest.fixture
def target(dev_settings):
    return targets.Target(settings=dev_settings, public_ipv4=PUBLIC)


def one(findings):
    assert len(findings) == 1
    return findings[0]


def test_spf_ok_then_each_mistake_fails_with_its_fix(target):
    domain = target.settings.domain
    good = "v=spf1 include:spf.brevo.com ~all"
    found = one(dns_checks.spf(target, StubDns({(domain, "TXT"): [good, "brevo-code:abc"]})))
    assert found.status == OK, found
    two = one(dns_checks.spf(target, StubDns({(domain, "TXT"): [good, "v=spf1 mx -all"]})))
    assert two.status == FAIL and "2 SPF records" in two.saw and "merge" in two.fix
    missing = one(dns_checks.spf(target, StubDns({(domain, "TXT"): ["v=spf1 mx -all"]})))
    assert missing.status == FAIL and "include:spf.brevo.com" in missing.fix
    # Eleven lookups through nested includes: a permanent error at every receiver.
    chain = {(domain, "TXT"): ["v=spf1 include:spf.brevo.com include:a0.example.net ~all"]}
    for i in range(9):
        chain[(f"a{i}.example.net", "TXT")] = [f"v=spf1 include:a{i + 1}.example.net mx"]
    long_ = one(dns_checks.spf(target, StubDns(chain)))
    assert long_.status == FAIL and "lookups" in long_.saw and "10" in long_.fix
    plus_all = one(dns_checks.spf(target, StubDns({(domain, "TXT"): ["v=spf1 include:spf.brevo.com +all"]})))
    assert plus_all.status == FAIL and "+all" in plus_all.fix


def test_dmarc_one_record_with_a_policy(target):
    name = f"_dmarc.{target.settings.domain}"
    assert one(dns_checks.dmarc(target, StubDns({(name, "TXT"): ["v=DMARC1; p=none"]}))).status == OK
    assert one(dns_checks.dmarc(target, StubDns({}))).status == FAIL
    two = one(dns_checks.dmarc(target, StubDns({(name, "TXT"): ["v=DMARC1; p=none", "v=DMARC1; p=reject"]})))
    assert two.status == FAIL and "keep one" in two.fix
    assert one(dns_checks.dmarc(target, StubDns({(name, "TXT"): ["v=DMARC1; p=maybe"]}))).status == FAIL


def test_mail_host_must_be_the_gateway_and_no_alias(target):
    host = target.settings.mail_hostname
    assert one(dns_checks.address(target, StubDns({(host, "A"): [PUBLIC]}))).status == OK
    wrong = one(dns_checks.address(target, StubDns({(host, "A"): ["198.51.100.99"]})))
    assert wrong.status == FAIL and PUBLIC in wrong.fix
    alias = one(dns_checks.address(target, StubDns({(host, "CNAME"): ["elsewhere.example.net"]})))
    assert alias.status == FAIL and "CNAME" in alias.saw
    # An AAAA while the gateway has no IPv6: IPv6 senders would knock on a stranger's door.
    v6 = one(dns_checks.address(target, StubDns({(host, "A"): [PUBLIC], (host, "AAAA"): ["2001:db8::1"]})))
    assert v6.status == FAIL and "no IPv6" in v6.fix


def test_mx_elsewhere_fails(target):
    domain = target.settings.domain
    assert one(dns_checks.mx(target, StubDns({(domain, "MX"): [f"10 {target.settings.mail_hostname}."]}))).status == OK
    other = one(dns_checks.mx(target, StubDns({(domain, "MX"): ["10 mx.example.net."]})))
    assert other.status == FAIL and target.settings.mail_hostname in other.fix


def test_dkim_compared_with_mailcows_key_when_known(target):
    name = f"dkim._domainkey.{target.settings.domain}"
    stub = StubDns({(name, "TXT"): ["v=DKIM1; k=rsa; p=AAAA BBBB"]})
    assert one(dns_checks.dkim(target, stub, None)).status == OK
    assert one(dns_checks.dkim(target, stub, ("dkim", "AAAABBBB"))).status == OK
    assert one(dns_checks.dkim(target, stub, ("dkim", "CCCC"))).status == FAIL
    other_selector = one(dns_checks.dkim(target, stub, ("mc2026", "AAAABBBB")))
    assert other_selector.status == FAIL and "mc2026._domainkey" in other_selector.fix


def test_blocklist_answers(target):
    reversed_ip = ".".join(reversed(PUBLIC.split(".")))
    assert one(dns_checks.blocklists(target, StubDns({}))).status == OK
    listed = one(dns_checks.blocklists(target, StubDns({(f"{reversed_ip}.zen.spamhaus.org", "A"): ["127.0.0.2"]})))
    assert listed.status == WARN and "listed on zen.spamhaus.org" in listed.saw
    # 127.255.255.x is Spamhaus refusing the query, not a listing.
    refused = one(dns_checks.blocklists(target, StubDns({(f"{reversed_ip}.zen.spamhaus.org", "A"): ["127.255.255.254"]})))
    assert refused.status == WARN and "refused" in refused.saw and "listed on" not in refused.saw


def doctor(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailgate", "doctor", "--config", str(DEV_STACK), *args],
                          capture_output=True, text=True, input=stdin, timeout=120)


def test_bad_input_is_refused_clearly():
    missing = doctor()
    assert missing.returncode == 2 and "--outputs" in missing.stderr and "Traceback" not in missing.stderr
    garbage = doctor("--outputs", "-", stdin="not json")
    assert garbage.returncode == 2 and "pulumi stack output --json" in garbage.stderr
    exec_alone = doctor("--public-ipv4", PUBLIC, "--home-exec", "true")
    assert exec_alone.returncode == 2 and "need --ssh" in exec_alone.stderr
    not_ip = doctor("--public-ipv4", "mail.example.com")
    assert not_ip.returncode == 2 and "not an IP address" in not_ip.stderr


def test_nothing_answering_fails_every_check_and_says_why():
    """Loopback, where nothing listens: every check that needs an answer fails with a fix,
    the inside checks are skipped (no --ssh) and say how to run them, exit status 1."""
    result = doctor("--outputs", "-", "--resolver", "127.0.0.1", "--timeout", "1", "--json",
                    stdin=json.dumps({"public_ipv4": "127.0.0.1"}))
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert report["failed"] == sum(s == FAIL for s in statuses.values()) > 0
    assert statuses["port.smtp"] == FAIL and statuses["dns.mx"] == FAIL
    assert statuses["tunnel"] == SKIPPED and statuses["real-address.smtp"] == SKIPPED
    assert all(c["fix"] for c in report["checks"] if c["status"] != OK)
    ids = [c["id"] for c in report["checks"]]
    assert ids.index("dns.a") < ids.index("port.smtp") < ids.index("real-address.smtp") < ids.index("tunnel")


def test_hosts_are_reached_over_ssh_with_sudo_and_the_pinned_host_key(dev_settings, login, tmp_path, monkeypatch):
    """The default way in: ssh with the stack's host key pinned, then sudo -n as a login
    like Oracle's ubuntu, the script on stdin. A host with another key is refused."""
    from tests.sshd import SUDO_LOGIN, start_sshd

    user = login(SUDO_LOGIN)
    sshd = start_sshd(tmp_path / "sshd", user=user)
    try:
        monkeypatch.setattr(targets, "HOME_KEY", sshd.key)

        def settings(host_key: str):
            home = dev_settings.home.model_copy(update={
                "ssh_host": "127.0.0.1", "ssh_port": sshd.port, "ssh_user": user, "ssh_host_key": host_key})
            return dev_settings.model_copy(update={"home": home})

        good = settings(sshd.host_public_key())
        remote = targets.home_remote(good, None, 5, None)
        assert "sudo" in remote.argv and str(sshd.key) in remote.argv
        ran = remote.run("id -u\n", timeout=30)
        assert (ran.returncode, ran.stdout.strip()) == (0, "0"), ran.stderr
        impostor = settings("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFiByN3aV/VjOfuZn5MTUtoFDtXmpf1FNOZP9x5BXe6y")
        refused = one(host_checks.home_filter(
            targets.Target(impostor, PUBLIC, home=targets.home_remote(impostor, None, 5, None)), None))
        assert refused.status == FAIL and "Host key verification failed" in refused.saw, refused
    finally:
        sshd.stop()


def test_a_key_mailgate_could_not_read_at_home_is_no_pass(target):
    name = f"dkim._domainkey.{target.settings.domain}"
    stub = StubDns({(name, "TXT"): ["v=DKIM1; k=rsa; p=AAAA"]})
    found = one(dns_checks.dkim(target, stub, "could not read Mailcow's DKIM key: home did not answer"))
    assert found.status == FAIL and "home did not answer" in found.saw


def test_no_resolver_on_this_machine_fails_the_dns_checks_clearly(target, monkeypatch):
    import dns.resolver

    real = dns.resolver.Resolver

    def resolver(configure=True):
        if configure:
            raise dns.resolver.NoResolverConfiguration("no nameservers")
        return real(configure=False)

    monkeypatch.setattr(dns_checks.dns.resolver, "Resolver", resolver)
    found = one(dns_checks.mx(target, dns_checks.Dns(target)))
    assert found.status == FAIL and "no resolver configured" in found.saw and "--resolver" in found.saw


def test_only_the_probed_daemons_lines_with_a_public_address_count(dev_settings):
    """Behind NAT the doctor cannot know its public address: a connection logged by the
    probed service's daemon, from a public address, counts; Docker's own (SOGo logging in
    to Dovecot from 172.22.1.x), the tunnel's and other services' lines do not."""
    from mailgate import catalogue

    log = "\n".join([
        "postfix/postscreen[1]: CONNECT from [198.51.100.7]:40000 to [100.64.0.2]:10025",
        "postfix/smtpd[2]: connect from unknown[198.51.100.8]",
        "dovecot: imap-login: Login: user=<a@example.com>, rip=172.22.1.250, lip=172.22.1.250",
        "dovecot: managesieve-login: Disconnected: rip=198.51.100.9, lip=100.64.0.2",
        "postfix/postscreen[1]: CONNECT from [198.51.100.10]:40001 to [100.64.0.2]:10587",
        # Behind the gateway postscreen names the PROXY header's destination: the public port.
        "postfix/postscreen[1]: CONNECT from [198.51.100.11]:40002 to [203.0.113.10]:25",
        "postfix/postscreen[1]: CONNECT from [198.51.100.12]:40003 to [203.0.113.10]:587",
    ])
    smtp = host_checks._connects(log, catalogue.BY_NAME["smtp"])
    assert [ip for _, ip in smtp] == ["198.51.100.7", "198.51.100.8", "198.51.100.11"]
    imap = host_checks._connects(log, catalogue.BY_NAME["imap"])
    assert [ip for _, ip in imap] == ["172.22.1.250"] and not targets.is_public("172.22.1.250")
    assert [ip for _, ip in host_checks._connects(log, catalogue.BY_NAME["managesieve"])] == ["198.51.100.9"]
    assert targets.is_public("198.51.100.7") and not targets.is_public("100.64.0.1")
