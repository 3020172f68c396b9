"""The home step's scripts, run for real over SSH against a Mailcow-like tree.

There is no Docker engine here: `docker` is tests/fake_docker.py, which keeps Compose's
rule for when a container reads its files, so a test can ask whether postfix-mailcow and
dovecot-mailcow serve the files on disk. iptables is real, inside a private network
namespace.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from mailgate.deployment import Deployment
from mailgate.layout import Secrets, home_files
from mailgate.renderers.remote_scripts import (
    DOVECOT,
    POSTFIX,
    HostCommands,
    originals_for_merge,
    pack,
    render_home_apply,
    render_home_restore,
    render_home_snapshot,
    unpack,
)
from tests.fake_docker import Container, FakeDocker
from tests.settings_variants import variant
from tests.sshd import PLAIN_LOGIN, SUDO_LOGIN, start_sshd
from tests.validators import Netns

PASSWORD = "xsmtpsib-Sup3r-s3cret-relay-key"
USER_OVERRIDE = "services:\n  rspamd-mailcow:\n    environment:\n      - MINE=1  # keep\n"
MAILCOW_CONF = "MAILCOW_HOSTNAME=mail.example.com\nDBPASS=db-secret-not-ours\n"
GATEWAY_TAILNET_IP = "100.64.0.1"
BOTH_SERVING = {POSTFIX: True, DOVECOT: True}

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
        os.chmod(mailcow / "mailcow.conf", 0o600)
        self.mailcow = mailcow
        self.docker = FakeDocker(tmp / "docker")
        # Mailcow runs before mailgate arrives.
        self.docker.compose(mailcow, "up", "-d", POSTFIX, DOVECOT).check_returncode()
        systemctl = tmp / "systemctl"
        systemctl.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$0.log"\n')
        systemctl.chmod(0o755)
        netns.run(["iptables", "-N", "DOCKER-USER"]).check_returncode()
        in_ns = f"ip netns exec {netns.name} "
        self.commands = HostCommands(root=str(self.root), docker=str(self.docker.path),
                                     iptables=in_ns + "iptables", systemctl=str(systemctl),
                                     sysctl=in_ns + "sysctl")
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
              gateway_tailnet_ip: str = GATEWAY_TAILNET_IP):
        """What `pulumi up` does: snapshot, merge locally, ship, apply."""
        settings = settings or self.settings
        snapshot = self.run(render_home_snapshot(settings, self.commands))
        assert snapshot.returncode == 0, snapshot.stderr
        existing = originals_for_merge(settings, unpack(snapshot.stdout))
        files = home_files(settings, Deployment(gateway_tailnet_ip=gateway_tailnet_ip),
                           Secrets(relay_password=password), existing)
        self.docker.fail_on(fail_on)
        return self.run(render_home_apply(settings, files, self.commands), pack(files))

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

    def serving(self) -> dict[str, bool]:
        """Whether each container serves the definition and mounted files on disk now."""
        return {name: self.docker.serves(self.mailcow, name) for name in (POSTFIX, DOVECOT)}

    def chain_hooked(self) -> bool:
        saved = self.netns.run(["iptables-save"]).stdout
        return f"-A DOCKER-USER -j {self.settings.names.home_twin_chain}" in saved


@pytest.fixture(params=["root", SUDO_LOGIN])
def home(request, tmp_path, dev_settings, login):
    """The Mini PC, reached as root and as a user with passwordless sudo (every test runs
    with both logins)."""
    user = request.param if request.param == "root" else login(request.param)
    with Netns("mg5") as netns:
        instance = Home(tmp_path, dev_settings, netns, user)
        try:
            yield instance
        finally:
            instance.sshd.stop()


def mailcow_file(home: Home, relative: str) -> Path:
    return home.root / home.settings.home.mailcow_dir.lstrip("/") / relative


def test_first_apply_writes_merges_validates_and_recreates(home):
    assert home.serving() == BOTH_SERVING  # Mailcow as it ran before mailgate
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert "(recreated: dovecot-mailcow postfix-mailcow; restarted: none)" in result.stdout
    override = mailcow_file(home, "docker-compose.override.yml").read_text()
    assert "MINE=1  # keep" in override and "${SMTP_PORT_HAPROXY:?" in override
    conf = mailcow_file(home, "mailcow.conf").read_text()
    assert conf.startswith(MAILCOW_CONF) and "SMTP_PORT_HAPROXY=100.64.0.2:10025" in conf
    assert mailcow_file(home, "data/conf/postfix/extra.cf").read_text().startswith("message_size_limit = 1\n")
    password_map = mailcow_file(home, "data/conf/postfix/mailgate_relay_passwd")
    assert PASSWORD in password_map.read_text()
    assert oct(password_map.stat().st_mode & 0o777) == "0o640"
    calls = home.docker_calls()
    assert "compose config -q" in calls
    assert any(c.startswith("compose exec -T postfix-mailcow sh -c") and "postconf" in c for c in calls)
    assert "compose exec -T dovecot-mailcow doveconf -n" in calls
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
    assert len(home.docker_calls()) == calls
    assert home.serving() == BOTH_SERVING
    saved = home.netns.run(["iptables-save"]).stdout
    assert saved.count(f"-A DOCKER-USER -j {home.settings.names.home_twin_chain}") == 1


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
    result = home.apply(fail_on="up -d")
    assert result.returncode == 1
    saved = home.netns.run(["iptables-save"]).stdout
    assert home.settings.names.home_twin_chain not in saved


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
    assert "doveconf refused extra.conf; restoring the previous files" in result.stderr
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
    # Postfix is recreated with the new files first; dovecot's `up -d` then fails.
    result = home.apply(variant(dev_raw, relay__port=2525, services=services),
                        fail_on=f"up -d {DOVECOT}")
    assert result.returncode == 1
    assert "could not recreate or restart the containers; restoring the previous files" in result.stderr
    assert home.tree() == before
    assert home.container(POSTFIX).recreations == postfix.recreations + 2
    assert home.serving() == BOTH_SERVING


def test_hand_edits_stop_the_run_before_anything_changes(home, dev_raw):
    assert home.apply().returncode == 0
    with mailcow_file(home, "mailcow.conf").open("a") as conf:
        conf.write("MY_NEW_SETTING=1\n")
    before = home.tree()
    result = home.apply(variant(dev_raw, relay__port=2525))
    assert result.returncode == 1 and "mailcow.conf changed since mailgate wrote it" in result.stderr
    assert home.tree() == before


def test_destroy_restores_the_original_tree_exactly(home):
    original = home.tree()
    assert home.apply().returncode == 0
    assert home.tree() != original
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert home.tree(without_state=False) == original
    assert not home.chain_hooked()
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
    with Netns("mg5p") as netns:
        home = Home(tmp_path, dev_settings, netns, login(PLAIN_LOGIN))
        try:
            before, calls = home.tree(without_state=False), home.docker.calls()
            result = home.run(render_home_snapshot(dev_settings, home.commands))
            assert result.returncode == 1
            assert result.stderr.strip().splitlines() == [
                f"mailgate: {PLAIN_LOGIN}@{socket.gethostname()} is neither root nor allowed "
                "passwordless sudo; nothing was changed. Log in as root, or allow it: echo "
                f"'{PLAIN_LOGIN} ALL=(root) NOPASSWD: ALL' | sudo tee /etc/sudoers.d/mailgate"]
            files = home_files(dev_settings, Deployment(gateway_tailnet_ip=GATEWAY_TAILNET_IP),
                               Secrets(relay_password=PASSWORD))
            result = home.run(render_home_apply(dev_settings, files, home.commands), pack(files))
            assert result.returncode == 1 and "nothing was changed" in result.stderr
            assert home.tree(without_state=False) == before and home.docker.calls() == calls
        finally:
            home.sshd.stop()
