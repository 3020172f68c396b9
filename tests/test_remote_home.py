"""The home step's scripts, run for real over SSH against a Mailcow-like tree.

There is no Docker engine here: `docker` is tests/fake_docker.py, which keeps Compose's
rule for when a container reads its files, so a test can ask whether postfix-mailcow and
dovecot-mailcow serve the files on disk. iptables is real, inside a private network
namespace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailgate.deployment import Deployment
from mailgate.layout import Secrets, home_files
from mailgate.managed_block import markers
from mailgate.renderers.remote_scripts import (
    DOVECOT,
    POSTFIX,
    REDIS,
    IPV6_FILTER_SKIPPED,
    HostCommands,
    home_bundle,
    render_home_apply,
    render_home_restore,
)
from tests.conftest import need_program
from tests.fake_docker import REDIS_PASSWORD, Container, FakeDocker
from tests.settings_variants import variant
from tests.sshd import PLAIN_LOGIN, SUDO_LOGIN, start_sshd
from tests.validators import MAILCOW_LIKE_COMPOSE, Netns

PASSWORD = "xsmtpsib-Sup3r-s3cret-relay-key"
USER_OVERRIDE = "services:\n  rspamd-mailcow:\n    environment:\n      - MINE=1  # keep\n"
MAILCOW_CONF = "MAILCOW_HOSTNAME=mail.example.com\nDBPASS=db-secret-not-ours\nSOLR_PORT=127.0.0.1:18983\n"
GATEWAY_TAILNET_IP = "100.64.0.1"
# What Docker 28 puts in raw PREROUTING for a container (198.51.100.2 on br-mailcow).
DOCKER_RAW_RULE = ("-d", "198.51.100.2/32", "!", "-i", "br-mailcow", "-j", "DROP")
BOTH_SERVING = {POSTFIX: True, DOVECOT: True}
# Mailcow's own files that the staged checks read inside the containers (the fake docker
# runs them with the host's postconf and doveconf, the tree mounted where Mailcow mounts it).
MAIN_CF = "compatibility_level = 3.6\nsmtpd_banner = $myhostname ESMTP\n# Overrides #\n"
SASL_SQL_MAP = "user = mailcow\npassword = x\nhosts = unix:/var/run/mysqld/mysqld.sock\ndbname = mailcow\nquery = SELECT 1\n"
DOVECOT_CONF = "protocols = imap\nssl = no\n!include_try /etc/dovecot/extra.conf\n"

class Home:
    def __init__(self, tmp: Path, settings, netns: Netns, user: str = "root"):
        self.settings = settings
        self.root = tmp / "root"
        mailcow = self.root / settings.home.mailcow_dir.lstrip("/")
        (mailcow / "data/conf/postfix").mkdir(parents=True)
        (mailcow / "data/conf/dovecot").mkdir(parents=True)
        (mailcow / "mailcow.conf").write_text(MAILCOW_CONF)
        (mailcow / "docker-compose.override.yml").write_text(USER_OVERRIDE)
        (mailcow / "data/conf/postfix/extra.cf").write_text("message_size_limit = 1\n")
        (mailcow / "data/conf/postfix/main.cf").write_text(MAIN_CF)
        (mailcow / "data/conf/postfix/master.cf").write_text(Path("/etc/postfix/master.cf").read_text())
        (mailcow / "data/conf/postfix/sql").mkdir()
        (mailcow / "data/conf/postfix/sql/mysql_sasl_passwd_maps_sender_dependent.cf").write_text(SASL_SQL_MAP)
        (mailcow / "data/conf/dovecot/dovecot.conf").write_text(DOVECOT_CONF)
        os.chmod(mailcow / "mailcow.conf", 0o600)
        self.mailcow = mailcow
        (mailcow / "docker-compose.yml").write_text(MAILCOW_LIKE_COMPOSE)
        self.docker = FakeDocker(tmp / "docker", exec_locally=True, real_config=need_program("docker-compose"))
        # Mailcow runs before mailgate arrives.
        self.docker.compose(mailcow, "up", "-d", POSTFIX, DOVECOT).check_returncode()
        systemctl = tmp / "systemctl"
        # With $0.kill present, it terminates the script that called it (SIGTERM to the
        # process group): a run interrupted between two steps.
        systemctl.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$0.log"\n'
                             'if [ -f "$0.kill" ]; then rm -f "$0.kill"; kill -TERM 0; fi\n')
        self.systemctl = systemctl
        systemctl.chmod(0o755)
        netns.run(["iptables", "-N", "DOCKER-USER"]).check_returncode()
        # Docker 28 drops, in raw PREROUTING, packets for a container address that do not
        # come from its bridge: the home filter goes before it, and destroy leaves it.
        netns.run(["iptables", "-t", "raw", "-A", "PREROUTING", *DOCKER_RAW_RULE]).check_returncode()
        # The IPv6 raw table as a host has it (ip6tables-nft makes it on first use only, and
        # destroy leaves it, as it leaves the IPv4 one).
        netns.run(["ip6tables", "-t", "raw", "-P", "PREROUTING", "ACCEPT"]).check_returncode()
        in_ns = f"ip netns exec {netns.name} "
        self.commands = HostCommands(root=str(self.root), docker=str(self.docker.path),
                                     iptables=in_ns + "iptables", ip6tables=in_ns + "ip6tables",
                                     systemctl=str(systemctl), sysctl=in_ns + "sysctl")
        self.netns = netns
        self.sshd = start_sshd(tmp / "ssh", user=user)
        self.outputs: list[str] = []
        self.commands_sent: list[str] = []

    def run(self, script: str, stdin: str = ""):
        self.commands_sent.append(script)
        result = self.sshd.run(script, stdin)
        self.outputs += [result.stdout, result.stderr]
        return result

    def apply(self, settings=None, fail_on: str | None = None, password: str = PASSWORD,
              gateway_tailnet_ip: str = GATEWAY_TAILNET_IP, mistakes: dict[str, str] | None = None,
              commands=None, dns_credentials: dict[str, str] | None = None):
        """What `pulumi up` does: render, ship, apply. `mistakes`: file name -> lines put
        at the end of mailgate's block in that file (a mistake in what mailgate sends)."""
        settings = settings or self.settings
        commands = commands or self.commands
        deployment = Deployment(gateway_tailnet_ip=gateway_tailnet_ip)
        files = home_files(settings, deployment, Secrets(relay_password=password,
                                                         acme_dns_credentials=dns_credentials))
        end = markers(settings.names.stack)[1] + "\n"
        for name, lines in (mistakes or {}).items():
            files = [dataclasses.replace(f, text=f.text.replace(end, lines + end)) if f.path.endswith(f"/{name}") else f
                     for f in files]
        self.docker.fail_on(fail_on)
        return self.run(render_home_apply(settings, files, commands), home_bundle(settings, files, deployment))

    def systemctl_kills(self, kills: bool = True) -> None:
        """The next systemctl call terminates the script that made it."""
        marker = Path(f"{self.systemctl}.kill")
        if kills:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def destroy(self, fail_on: str | None = None):
        self.docker.fail_on(fail_on)
        return self.run(render_home_restore(self.settings, self.commands))

    def tree(self, without_state: bool = True) -> dict[str, tuple[str, int]]:
        found = {}
        for path in sorted(self.root.rglob("*")):
            relative = "/" + str(path.relative_to(self.root))
            if path.is_file() and not (without_state and relative.startswith(self.settings.names.home_state_dir)):
                found[relative] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
        return found

    def docker_calls(self) -> list[str]:
        return self.docker.calls(self.mailcow)

    def container(self, name: str):
        return self.docker.container(self.mailcow, name)

    def whitelist(self) -> dict[str, str]:
        """Mailcow's fail2ban allowlist, F2B_WHITELIST in redis-mailcow."""
        return self.docker.redis_hash(self.mailcow, "F2B_WHITELIST")

    def whitelist_record(self) -> str:
        return (self.root / self.settings.names.home_state_dir.lstrip("/") / "fail2ban-whitelist").read_text()

    def serving(self) -> dict[str, bool]:
        """Whether each container serves the definition and mounted files on disk now."""
        return {name: self.docker.serves(self.mailcow, name) for name in (POSTFIX, DOVECOT)}

    def chain_hooked(self) -> bool:
        """The twin chain is the first rule of raw PREROUTING, ahead of Docker's, for IPv4
        and for IPv6 (where Docker has none here)."""
        hook = f"-A PREROUTING -j {self.settings.names.home_twin_chain}"
        saved = self.netns.run(["iptables", "-t", "raw", "-S", "PREROUTING"]).stdout.splitlines()
        saved6 = self.netns.run(["ip6tables", "-t", "raw", "-S", "PREROUTING"]).stdout.splitlines()
        return saved[1:] == [hook, "-A PREROUTING " + " ".join(DOCKER_RAW_RULE)] and saved6[1:] == [hook]

    def filters(self) -> str:
        """Every IPv4 and IPv6 table, chain and rule in the namespace (no counters)."""
        saved = "".join(self.netns.run([save]).stdout for save in ("iptables-save", "ip6tables-save"))
        return "\n".join(line.split(" [")[0] for line in saved.splitlines() if not line.startswith("#"))


@contextmanager
def running_home(tmp_path: Path, settings, netns_name: str, user: str, kind: type = Home):
    """A Home (or a subclass) in its own network namespace, its sshd stopped at the end."""
    with Netns(netns_name) as netns:
        instance = kind(tmp_path, settings, netns, user)
        try:
            yield instance
        finally:
            instance.sshd.stop()


@pytest.fixture(params=["root", SUDO_LOGIN])
def home(request, tmp_path, dev_settings, login):
    """The Mini PC, reached as root and as a user with passwordless sudo (every test runs
    with both logins)."""
    user = request.param if request.param == "root" else login(request.param)
    with running_home(tmp_path, dev_settings, "mg5", user) as instance:
        yield instance


def mailcow_file(home: Home, relative: str) -> Path:
    return home.root / home.settings.home.mailcow_dir.lstrip("/") / relative


def test_first_apply_writes_merges_validates_and_recreates(home):
    assert home.serving() == BOTH_SERVING  # Mailcow as it ran before mailgate
    result = home.apply()
    assert result.returncode == 0, result.stderr
    # The acme container too: mailcow.conf now holds its SKIP_IP_CHECK (and dns-01.conf
    # mailgate's block), so it is recreated with them.
    assert "(recreated: acme-mailcow dovecot-mailcow postfix-mailcow; restarted: none)" in result.stdout
    assert oct(mailcow_file(home, "data/conf/acme/dns-01.conf").stat().st_mode & 0o777) == "0o600"
    override = mailcow_file(home, "docker-compose.override.yml").read_text()
    assert "MINE=1  # keep" in override and "${SMTP_PORT_HAPROXY:?" in override
    conf = mailcow_file(home, "mailcow.conf").read_text()
    assert conf.startswith(MAILCOW_CONF) and "SMTP_PORT_HAPROXY=100.64.0.2:10025" in conf
    assert mailcow_file(home, "data/conf/postfix/extra.cf").read_text().startswith("message_size_limit = 1\n")
    password_map = mailcow_file(home, "data/conf/postfix/mailgate_relay_passwd")
    assert PASSWORD in password_map.read_text()
    assert oct(password_map.stat().st_mode & 0o777) == "0o640"
    calls = home.docker_calls()
    # Checked before anything went live: the staged files, not the live ones.
    validated = [c for c in calls if " config -q" in c or c.startswith("compose exec") and REDIS not in c]
    assert len(validated) == 3 and calls.index(validated[-1]) < calls.index(
        "compose up -d --force-recreate acme-mailcow dovecot-mailcow postfix-mailcow")
    assert validated[0].startswith("compose --env-file /tmp/") and "/mailcow.conf -f docker-compose.yml -f" in validated[0]
    assert validated[1].startswith("compose exec -T postfix-mailcow sh -c") and "postconf" in validated[1]
    assert validated[2].startswith("compose exec -T dovecot-mailcow sh -c") and "doveconf" in validated[2]
    assert home.serving() == BOTH_SERVING
    for name in (POSTFIX, DOVECOT):
        assert (home.container(name).recreations, home.container(name).restarts) == (1, 0)
    assert home.chain_hooked()


def test_second_apply_changes_nothing_and_restarts_nothing(home):
    assert home.apply().returncode == 0
    before, calls = home.tree(), len(home.docker_calls())
    inodes = {p: p.stat().st_ino for p in home.root.rglob("*") if p.is_file()}
    again = home.apply()
    assert again.returncode == 0 and "already up to date" in again.stdout
    assert home.tree() == before
    assert {p: p.stat().st_ino for p in home.root.rglob("*") if p.is_file()} == inodes
    # One look at Mailcow's fail2ban whitelist, which holds the gateway already.
    assert [c.rsplit(" redis-cli ", 1)[-1] for c in home.docker_calls()[calls:]] == [
        f"HEXISTS F2B_WHITELIST {GATEWAY_TAILNET_IP}/32"]
    assert home.serving() == BOTH_SERVING
    assert home.chain_hooked()  # once, still first


def test_rotated_relay_password_restarts_postfix_which_then_uses_it(home):
    assert home.apply().returncode == 0
    postfix, dovecot = home.container(POSTFIX), home.container(DOVECOT)
    rotated = "xsmtpsib-r0tated-relay-key"
    result = home.apply(password=rotated)
    assert result.returncode == 0, result.stderr
    assert rotated in mailcow_file(home, "data/conf/postfix/mailgate_relay_passwd").read_text()
    # Only the map changed: `up -d` would find postfix's definition unchanged and keep
    # it running with the old key.
    assert home.serving() == BOTH_SERVING
    assert home.container(POSTFIX).restarts == postfix.restarts + 1
    assert home.container(POSTFIX).recreations == postfix.recreations
    assert home.container(DOVECOT) == dovecot


def test_relay_change_restarts_postfix_once(home, dev_raw):
    assert home.apply().returncode == 0
    postfix, dovecot = home.container(POSTFIX), home.container(DOVECOT)
    result = home.apply(variant(dev_raw, relay__port=2525))  # extra.cf and the map
    assert result.returncode == 0, result.stderr
    assert home.serving() == BOTH_SERVING
    assert "(recreated: none; restarted: postfix-mailcow)" in result.stdout
    assert home.container(POSTFIX).restarts == postfix.restarts + 1
    assert home.container(POSTFIX).recreations == postfix.recreations
    assert home.container(DOVECOT) == dovecot


def test_new_gateway_tailnet_ip_restarts_dovecot_and_moves_the_firewall(home):
    assert home.apply().returncode == 0
    postfix, dovecot = home.container(POSTFIX), home.container(DOVECOT)
    result = home.apply(gateway_tailnet_ip="100.64.0.9")
    assert result.returncode == 0, result.stderr
    extra_conf = mailcow_file(home, "data/conf/dovecot/extra.conf").read_text()
    assert "haproxy_trusted_networks = 100.64.0.9/32" in extra_conf
    assert home.serving() == BOTH_SERVING
    assert home.container(DOVECOT).restarts == dovecot.restarts + 1
    assert home.container(DOVECOT).recreations == dovecot.recreations
    assert home.container(POSTFIX) == postfix
    assert "-s 100.64.0.9/32" in home.netns.run(["iptables-save"]).stdout


def test_a_failure_after_the_firewall_loaded_puts_the_previous_chain_back(home):
    assert home.apply().returncode == 0
    chain = home.settings.names.home_twin_chain
    rules = lambda: [line for line in home.netns.run(["iptables-save"]).stdout.splitlines()  # noqa: E731
                     if line.startswith(f"-A {chain}")]
    before = rules()
    # The new gateway address is loaded into the chain, then restarting dovecot fails.
    result = home.apply(gateway_tailnet_ip="100.64.0.9", fail_on=f"restart {DOVECOT}")
    assert result.returncode == 1
    assert rules() == before and "100.64.0.9" not in "\n".join(rules())
    assert home.chain_hooked()


def test_a_failed_first_apply_leaves_no_chain_behind(home):
    """The containers fail after both filters loaded: neither IPv4's nor IPv6's stays."""
    result = home.apply(fail_on="up -d")
    assert result.returncode == 1
    assert home.settings.names.home_twin_chain not in home.filters()


def test_a_failure_after_the_ipv6_filter_loaded_puts_both_back(home):
    """An update from a mailgate without the IPv6 filter (its rules file and chain absent)
    fails after loading both: IPv4 gets its previous chain back, IPv6 has none again."""
    chain = home.settings.names.home_twin_chain
    v6_rules = home.settings.names.home_firewall_v6_path
    assert home.apply().returncode == 0
    for argv in (["-D", "PREROUTING", "-j", chain], ["-F", chain], ["-X", chain]):
        home.netns.run(["ip6tables", "-t", "raw", *argv]).check_returncode()
    for path in (v6_rules, f"{home.settings.names.home_state_dir}/applied{v6_rules}"):
        (home.root / path.lstrip("/")).unlink()
    before = home.filters()
    result = home.apply(gateway_tailnet_ip="100.64.0.9", fail_on=f"restart {DOVECOT}")
    assert result.returncode == 1
    assert home.filters() == before and chain not in home.netns.run(["ip6tables-save"]).stdout
    assert not (home.root / v6_rules.lstrip("/")).exists()


def test_a_host_without_ipv6_gets_the_ipv4_filter_and_a_line_saying_so(home, tmp_path):
    """ip6tables of a host booted with ipv6.disable=1 has no raw table: apply loads the
    IPv4 filter and says it skipped IPv6; destroy goes through too."""
    no_ipv6 = tmp_path / "no-ipv6"
    no_ipv6.mkdir()
    for name in ("ip6tables", "ip6tables-restore"):
        (no_ipv6 / name).write_text("#!/bin/sh\necho \"$0: can't initialize ip6tables table 'raw': "
                                    "Address family not supported by protocol\" >&2\nexit 3\n")
        (no_ipv6 / name).chmod(0o755)
    home.commands = dataclasses.replace(home.commands, ip6tables=str(no_ipv6 / "ip6tables"))
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert IPV6_FILTER_SKIPPED in result.stderr
    hook = f"-A PREROUTING -j {home.settings.names.home_twin_chain}"
    assert home.netns.run(["iptables", "-t", "raw", "-S", "PREROUTING"]).stdout.splitlines()[1] == hook
    assert home.apply().returncode == 0  # nothing left pending
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert home.settings.names.home_twin_chain not in home.filters()


def test_the_filter_of_an_older_mailgate_behind_docker_user_goes_on_apply_and_on_destroy(home):
    """Before the raw table, the chain sat in the filter table behind DOCKER-USER, where
    tailscaled's ts-forward overtakes it: an upgrade leaves only the raw chain."""
    chain = home.settings.names.home_twin_chain

    def older_filter() -> None:
        for argv in (["-N", chain], ["-A", chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
                     ["-I", "DOCKER-USER", "-j", chain]):
            home.netns.run(["iptables", *argv]).check_returncode()

    older_filter()
    assert home.apply().returncode == 0
    assert chain not in home.netns.run(["iptables", "-S"]).stdout  # the filter table
    assert home.chain_hooked()
    older_filter()
    assert home.destroy().returncode == 0
    assert chain not in home.filters()


def test_removed_service_recreates_the_containers(home, dev_raw):
    assert home.apply().returncode == 0
    before = {name: home.container(name) for name in (POSTFIX, DOVECOT)}
    services = [s for s in dev_raw["services"] if s != "imap"]
    result = home.apply(variant(dev_raw, services=services))  # override and mailcow.conf
    assert result.returncode == 0, result.stderr
    assert "IMAP_PORT_HAPROXY" not in mailcow_file(home, "mailcow.conf").read_text()
    for name, old in before.items():
        assert home.container(name).recreations == old.recreations + 1
        assert home.container(name).restarts == old.restarts
    assert home.serving() == BOTH_SERVING


def test_failed_validation_rolls_everything_back_byte_for_byte(home, dev_raw):
    assert home.apply().returncode == 0
    before = home.tree()
    containers = {name: home.container(name) for name in (POSTFIX, DOVECOT)}
    result = home.apply(variant(dev_raw, relay__port=2525), fail_on="doveconf")
    assert result.returncode == 1
    assert "doveconf refused the new extra.conf; nothing was changed" in result.stderr
    assert home.tree() == before
    # No container read the new files, so none needs to be touched to serve the old ones.
    assert {name: home.container(name) for name in (POSTFIX, DOVECOT)} == containers
    assert home.serving() == BOTH_SERVING
    # And mailgate still accepts its own files next time.
    assert home.apply().returncode == 0


def test_failure_after_a_container_loaded_new_files_loads_the_old_ones_again(home, dev_raw):
    assert home.apply().returncode == 0
    before = home.tree()
    postfix = home.container(POSTFIX)
    services = [s for s in dev_raw["services"] if s != "submission"]
    # Postfix is recreated with the new files first; the `up -d` of acme and dovecot then fails.
    result = home.apply(variant(dev_raw, relay__port=2525, services=services),
                        fail_on=f"up -d acme-mailcow {DOVECOT}")
    assert result.returncode == 1
    assert "could not recreate or restart the containers; restoring the previous files" in result.stderr
    assert home.tree() == before
    assert home.container(POSTFIX).recreations == postfix.recreations + 2
    assert home.serving() == BOTH_SERVING


def replay_mailcow_update(home: Home) -> None:
    """What Mailcow's update.sh does to mailcow.conf (_modules/scripts/migrate_options.sh,
    new_options.sh): ensure a final newline, delete a retired option with `sed -i` (a new
    file: new inode, ACLs gone), append new options at the end, chmod 600."""
    conf = mailcow_file(home, "mailcow.conf")
    subprocess.run(["sed", "-i", "--follow-symlinks", "$a\\", str(conf)], check=True)
    subprocess.run(["sed", "-i", r"/\bSOLR_PORT\b/d", str(conf)], check=True)
    with conf.open("a") as out:
        out.write("# IPv6 for the containers\nENABLE_IPV6=true\n")
    os.chmod(conf, 0o600)


def replay_postfix_start(home: Home) -> None:
    """What postfix-mailcow's start script (data/Dockerfiles/postfix/postfix.sh) does to
    extra.cf at every start: drop myhostname lines, write its own at the top (in place)."""
    extra_cf = mailcow_file(home, "data/conf/postfix/extra.cf")
    subprocess.run(["bash", "-c", 'sed -i "/\\$myhostname/! { /myhostname/d }" "$1"; '
                    'echo -e "myhostname = mail.example.com\n$(cat "$1")" > "$1"', "sh", str(extra_cf)], check=True)


def test_a_mailcow_update_between_two_ups_and_before_destroy_survives(home, dev_raw):
    """Item 2 of issue 10: mailgate owns only its blocks, on the live files."""
    os.chmod(mailcow_file(home, "mailcow.conf"), 0o644)
    assert home.apply().returncode == 0
    replay_mailcow_update(home)
    replay_postfix_start(home)
    # update.sh ends with `docker compose up -d`: the containers take the new mailcow.conf.
    home.docker.compose(home.mailcow, "up", "-d", POSTFIX, DOVECOT).check_returncode()
    assert home.serving() == BOTH_SERVING
    updated_conf = mailcow_file(home, "mailcow.conf").read_text()
    assert "ENABLE_IPV6=true" in updated_conf and "SOLR_PORT" not in updated_conf
    # Same settings: the files already hold mailgate's blocks, whoever changed the rest.
    again = home.apply()
    assert again.returncode == 0, again.stderr
    assert "home already up to date" in again.stdout
    # New settings: the blocks change in place, the update's lines stay.
    changed = home.apply(variant(dev_raw, relay__port=2525), gateway_tailnet_ip="100.64.0.9")
    assert changed.returncode == 0, changed.stderr
    conf = mailcow_file(home, "mailcow.conf")
    assert conf.read_text().endswith("# IPv6 for the containers\nENABLE_IPV6=true\n")
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    extra_cf = mailcow_file(home, "data/conf/postfix/extra.cf").read_text()
    assert extra_cf.startswith("myhostname = mail.example.com\nmessage_size_limit = 1\n")
    assert "relayhost = [smtp-relay.brevo.com]:2525" in extra_cf
    assert home.serving() == BOTH_SERVING
    # destroy takes out mailgate's blocks only: the update stays.
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert conf.read_text() == (MAILCOW_CONF.replace("SOLR_PORT=127.0.0.1:18983\n", "")
                                + "# IPv6 for the containers\nENABLE_IPV6=true\n")
    assert mailcow_file(home, "data/conf/postfix/extra.cf").read_text() == (
        "myhostname = mail.example.com\nmessage_size_limit = 1\n")
    assert not mailcow_file(home, "data/conf/dovecot/extra.conf").exists()  # mailgate created it
    assert not mailcow_file(home, "data/conf/postfix/mailgate_relay_passwd").exists()
    assert home.serving() == BOTH_SERVING


def test_an_edit_inside_a_block_is_refused_with_the_block_and_the_way_out(home, dev_raw):
    assert home.apply().returncode == 0
    conf = mailcow_file(home, "mailcow.conf")
    conf.write_text(conf.read_text().replace("SMTP_PORT_HAPROXY=100.64.0.2:10025", "SMTP_PORT_HAPROXY=0.0.0.0:10025"))
    before = home.tree(without_state=False)
    result = home.apply(variant(dev_raw, relay__port=2525))
    assert result.returncode == 1
    record = f"{home.root}{home.settings.names.home_state_dir}/blocks{home.settings.home.mailcow_dir}/mailcow.conf"
    assert (f"mailgate's block in {home.settings.home.mailcow_dir}/mailcow.conf was edited since mailgate wrote it; "
            "nothing was changed:") in result.stderr
    assert "\n-SMTP_PORT_HAPROXY=100.64.0.2:10025\n+SMTP_PORT_HAPROXY=0.0.0.0:10025\n" in result.stderr
    assert result.stderr.rstrip().endswith(f"sudo rm {record}")
    assert home.tree(without_state=False) == before
    # The one command it names, then the block is mailgate's again.
    os.remove(record)
    result = home.apply(variant(dev_raw, relay__port=2525))
    assert result.returncode == 0, result.stderr
    assert "SMTP_PORT_HAPROXY=100.64.0.2:10025" in conf.read_text() and "0.0.0.0" not in conf.read_text()
    assert home.serving() == BOTH_SERVING


def test_a_later_line_for_a_key_of_the_block_is_refused(home):
    assert home.apply().returncode == 0
    conf = mailcow_file(home, "mailcow.conf")
    with conf.open("a") as out:
        out.write("SMTP_PORT_HAPROXY=0.0.0.0:10025\n")
    before = home.tree(without_state=False)
    result = home.apply(gateway_tailnet_ip="100.64.0.9")
    assert result.returncode == 1
    assert ("mailcow.conf sets a key of mailgate's block again after the block, and the last value wins; "
            "nothing was changed:") in result.stderr
    assert "SMTP_PORT_HAPROXY=0.0.0.0:10025" in result.stderr and "move it above mailgate's block" in result.stderr
    assert home.tree(without_state=False) == before


def test_a_file_of_mailgate_edited_by_hand_is_refused(home, dev_raw):
    assert home.apply().returncode == 0
    password_map = mailcow_file(home, "data/conf/postfix/mailgate_relay_passwd")
    password_map.write_text("[smtp-relay.brevo.com]:587 someone:else\n")
    before = home.tree(without_state=False)
    result = home.apply(variant(dev_raw, relay__port=2525))
    assert result.returncode == 1
    assert "mailgate_relay_passwd changed since mailgate wrote it; nothing was changed" in result.stderr
    assert home.tree(without_state=False) == before


def test_an_override_mailgate_created_is_deleted_by_destroy(home):
    mailcow_file(home, "docker-compose.override.yml").unlink()
    original = home.tree()
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert "${SMTP_PORT_HAPROXY:?" in mailcow_file(home, "docker-compose.override.yml").read_text()
    assert home.destroy().returncode == 0
    assert home.tree(without_state=False) == original


def test_an_override_with_another_mapping_of_a_twin_port_is_refused_with_the_line(home):
    override = mailcow_file(home, "docker-compose.override.yml")
    override.write_text(USER_OVERRIDE + "  postfix-mailcow:\n    ports:\n      - \"127.0.0.1:10025:10025\"\n")
    before = home.tree(without_state=False)
    result = home.apply()
    assert result.returncode == 1
    assert "mailgate cannot add its twin-port mappings to" in result.stderr
    assert 'line 7 publishes port 10025 of postfix-mailcow (- "127.0.0.1:10025:10025")' in result.stderr
    assert home.tree(without_state=False) == before


def test_destroy_restores_the_original_tree_exactly(home):
    original = home.tree()
    assert home.apply().returncode == 0
    assert home.tree() != original
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert home.tree(without_state=False) == original
    assert home.settings.names.home_twin_chain not in home.filters()  # IPv4 and IPv6
    # Mailcow serves its original files again, extra.cf included.
    assert home.serving() == BOTH_SERVING


def test_a_destroy_that_failed_at_compose_is_finished_by_the_next(home):
    original = home.tree()
    assert home.apply().returncode == 0
    failed = home.destroy(fail_on="compose up")
    assert failed.returncode == 1 and "run destroy again" in failed.stderr
    assert home.tree() == original
    assert home.serving() == {POSTFIX: False, DOVECOT: False}
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert home.tree(without_state=False) == original
    assert home.serving() == BOTH_SERVING


def test_relay_password_travels_only_on_stdin(home):
    assert home.apply().returncode == 0
    assert home.destroy().returncode == 0
    for script in home.commands_sent:
        assert PASSWORD not in script
    for output in home.outputs:
        assert PASSWORD not in output
    assert PASSWORD not in "\n".join(home.docker_calls())
    assert PASSWORD not in home.sshd.log.read_text()


def test_the_docker_stand_in_applies_a_mounted_file_only_on_a_restart(tmp_path):
    """The premise of the tests above: Compose's rule, kept by tests/fake_docker.py."""
    docker, mailcow = FakeDocker(tmp_path / "docker"), tmp_path / "mailcow"
    (mailcow / "data/conf/postfix").mkdir(parents=True)
    (mailcow / "mailcow.conf").write_text(MAILCOW_CONF)
    extra_cf = mailcow / "data/conf/postfix/extra.cf"
    assert not docker.container(mailcow, POSTFIX).created
    assert docker.compose(mailcow, "up", "-d", POSTFIX).returncode == 0
    assert docker.serves(mailcow, POSTFIX) and docker.container(mailcow, POSTFIX).created
    extra_cf.write_text("relayhost = [relay.example.net]:587\n")
    docker.compose(mailcow, "up", "-d", POSTFIX)
    assert not docker.serves(mailcow, POSTFIX)  # unchanged definition: left running
    docker.compose(mailcow, "restart", POSTFIX)
    assert docker.serves(mailcow, POSTFIX)
    with (mailcow / "mailcow.conf").open("a") as conf:
        conf.write("SMTP_PORT_HAPROXY=100.64.0.2:10025\n")
    assert not docker.serves(mailcow, POSTFIX)
    docker.compose(mailcow, "restart", POSTFIX)
    assert not docker.serves(mailcow, POSTFIX)  # a restart keeps the old definition
    docker.compose(mailcow, "up", "-d", POSTFIX)
    assert docker.serves(mailcow, POSTFIX)
    assert docker.container(mailcow, POSTFIX) == Container(created=True, recreations=1, restarts=2)
    docker.fail_on("restart")
    assert docker.compose(mailcow, "restart", POSTFIX).returncode == 1
    assert docker.compose(mailcow, "ps").returncode == 2  # unknown commands fail loudly
    assert docker.calls(mailcow)[-2:] == [f"compose restart {POSTFIX}", "compose ps"]


def test_a_login_without_root_or_sudo_stops_at_once_and_changes_nothing(tmp_path, dev_settings, login):
    with running_home(tmp_path, dev_settings, "mg5p", login(PLAIN_LOGIN)) as home:
        before, calls = home.tree(without_state=False), home.docker.calls()
        deployment = Deployment(gateway_tailnet_ip=GATEWAY_TAILNET_IP)
        files = home_files(dev_settings, deployment, Secrets(relay_password=PASSWORD))
        result = home.run(render_home_apply(dev_settings, files, home.commands),
                          home_bundle(dev_settings, files, deployment))
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"mailgate: {PLAIN_LOGIN}@{socket.gethostname()} is neither root nor allowed "
            "passwordless sudo; nothing was changed. Log in as root, or allow it: echo "
            f"'{PLAIN_LOGIN} ALL=(root) NOPASSWD: ALL' | sudo tee /etc/sudoers.d/mailgate"]
        result = home.run(render_home_restore(dev_settings, home.commands))
        assert result.returncode == 1 and "nothing was changed" in result.stderr
        assert home.tree(without_state=False) == before and home.docker.calls() == calls


# Item 6 of issue 10: mistakes Postfix itself accepts with exit 0 (`postconf -n`), caught
# on the staged copies, with Postfix's own words, before any live file changes.
@pytest.mark.parametrize("mistake, message", [
    ("smtp_tls_security_level = encrpyt\n", 'posttls-finger: fatal: Invalid TLS level "encrpyt"'),
    ("smtp_sasl_password_maps = hashh:/opt/postfix/conf/mailgate_relay_passwd\n",
     "postmap: fatal: unsupported dictionary type: hashh"),
    ("smtp_tls_securty_level = encrypt\n",
     "postconf: warning: main.cf with the new extra.cf: unused parameter: smtp_tls_securty_level=encrypt"),
], ids=["misspelt-tls-level", "unknown-map-type", "unknown-parameter"])
def test_a_postfix_mistake_is_refused_with_postfix_own_message_and_nothing_installed(home, mistake, message):
    assert home.apply().returncode == 0
    before, containers = home.tree(without_state=False), {n: home.container(n) for n in (POSTFIX, DOVECOT)}
    result = home.apply(gateway_tailnet_ip="100.64.0.9", mistakes={"extra.cf": mistake})
    assert result.returncode == 1
    assert "Postfix refused the new extra.cf or relay password map; nothing was changed" in result.stderr
    assert message in result.stderr
    assert home.tree(without_state=False) == before
    assert {n: home.container(n) for n in (POSTFIX, DOVECOT)} == containers
    assert "100.64.0.9" not in home.netns.run(["iptables-save"]).stdout


def test_a_dovecot_mistake_is_refused_with_dovecot_own_message(home):
    assert home.apply().returncode == 0
    before = home.tree(without_state=False)
    result = home.apply(gateway_tailnet_ip="100.64.0.9", mistakes={"extra.conf": "mail_plugins_typo = quota\n"})
    assert result.returncode == 1
    assert "doveconf refused the new extra.conf; nothing was changed" in result.stderr
    assert "doveconf: Fatal:" in result.stderr and "mail_plugins_typo" in result.stderr
    assert home.tree(without_state=False) == before


# Item 7: Compose as Mailcow picks it, files as the host has them.
def test_standalone_docker_compose_is_used_when_the_plugin_is_missing(home, tmp_path):
    home.docker = FakeDocker(home.docker.path, plugin=False, exec_locally=True)
    (tmp_path / "bin").mkdir()
    standalone = home.docker.standalone(tmp_path / "bin/docker-compose")
    commands = dataclasses.replace(home.commands, docker_compose=str(standalone))
    calls = len(home.docker.programs())
    result = home.apply(commands=commands)
    assert result.returncode == 0, result.stderr
    assert home.serving() == BOTH_SERVING
    used = list(zip(home.docker.programs(), home.docker.calls()))[calls:]
    assert ("docker-compose", "compose up -d --force-recreate acme-mailcow dovecot-mailcow postfix-mailcow") in used
    assert {program for program, call in used if call.startswith("compose ") and call != "compose"} == {"docker-compose"}
    # Neither: stop before anything changes.
    before = home.tree(without_state=False)
    nothing = dataclasses.replace(home.commands, docker_compose=str(tmp_path / "bin/missing"))
    result = home.apply(gateway_tailnet_ip="100.64.0.9", commands=nothing)
    assert result.returncode == 1
    assert "found neither `docker compose` nor `docker-compose` of version 2 or later" in result.stderr
    assert home.tree(without_state=False) == before


def test_installs_keep_owner_mode_and_acls_and_write_through_symlinks(home):
    conf = mailcow_file(home, "mailcow.conf")
    real_conf = home.root / "srv/secrets/mailcow.conf"
    real_conf.parent.mkdir(parents=True)
    os.replace(conf, real_conf)
    conf.symlink_to(real_conf)
    extra_cf = mailcow_file(home, "data/conf/postfix/extra.cf")
    os.chown(extra_cf, 1234, 2345)
    os.chmod(extra_cf, 0o664)
    acl = subprocess.run(["setfacl", "-m", "u:4321:r", str(extra_cf)], capture_output=True, text=True)
    assert acl.returncode == 0, acl.stderr
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert conf.is_symlink() and os.readlink(conf) == str(real_conf)
    assert "SMTP_PORT_HAPROXY=" in real_conf.read_text() and oct(real_conf.stat().st_mode & 0o777) == "0o600"
    stat = extra_cf.stat()
    assert "relayhost" in extra_cf.read_text()
    assert (stat.st_uid, stat.st_gid, oct(stat.st_mode & 0o777)) == (1234, 2345, "0o664")
    assert "user:4321:r--" in subprocess.run(["getfacl", "-p", str(extra_cf)], capture_output=True,
                                             text=True).stdout
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert conf.is_symlink() and real_conf.read_text() == MAILCOW_CONF


ALERTS_ON = {"to": "owner@example.net"}


def systemctl_calls(home: Home) -> list[str]:
    log = Path(f"{home.systemctl}.log")
    return log.read_text().splitlines() if log.exists() else []


def watch_calls(home: Home) -> list[str]:
    unit = f"{home.settings.names.watch_unit}.timer"
    return [call for call in systemctl_calls(home) if call.endswith(unit)]


def test_the_watcher_is_laid_down_and_its_timer_follows_the_alert_setting(home, dev_raw):
    names = home.settings.names
    config, script = home.root / names.watch_config.lstrip("/"), home.root / names.watch_script.lstrip("/")
    assert home.apply().returncode == 0
    assert watch_calls(home) == [f"disable --now {names.watch_unit}.timer"]
    assert oct(script.stat().st_mode & 0o777) == "0o755" and oct(config.stat().st_mode & 0o777) == "0o600"
    assert '"enabled": false' in config.read_text()
    for suffix in ("service", "timer"):
        assert (home.root / names.watch_unit_path(suffix).lstrip("/")).is_file()

    alerting = variant(dev_raw, alerts=ALERTS_ON)
    result = home.apply(alerting)
    assert result.returncode == 0, result.stderr
    # Units first known to systemd, then the timer on.
    assert systemctl_calls(home)[-2:] == ["daemon-reload", f"enable --now {names.watch_unit}.timer"]
    assert PASSWORD in config.read_text() and oct(config.stat().st_mode & 0o777) == "0o600"
    assert home.apply(alerting).stdout.strip() == "mailgate: home already up to date"

    assert home.apply().returncode == 0
    assert watch_calls(home)[-1] == f"disable --now {names.watch_unit}.timer"
    # What the watcher remembered, in systemd's StateDirectory of a DynamicUser.
    state = home.root / "var/lib/private" / names.watch_unit
    state.mkdir(parents=True)
    (state / "state.json").write_text("{}")
    (home.root / "var/lib" / names.watch_unit).symlink_to(state)
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert watch_calls(home)[-1] == f"disable --now {names.watch_unit}.timer"
    assert not config.exists() and not script.exists() and not state.exists()
    assert not (home.root / "var/lib" / names.watch_unit).is_symlink()
    assert not any(PASSWORD in output for output in home.outputs)


def test_alerts_on_a_host_without_python_are_refused_before_anything_changes(home, dev_raw):
    before = home.tree(without_state=False)
    result = home.apply(variant(dev_raw, alerts=ALERTS_ON),
                        commands=dataclasses.replace(home.commands, python="/nonexistent/python3"))
    assert result.returncode == 1
    assert "alerts (mailgate:alerts.to) need /nonexistent/python3 on this host" in result.stderr
    assert home.tree(without_state=False) == before and watch_calls(home) == []


def test_a_timer_that_will_not_start_undoes_the_whole_run(home, dev_raw, tmp_path):
    assert home.apply().returncode == 0
    before, serving = home.tree(), home.serving()
    refusing = tmp_path / "refusing-systemctl"
    refusing.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{home.systemctl}.log"\n'
                        'case "$1" in enable) echo "Failed to enable unit" >&2; exit 1 ;; esac\n')
    refusing.chmod(0o755)
    result = home.apply(variant(dev_raw, alerts=ALERTS_ON, services=["smtp", "submission"]),
                        commands=dataclasses.replace(home.commands, systemctl=str(refusing)))
    assert result.returncode == 1
    assert "systemctl could not start or stop mailgate's timers (mailgate-dev-watch.timer)" in result.stderr
    # Every file as before, the containers back on them, the timer set as the old config says.
    assert home.tree() == before and home.serving() == serving
    assert watch_calls(home)[-1] == f"disable --now {home.settings.names.watch_unit}.timer"


# Issue 13, item 3: Mailcow's fail2ban bans by packet source, and every client comes from
# the gateway's tailnet address, which it does not count as private: the gateway is kept
# in its allowlist (F2B_WHITELIST in redis-mailcow).
GATEWAY_ENTRY = f"{GATEWAY_TAILNET_IP}/32"
USER_ENTRY = "192.0.2.0/24"


def redis_writes(home: Home, since: int = 0) -> list[str]:
    """The redis-cli calls that change a key, oldest first ("HSET F2B_WHITELIST ...")."""
    return [" ".join(c["args"][1:]) for c in home.docker.redis_calls()[since:] if c["args"][1] in ("HSET", "HDEL")]


def test_the_gateway_is_whitelisted_once(home):
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert home.whitelist() == {GATEWAY_ENTRY: "1"}
    # A ban of the gateway in force is lifted, as Mailcow's UI does when it whitelists.
    assert home.docker.redis_hash(home.mailcow, "F2B_QUEUE_UNBAN") == {GATEWAY_ENTRY: "1"}
    assert f"mailgate: {GATEWAY_ENTRY} (the gateway) added to Mailcow's fail2ban whitelist" in result.stdout
    assert home.whitelist_record() == f"{GATEWAY_ENTRY} added\n"
    writes = len(home.docker.redis_calls())
    again = home.apply()
    assert again.returncode == 0 and "already up to date" in again.stdout
    assert redis_writes(home, writes) == [] and home.whitelist() == {GATEWAY_ENTRY: "1"}


def test_a_new_gateway_moves_the_entry_and_destroy_takes_exactly_it_out(home):
    assert home.docker.redis_cli(home.mailcow, "HSET", "F2B_WHITELIST", USER_ENTRY, "1").stdout == "1\n"
    assert home.apply().returncode == 0
    assert home.whitelist() == {USER_ENTRY: "1", GATEWAY_ENTRY: "1"}
    result = home.apply(gateway_tailnet_ip="100.64.0.9")  # a rebuilt VM
    assert result.returncode == 0, result.stderr
    assert home.whitelist() == {USER_ENTRY: "1", "100.64.0.9/32": "1"}
    assert home.whitelist_record() == "100.64.0.9/32 added\n"
    # The user removed it by hand: the next run that goes puts it back.
    assert home.docker.redis_cli(home.mailcow, "HDEL", "F2B_WHITELIST", "100.64.0.9/32").returncode == 0
    assert home.apply(gateway_tailnet_ip="100.64.0.9").returncode == 0
    assert home.whitelist() == {USER_ENTRY: "1", "100.64.0.9/32": "1"}
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert home.whitelist() == {USER_ENTRY: "1"}


def test_an_entry_there_before_mailgate_stays_on_destroy(home):
    for entry in (USER_ENTRY, GATEWAY_ENTRY):
        assert home.docker.redis_cli(home.mailcow, "HSET", "F2B_WHITELIST", entry, "1").returncode == 0
    calls = len(home.docker.redis_calls())
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert redis_writes(home, calls) == [] and "fail2ban" not in result.stdout
    assert home.whitelist_record() == f"{GATEWAY_ENTRY} found\n"
    assert home.apply().stdout.strip() == "mailgate: home already up to date"
    # A new gateway is mailgate's own entry; the one found stays where it was.
    assert home.apply(gateway_tailnet_ip="100.64.0.9").returncode == 0
    assert home.whitelist() == {USER_ENTRY: "1", GATEWAY_ENTRY: "1", "100.64.0.9/32": "1"}
    assert home.destroy().returncode == 0
    assert home.whitelist() == {USER_ENTRY: "1", GATEWAY_ENTRY: "1"}


def test_the_redis_password_is_never_on_a_command_line(home):
    assert home.apply().returncode == 0
    assert home.apply(gateway_tailnet_ip="100.64.0.9").returncode == 0
    assert home.destroy().returncode == 0
    redis_calls = home.docker.redis_calls()
    assert len(redis_calls) >= 6 and all(call["auth_env"] for call in redis_calls)  # REDISCLI_AUTH
    recorded = "\n".join([*home.docker.calls(), *(" ".join(call["args"]) for call in redis_calls),
                          *home.commands_sent, *home.outputs, home.sshd.log.read_text()])
    assert REDIS_PASSWORD not in recorded


def test_an_older_mailcow_whose_redis_has_no_password(home):
    home.docker = FakeDocker(home.docker.path, exec_locally=True, real_config=need_program("docker-compose"),
                             redis_password="")
    assert home.apply().returncode == 0
    assert home.whitelist() == {GATEWAY_ENTRY: "1"}
    assert not any(call["auth_env"] for call in home.docker.redis_calls())
    assert home.destroy().returncode == 0 and home.whitelist() == {}


def test_redis_down_stops_apply_before_anything_changes(home):
    before = home.tree(without_state=False)
    result = home.apply(fail_on=REDIS)
    assert result.returncode == 1
    assert ("cannot read Mailcow's fail2ban whitelist (F2B_WHITELIST in redis-mailcow: does Mailcow run?); "
            "nothing was changed:\nfake docker: failing as told") in result.stderr
    assert home.tree(without_state=False) == before and home.serving() == BOTH_SERVING
    assert home.whitelist() == {}


def test_a_failure_after_the_whitelist_puts_the_earlier_entry_back(home, dev_raw, tmp_path):
    assert home.apply().returncode == 0
    before = home.tree()
    refusing = tmp_path / "refusing-systemctl"
    refusing.write_text('#!/bin/sh\ncase "$1" in enable) echo "Failed to enable unit" >&2; exit 1 ;; esac\n')
    refusing.chmod(0o755)
    # The entry moves to the new gateway, then the watcher's timer will not start.
    result = home.apply(variant(dev_raw, alerts=ALERTS_ON), gateway_tailnet_ip="100.64.0.9",
                        commands=dataclasses.replace(home.commands, systemctl=str(refusing)))
    assert result.returncode == 1
    assert redis_writes(home)[-2:] == ["HDEL F2B_WHITELIST 100.64.0.9/32", f"HSET F2B_WHITELIST {GATEWAY_ENTRY} 1"]
    assert home.whitelist() == {GATEWAY_ENTRY: "1"} and home.tree() == before
    # A failure to whitelist fails the run and undoes it.
    result = home.apply(gateway_tailnet_ip="100.64.0.9", fail_on="HSET F2B_WHITELIST 100.64.0.9/32")
    assert result.returncode == 1
    assert "could not add the gateway (100.64.0.9/32) to Mailcow's fail2ban whitelist" in result.stderr
    assert home.whitelist() == {GATEWAY_ENTRY: "1"} and home.tree() == before
    assert home.serving() == BOTH_SERVING


def test_a_destroy_that_could_not_reach_redis_is_finished_by_the_next(home):
    original = home.tree()
    assert home.apply().returncode == 0
    failed = home.destroy(fail_on="HDEL F2B_WHITELIST")
    assert failed.returncode == 1 and "run destroy again" in failed.stderr
    assert home.whitelist() == {GATEWAY_ENTRY: "1"}
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert home.whitelist() == {} and home.tree(without_state=False) == original


def test_the_redis_stand_in_keeps_hashes_and_asks_for_the_password(tmp_path):
    """The premise of the whitelist tests: redis-cli in redis-mailcow as tests/fake_docker.py
    models it (Redis with `requirepass`, --raw replies)."""
    docker, mailcow = FakeDocker(tmp_path / "docker"), tmp_path / "mailcow"
    mailcow.mkdir()
    assert docker.redis_cli(mailcow, "HSET", "F2B_WHITELIST", "a", "1", "b", "1").stdout == "2\n"
    assert docker.redis_cli(mailcow, "HSET", "F2B_WHITELIST", "a", "1").stdout == "0\n"
    assert docker.redis_cli(mailcow, "HEXISTS", "F2B_WHITELIST", "b").stdout == "1\n"
    assert docker.redis_cli(mailcow, "HDEL", "F2B_WHITELIST", "b", "c").stdout == "1\n"
    assert docker.redis_cli(mailcow, "HGETALL", "F2B_WHITELIST").stdout == "a\n1\n"
    assert docker.redis_hash(mailcow, "F2B_WHITELIST") == {"a": "1"}
    no_password = docker.compose(mailcow, "exec", "-T", REDIS, "redis-cli", "HEXISTS", "F2B_WHITELIST", "a")
    assert no_password.returncode == 1 and "NOAUTH Authentication required." in no_password.stdout
    assert [call["auth_env"] for call in docker.redis_calls()][-2:] == [True, False]


DNS_TOKEN = "cf-token-4d2c9e1a"  # a DNS provider's API token, as secret as the relay password
ACME_TEMPLATE = "# DNS-01 provider credentials (the acme container's template)\n"


def test_dns_01_credentials_reach_only_the_acme_container_and_destroy_takes_them_out(home, dev_raw):
    acme_conf = mailcow_file(home, "data/conf/acme/dns-01.conf")
    acme_conf.parent.mkdir(parents=True, exist_ok=True)
    acme_conf.write_text(ACME_TEMPLATE)  # what the acme container writes at its first start,
    acme_conf.chmod(0o644)  # as root with umask 022
    assert home.apply().returncode == 0
    assert "SKIP_IP_CHECK=y" in mailcow_file(home, "mailcow.conf").read_text()
    dns_01 = variant(dev_raw, acme={"method": "dns-01", "dnsProvider": "dns_cf", "accountEmail": "me@example.net"})
    postfix, dovecot, acme = (home.container(name) for name in (POSTFIX, DOVECOT, "acme-mailcow"))

    result = home.apply(dns_01, dns_credentials={"CF_Token": DNS_TOKEN})
    assert result.returncode == 0, result.stderr
    assert DNS_TOKEN not in result.stdout + result.stderr
    text = acme_conf.read_text()
    assert text.startswith(ACME_TEMPLATE) and f'CF_Token="{DNS_TOKEN}"' in text
    assert oct(acme_conf.stat().st_mode & 0o777) == "0o600"  # the token is not for every user
    conf = mailcow_file(home, "mailcow.conf").read_text()
    assert "ACME_DNS_CHALLENGE=y\nACME_DNS_PROVIDER=dns_cf\nACME_ACCOUNT_EMAIL=me@example.net" in conf
    # The acme container is recreated for its environment (and restarted for dns-01.conf);
    # Postfix and Dovecot are left alone... in Compose. The fake compares all of
    # mailcow.conf, so it recreates them too; what the step asks is what is checked here.
    assert "recreated: acme-mailcow dovecot-mailcow postfix-mailcow; restarted: none" in result.stdout
    assert home.container("acme-mailcow").recreations == acme.recreations + 1
    assert (home.container(POSTFIX).restarts, home.container(DOVECOT).restarts) == (postfix.restarts, dovecot.restarts)

    # A new token alone: the acme container restarts, nothing else.
    result = home.apply(dns_01, dns_credentials={"CF_Token": DNS_TOKEN + "-2"})
    assert result.returncode == 0, result.stderr
    assert "(recreated: none; restarted: acme-mailcow)" in result.stdout
    assert f'CF_Token="{DNS_TOKEN}-2"' in acme_conf.read_text() and DNS_TOKEN + '"' not in acme_conf.read_text()

    # A hand edit inside the block stops the next up, and the message never shows the token.
    written = acme_conf.read_text()
    acme_conf.write_text(written.replace(f"{DNS_TOKEN}-2", f"{DNS_TOKEN}-by-hand"))
    refused = home.apply(dns_01, dns_credentials={"CF_Token": DNS_TOKEN + "-2"})
    assert refused.returncode == 1 and "was edited since mailgate wrote it" in refused.stderr
    assert DNS_TOKEN not in refused.stdout + refused.stderr and "not shown" in refused.stderr
    acme_conf.write_text(written)

    assert home.destroy().returncode == 0
    assert acme_conf.read_text() == ACME_TEMPLATE  # the container's own file, as it was
    assert "ACME_DNS" not in mailcow_file(home, "mailcow.conf").read_text()
