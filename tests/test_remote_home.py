"""The home step's scripts, run for real over SSH against a Mailcow-like tree.

There is no Docker engine here: `docker` is a recording stand-in that can be told to
fail a given call. iptables is real, inside a private network namespace.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mailgate.deployment import Deployment
from mailgate.layout import Secrets, home_files
from mailgate.renderers.remote_scripts import (
    HostCommands,
    originals_for_merge,
    pack,
    render_home_apply,
    render_home_restore,
    render_home_snapshot,
    unpack,
)
from tests.settings_variants import variant
from tests.sshd import start_sshd
from tests.validators import Netns

PASSWORD = "xsmtpsib-Sup3r-s3cret-relay-key"
USER_OVERRIDE = "services:\n  rspamd-mailcow:\n    environment:\n      - MINE=1  # keep\n"
MAILCOW_CONF = "MAILCOW_HOSTNAME=mail.example.com\nDBPASS=db-secret-not-ours\n"

FAKE_DOCKER = """#!/bin/sh
# Stand-in for the docker CLI: records each call; fails a call that contains the text
# in $0.fail, if that file exists.
printf '%s\\n' "$*" >> "$0.log"
if [ -f "$0.fail" ] && printf '%s' "$*" | grep -qF "$(cat "$0.fail")"; then
  echo "fake docker: failing as told" >&2
  exit 1
fi
"""


class Home:
    def __init__(self, tmp: Path, settings, netns: Netns):
        self.settings = settings
        self.root = tmp / "root"
        mailcow = self.root / settings.home.mailcow_dir.lstrip("/")
        (mailcow / "data/conf/postfix").mkdir(parents=True)
        (mailcow / "data/conf/dovecot").mkdir(parents=True)
        (mailcow / "mailcow.conf").write_text(MAILCOW_CONF)
        (mailcow / "docker-compose.override.yml").write_text(USER_OVERRIDE)
        (mailcow / "data/conf/postfix/extra.cf").write_text("message_size_limit = 1\n")
        os.chmod(mailcow / "mailcow.conf", 0o600)
        self.docker = tmp / "docker"
        self.docker.write_text(FAKE_DOCKER)
        self.docker.chmod(0o755)
        self.docker_log = Path(str(self.docker) + ".log")
        systemctl = tmp / "systemctl"
        systemctl.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$0.log"\n')
        systemctl.chmod(0o755)
        netns.run(["iptables", "-N", "DOCKER-USER"]).check_returncode()
        in_ns = f"ip netns exec {netns.name} "
        self.commands = HostCommands(root=str(self.root), docker=str(self.docker),
                                     iptables=in_ns + "iptables", systemctl=str(systemctl))
        self.netns = netns
        self.sshd = start_sshd(tmp / "ssh")
        self.outputs: list[str] = []
        self.commands_sent: list[str] = []

    def run(self, script: str, stdin: str = ""):
        self.commands_sent.append(script)
        result = self.sshd.run(script, stdin)
        self.outputs += [result.stdout, result.stderr]
        return result

    def apply(self, settings=None, fail_on: str | None = None):
        """What `pulumi up` does: snapshot, merge locally, ship, apply."""
        settings = settings or self.settings
        snapshot = self.run(render_home_snapshot(settings, self.commands))
        assert snapshot.returncode == 0, snapshot.stderr
        existing = originals_for_merge(settings, unpack(snapshot.stdout))
        files = home_files(settings, Deployment(gateway_tailnet_ip="100.64.0.1"),
                           Secrets(relay_password=PASSWORD), existing)
        fail_file = Path(str(self.docker) + ".fail")
        fail_file.unlink(missing_ok=True)
        if fail_on:
            fail_file.write_text(fail_on)
        return self.run(render_home_apply(settings, files, self.commands), pack(files))

    def destroy(self):
        return self.run(render_home_restore(self.settings, self.commands))

    def tree(self, without_state: bool = True) -> dict[str, tuple[str, int]]:
        found = {}
        for path in sorted(self.root.rglob("*")):
            relative = "/" + str(path.relative_to(self.root))
            if path.is_file() and not (without_state and relative.startswith(self.settings.names.home_state_dir)):
                found[relative] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
        return found

    def docker_calls(self) -> list[str]:
        return self.docker_log.read_text().splitlines() if self.docker_log.exists() else []

    def chain_hooked(self) -> bool:
        saved = self.netns.run(["iptables-save"]).stdout
        return f"-A DOCKER-USER -j {self.settings.names.home_twin_chain}" in saved


@pytest.fixture
def home(tmp_path, dev_settings):
    with Netns("mg5") as netns:
        instance = Home(tmp_path, dev_settings, netns)
        try:
            yield instance
        finally:
            instance.sshd.stop()


def mailcow_file(home: Home, relative: str) -> Path:
    return home.root / home.settings.home.mailcow_dir.lstrip("/") / relative


def test_first_apply_writes_merges_validates_and_recreates(home):
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert "(restarted: dovecot-mailcow postfix-mailcow)" in result.stdout
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
    assert calls[-1] == "compose up -d dovecot-mailcow postfix-mailcow"
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
    saved = home.netns.run(["iptables-save"]).stdout
    assert saved.count(f"-A DOCKER-USER -j {home.settings.names.home_twin_chain}") == 1


def test_only_the_affected_container_is_recreated(home, dev_raw):
    assert home.apply().returncode == 0
    result = home.apply(variant(dev_raw, relay__port=2525))
    assert result.returncode == 0, result.stderr
    assert home.docker_calls()[-1] == "compose up -d postfix-mailcow"


def test_failed_validation_rolls_everything_back_byte_for_byte(home, dev_raw):
    assert home.apply().returncode == 0
    before = home.tree()
    result = home.apply(variant(dev_raw, relay__port=2525), fail_on="doveconf")
    assert result.returncode == 1
    assert "doveconf refused extra.conf; restoring the previous files" in result.stderr
    assert home.tree() == before
    # The old state is re-applied, and mailgate still accepts its own files next time.
    assert home.docker_calls()[-1] == "compose up -d postfix-mailcow"
    assert home.apply().returncode == 0


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
    assert home.docker_calls()[-1] == "compose up -d postfix-mailcow dovecot-mailcow"


def test_relay_password_travels_only_on_stdin(home):
    assert home.apply().returncode == 0
    assert home.destroy().returncode == 0
    for script in home.commands_sent:
        assert PASSWORD not in script
    for output in home.outputs:
        assert PASSWORD not in output
    assert PASSWORD not in "\n".join(home.docker_calls())
    assert PASSWORD not in home.sshd.log.read_text()
