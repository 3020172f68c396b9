"""The home step cut off part way (item 4 of issue 10, "no partial state"): SIGTERM at
each step of an apply and of a destroy, a full disk at each write, two runs at once.

A run is stopped as a timeout or a Ctrl-C stops it: the program of a step, told so, does
its work and then sends SIGTERM to the whole run. Stand-ins for those programs take the
real ones' place (HostCommands); `mv`, `rm` and `cp` get theirs through PATH, which stops
a run between two installs, or while it copies. A full disk is a small tmpfs over the
directory a write lands in, with a few pages left free.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

from mailgate.cli import load_stack
from mailgate.deployment import Deployment
from mailgate.layout import Secrets, home_files
from mailgate.renderers.remote_scripts import DOVECOT, POSTFIX, home_bundle, render_home_apply
from mailgate.renderers.sysctl import NONLOCAL_BIND_KEYS
from tests.conftest import DEV_STACK, need_program
from tests.fake_docker import FakeDocker
from tests.settings_variants import variant
from tests.sshd import SUDO_LOGIN, start_sshd
from tests.test_remote_home import BOTH_SERVING, GATEWAY_TAILNET_IP, PASSWORD, Home, mailcow_file, running_home
from tests.validators import Netns

DEV = load_stack(DEV_STACK)
STATE = DEV.names.home_state_dir
MAILCOW = DEV.home.mailcow_dir
HOME_PATHS = [f.path for f in home_files(DEV, Deployment(gateway_tailnet_ip=GATEWAY_TAILNET_IP),
                                         Secrets(relay_password=PASSWORD))]
ROTATED = "xsmtpsib-r0tated-relay-key"
STOPPABLE = ("docker", "systemctl", "iptables", "iptables-restore", "ip6tables", "ip6tables-restore", "sysctl",
             "mv", "rm", "cp")
PAGE = 4096


def home_path(name: str) -> str:
    """The path of the home file whose name ends with `name`."""
    return next(p for p in HOME_PATHS if p.endswith(name))


class Snapshot(NamedTuple):
    tree: dict
    kernel: tuple
    containers: dict
    whitelist: dict


class StoppableHome(Home):
    """A Home whose runs the test can stop right after a given call."""

    def __init__(self, tmp: Path, settings, netns: Netns, user: str = "root"):
        super().__init__(tmp, settings, netns, user)
        # The staged checks inside the containers are test_remote_home's subject; here they
        # pass at once, which keeps a run well under a second.
        self.docker = FakeDocker(self.docker.path)
        self.bin = tmp / "stoppable"
        self.bin.mkdir()
        self.stop_file = self.bin / "stop-after"
        # Each calls the real program by its full path: the stand-ins come first on PATH.
        in_ns = f"ip netns exec {netns.name} "
        real = {"docker": str(self.docker.path), "systemctl": str(self.systemctl),
                **{name: in_ns + need_program(name)
                   for name in ("iptables", "iptables-restore", "ip6tables", "ip6tables-restore", "sysctl")},
                **{name: need_program(name) for name in ("mv", "rm", "cp")}}
        for name in STOPPABLE:
            # cp is stopped while it writes: its copy is cut to half first.
            cut_short = ('for last; do :; done; /usr/bin/truncate -s $(($(/usr/bin/stat -c %s "$last") / 2)) "$last"; '
                         if name == "cp" else "")
            wrapper = self.bin / name
            wrapper.write_text(
                f'#!/bin/sh\n{real[name]} "$@"\nstatus=$?\n'
                f'if [ -f {self.stop_file} ] && [ "$(/usr/bin/head -n 1 {self.stop_file})" = {name} ]; then\n'
                f'  case " $* " in *"$(/usr/bin/tail -n +2 {self.stop_file})"*) '
                f'/usr/bin/rm -f {self.stop_file}; {cut_short}kill -TERM 0 ;; esac\n'
                'fi\nexit $status\n')
            wrapper.chmod(0o755)
        self.commands = dataclasses.replace(self.commands, docker=str(self.bin / "docker"),
                                            systemctl=str(self.bin / "systemctl"),
                                            iptables=str(self.bin / "iptables"), ip6tables=str(self.bin / "ip6tables"),
                                            sysctl=str(self.bin / "sysctl"))
        # mv, rm and cp through PATH, and the scripts' temporary files in a directory of the
        # test: sudo puts its own PATH and no TMPDIR in place of these, so a stop at those
        # programs, and a look at what a run leaves in TMPDIR, work for the root login only.
        self.tmpdir = tmp / "tmpdir"
        self.tmpdir.mkdir()
        self.sshd.stop()
        self.sshd = start_sshd(tmp / "ssh-stoppable", user=user, env={
            "PATH": f"{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TMPDIR": str(self.tmpdir)})

    def stop_after(self, program: str, text: str) -> None:
        """The next call of `program` whose arguments hold `text` (" {root}" is the root of
        the tree) does its work, then sends SIGTERM to the run that made it."""
        assert program in STOPPABLE
        self.stop_file.write_text(f"{program}\n{text.replace('{root}', str(self.root))}")

    def kernel(self) -> tuple:
        """The IPv4 and IPv6 firewall rules and chains, and the non-local bind keys, in the
        namespace."""
        rules = sorted(f"{save}: {line.split(' [')[0]}" for save in ("iptables-save", "ip6tables-save")
                       for line in self.netns.run([save]).stdout.splitlines() if line.startswith((":", "-A ")))
        return rules, self.netns.run(["sysctl", "-e", *NONLOCAL_BIND_KEYS]).stdout

    def snapshot(self) -> Snapshot:
        return Snapshot(self.tree(without_state=False), self.kernel(),
                        {name: self.container(name) for name in (POSTFIX, DOVECOT)}, self.whitelist())

    def leftovers(self) -> list[str]:
        """What a run may leave only while it runs."""
        return sorted(str(p) for p in self.root.rglob("*") if p.name.endswith((".mailgate-new", ".mailgate-old"))
                      or p.name in ("pending", "pending.new", "containers-pending.new"))


def stoppable_home(tmp_path: Path, settings, user: str):
    return running_home(tmp_path, settings, "mg6", user, kind=StoppableHome)


@pytest.fixture(params=["root", SUDO_LOGIN])
def home(request, tmp_path, dev_settings, login):
    """The Mini PC, reached as root and as a user with passwordless sudo."""
    user = request.param if request.param == "root" else login(request.param)
    with stoppable_home(tmp_path, dev_settings, user) as home:
        yield home


@pytest.fixture
def root_home(tmp_path, dev_settings):
    """The Mini PC reached as root only, for the matrices: their stops at mv, rm and cp
    need root's PATH. The sudo login runs one test of each kind (`home`)."""
    with stoppable_home(tmp_path, dev_settings, "root") as home:
        yield home


# The runs under test: the applies before it, and its own inputs.
FIRST, SERVICES, RELAY = "first", "services", "relay"


def runs(run: str, dev_raw: dict) -> tuple[list[dict], dict]:
    if run == FIRST:
        return [], {}
    if run == SERVICES:  # the override and mailcow.conf: `up -d` of both containers
        return [{}], {"settings": variant(dev_raw, services=[s for s in dev_raw["services"] if s != "imap"])}
    # The relay map, extra.conf and the firewall: a restart of both, the chain reloaded.
    return [{}], {"password": ROTATED, "gateway_tailnet_ip": "100.64.0.9"}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, dev_settings, dev_raw) -> dict[str, Snapshot]:
    """The home as each run leaves it when nothing stops it, and as it was before mailgate."""
    found = {}
    for run in (FIRST, SERVICES, RELAY):
        with stoppable_home(tmp_path_factory.mktemp(run), dev_settings, "root") as home:
            found["original"] = home.snapshot()
            before, inputs = runs(run, dev_raw)
            for earlier in [*before, inputs]:
                result = home.apply(**earlier)
                assert result.returncode == 0, result.stderr
            found[run] = home.snapshot()
    return found


def check_as_a_clean_run_leaves_it(home: StoppableHome, clean: dict[str, Snapshot], run: str) -> None:
    now = home.snapshot()
    assert now.tree == clean[run].tree
    assert now.kernel == clean[run].kernel  # the chain hooked once, the keys set
    assert now.whitelist == clean[run].whitelist  # the gateway in Mailcow's fail2ban whitelist
    assert home.serving() == BOTH_SERVING
    assert home.leftovers() == []


def check_destroy_gives_back_the_original(home: StoppableHome, clean: dict[str, Snapshot]) -> None:
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert home.tree(without_state=False) == clean["original"].tree
    assert home.kernel() == clean["original"].kernel
    assert home.whitelist() == clean["original"].whitelist
    assert home.serving() == BOTH_SERVING


# Every external step of an apply after its pending marker: each install (the files, then
# a record of each kind under the state directory), the firewall, the sysctl keys,
# daemon-reload, each kind of container activation, each change of Mailcow's fail2ban
# whitelist.
APPLY_STOPS = [
    *[pytest.param(FIRST, "mv", f" {{root}}{path} ", id=f"installed {path.rsplit('/', 1)[1]}")
      for path in HOME_PATHS],
    *[pytest.param(FIRST, "mv", f" {{root}}{STATE}/{kind}{home_path(name)} ", id=f"recorded {kind}{name}")
      for kind, name in (("blocks", "/mailcow.conf"), ("applied", "/mailgate_relay_passwd"),
                         ("created", "/extra.conf"))],
    pytest.param(FIRST, "iptables-restore", " --noflush ", id="firewall loaded"),
    pytest.param(FIRST, "iptables", " -t raw -I PREROUTING ", id="chain hooked"),
    pytest.param(FIRST, "ip6tables-restore", " --noflush ", id="IPv6 firewall loaded"),
    pytest.param(FIRST, "ip6tables", " -t raw -I PREROUTING ", id="IPv6 chain hooked"),
    pytest.param(FIRST, "mv", f" {{root}}{STATE}/backup/sysctl.conf ", id="recorded backup/sysctl.conf"),
    pytest.param(FIRST, "sysctl", " -p ", id="sysctl keys set"),
    pytest.param(FIRST, "systemctl", " daemon-reload ", id="daemon-reload"),
    pytest.param(FIRST, "docker", " up -d --force-recreate ", id="containers force-recreated"),
    pytest.param(FIRST, "docker", " HSET F2B_QUEUE_UNBAN ", id="gateway whitelisted"),
    pytest.param(SERVICES, "cp", f" -a -- {{root}}{home_path('/mailcow.conf')} ",
                 id="update keeping a copy of mailcow.conf"),
    pytest.param(SERVICES, "mv", f" {{root}}{home_path('/mailcow.conf')} ", id="update installed mailcow.conf"),
    pytest.param(SERVICES, "mv", f" {{root}}{STATE}/blocks{home_path('/mailcow.conf')} ",
                 id="update recorded blocks/mailcow.conf"),
    pytest.param(SERVICES, "docker", f" up -d acme-mailcow {DOVECOT} ", id="update containers recreated"),
    pytest.param(RELAY, "iptables-restore", " --noflush ", id="update firewall reloaded"),
    pytest.param(RELAY, "ip6tables-restore", " --noflush ", id="update IPv6 firewall reloaded"),
    pytest.param(RELAY, "docker", " restart ", id="update containers restarted"),
    pytest.param(RELAY, "docker", " HSET F2B_WHITELIST ", id="update new gateway whitelisted"),
    pytest.param(RELAY, "docker", " HDEL F2B_WHITELIST ", id="update earlier gateway taken out"),
]


@pytest.mark.parametrize("run, program, text", APPLY_STOPS)
def test_a_run_stopped_at_each_step_is_undone_by_the_next(root_home, clean, dev_raw, run, program, text):
    home = root_home
    before, inputs = runs(run, dev_raw)
    for earlier in before:
        assert home.apply(**earlier).returncode == 0
    home.stop_after(program, text)
    stopped = home.apply(**inputs)
    assert not home.stop_file.exists(), f"the run never called {program} with {text}"
    assert stopped.returncode != 0 and "home updated" not in stopped.stdout
    assert list(home.tmpdir.iterdir()) == []  # no copy of the files, the relay password among them
    result = home.apply(**inputs)
    assert result.returncode == 0, result.stderr
    assert "the previous run stopped before it finished; putting back what it changed first" in result.stderr
    assert "home updated" in result.stdout
    check_as_a_clean_run_leaves_it(home, clean, run)
    check_destroy_gives_back_the_original(home, clean)


@pytest.mark.parametrize("run, program, text", [stop for stop in APPLY_STOPS if stop.values[0] != FIRST])
def test_an_update_stopped_at_each_step_is_undone_exactly(root_home, clean, dev_raw, run, program, text):
    """A next run of the previous config finds nothing left to do: the undo alone put back
    the files, the chain and what the containers serve (a run of the same config would
    redo the update over a missing undo)."""
    home = root_home
    assert home.apply().returncode == 0
    home.stop_after(program, text)
    assert home.apply(**runs(run, dev_raw)[1]).returncode != 0
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert "putting back what it changed first" in result.stderr and "home already up to date" in result.stdout
    check_as_a_clean_run_leaves_it(home, clean, FIRST)


# Every step of a destroy: the state it keeps, a file given back, a file of mailgate's
# deleted, the sysctl keys, the chain unhooked, daemon-reload, the containers, the
# gateway's whitelist entry.
DESTROY_STOPS = [
    pytest.param("mv", f" {{root}}{STATE}/containers-pending ", id="plan kept"),
    pytest.param("mv", f" {{root}}{home_path('/mailcow.conf')} ", id="mailcow.conf given back"),
    pytest.param("rm", f" {{root}}{home_path('/mailgate_relay_passwd')} ", id="relay map deleted"),
    pytest.param("sysctl", " -p - ", id="sysctl keys put back"),
    pytest.param("iptables", " -t raw -D PREROUTING ", id="chain unhooked"),
    pytest.param("ip6tables", " -t raw -D PREROUTING ", id="IPv6 chain unhooked"),
    pytest.param("systemctl", " daemon-reload ", id="daemon-reload"),
    pytest.param("docker", " up -d --force-recreate ", id="containers force-recreated"),
    pytest.param("docker", " HDEL F2B_WHITELIST ", id="gateway taken out of the whitelist"),
]


@pytest.mark.parametrize("program, text", DESTROY_STOPS)
def test_a_destroy_stopped_at_each_step_is_finished_by_the_next(root_home, clean, program, text):
    home = root_home
    assert home.apply().returncode == 0
    home.stop_after(program, text)
    stopped = home.destroy()
    assert not home.stop_file.exists(), f"destroy never called {program} with {text}"
    assert stopped.returncode != 0 and "home restored" not in stopped.stdout
    assert list(home.tmpdir.iterdir()) == []
    check_destroy_gives_back_the_original(home, clean)


def test_a_first_run_stopped_part_way_is_undone_by_destroy_too(home, clean):
    """The files, the firewall and the keys in place, the containers not yet."""
    home.stop_after("systemctl", " daemon-reload ")
    assert home.apply().returncode != 0
    check_destroy_gives_back_the_original(home, clean)
    assert home.leftovers() == []


# Moved from test_remote_home.py: one stop of each kind for both logins, two runs at once,
# and a run that waits too long for the lock.
def test_a_run_killed_before_the_containers_is_undone_by_the_next(home):
    """SIGTERM after every file, the firewall and the sysctl keys are in place."""
    original = home.tree()
    home.systemctl_kills()
    killed = home.apply()
    assert killed.returncode != 0 and "home updated" not in killed.stdout
    assert home.tree() != original and home.chain_hooked()
    home.systemctl_kills(False)
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert "the previous run stopped before it finished; putting back what it changed first" in result.stderr
    assert "home updated" in result.stdout
    assert home.serving() == BOTH_SERVING and home.chain_hooked()
    assert home.destroy().returncode == 0
    assert home.tree(without_state=False) == original


def test_a_run_killed_after_a_container_restarted_is_undone_by_the_next(home):
    assert home.apply().returncode == 0
    before = home.tree()
    home.docker.kill_on(f"restart {POSTFIX}")
    killed = home.apply(password=ROTATED)
    assert killed.returncode != 0
    # Postfix runs with the new map, which the next run's rollback takes away again...
    assert home.tree() != before
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert "putting back what it changed first" in result.stderr
    assert "home already up to date" in result.stdout
    assert home.tree() == before
    # ...and Postfix is restarted onto the previous one.
    assert home.serving() == BOTH_SERVING


def test_two_runs_at_once_take_turns(home):
    results = []
    runs = [threading.Thread(target=lambda: results.append(home.apply())) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    outputs = sorted(r.stdout.strip().splitlines()[-1] for r in results)
    assert outputs[0] == "mailgate: home already up to date" and outputs[1].startswith("mailgate: home updated")
    for name in (POSTFIX, DOVECOT):
        assert home.container(name).recreations == 1
    assert home.serving() == BOTH_SERVING


def test_a_run_that_cannot_get_the_lock_stops_with_nothing_changed(home):
    before = home.tree(without_state=False)
    deployment = Deployment(gateway_tailnet_ip=GATEWAY_TAILNET_IP)
    files = home_files(home.settings, deployment, Secrets(relay_password=PASSWORD))
    impatient = dataclasses.replace(home.commands, lock_wait_seconds=1)
    held = os.open(home.mailcow, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # another run holds it
        result = home.run(render_home_apply(home.settings, files, impatient),
                          home_bundle(home.settings, files, deployment))
    finally:
        os.close(held)
    assert result.returncode == 1
    assert f"another mailgate run has held the lock on {home.mailcow} for 1 s; nothing was changed" in result.stderr
    assert home.tree(without_state=False) == before


# A full disk.
@contextmanager
def full_disk(directory: Path, free_pages: int, scratch: Path):
    """A small tmpfs over `directory`, holding what it held, with `free_pages` pages left
    free. Afterwards the directory holds what the tmpfs held (the disk got room again)."""
    directory.mkdir(parents=True, exist_ok=True)
    held = scratch / "held"
    shutil.rmtree(held, ignore_errors=True)
    subprocess.run(["cp", "-a", str(directory), str(held)], check=True)
    mode = f"mode={directory.stat().st_mode & 0o7777:o}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=2m,{mode}", "mg6-full", str(directory)], check=True)
    filler = directory / "filler-of-the-test"
    try:
        subprocess.run(["cp", "-a", f"{held}/.", str(directory)], check=True)
        with filler.open("wb", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * PAGE)
            except OSError:
                pass
        assert filler.stat().st_size >= free_pages * PAGE
        os.truncate(filler, filler.stat().st_size - free_pages * PAGE)
        yield
    finally:
        filler.unlink(missing_ok=True)
        shutil.rmtree(held)
        copied = subprocess.run(["cp", "-a", str(directory), str(held)])
        subprocess.run(["umount", str(directory)], check=True)
    assert copied.returncode == 0
    for path in directory.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    subprocess.run(["cp", "-a", f"{held}/.", str(directory)], check=True)


def run_until_there_is_room(home: StoppableHome, disk: Path, run, scratch: Path,
                            says: str = "(disk full?)") -> list[str]:
    """`run` with 0, 1, 2... pages free on `disk`, until it goes through. Each run that
    fails must say `says` and leave the home as it found it. Returns what they said."""
    said = []
    for free_pages in range(40):
        with full_disk(disk, free_pages, scratch):
            before = home.snapshot()
            result = run()
            if result.returncode == 0:
                return said
            context = f"{free_pages} pages free: {result.stderr}"
            assert result.returncode == 1, context
            assert says in result.stderr, context
            assert home.snapshot() == before, context  # the containers and the firewall too
            assert home.leftovers() == [], context
            said.append(result.stderr)
    pytest.fail(f"no run went through on {disk}")


def written(path: str) -> str:
    return f"cannot write {path} (disk full?)"


def kept(path: str) -> str:
    return f"cannot keep a copy of {path} "


def noted(path: str) -> str:
    """A file under the state directory that the message names with the root in front."""
    return f"{path} (disk full?)"


# Where each write of a first apply, of an update and of a destroy lands, and what the
# failures there must name between them (as the free room grows, each write in turn is
# the one that does not fit). Mailgate's state directory takes the pending marker, the
# copies an undo needs, and the records.
STATE_DISK, TMPDIR = "/var/lib/mailgate", "TMPDIR"
POSTFIX_DIR, DOVECOT_DIR = f"{MAILCOW}/data/conf/postfix", f"{MAILCOW}/data/conf/dovecot"
OVERRIDE, CONF, EXTRA_CONF, EXTRA_CF, RELAY_MAP, FIREWALL = (home_path(name) for name in (
    "/docker-compose.override.yml", "/mailcow.conf", "/extra.conf", "/extra.cf", "/mailgate_relay_passwd",
    "/home-firewall.rules"))
FULL_DISKS = [
    pytest.param(FIRST, DOVECOT_DIR, [written(EXTRA_CONF)], id="first-dovecot"),
    pytest.param(FIRST, POSTFIX_DIR, [written(EXTRA_CF)], id="first-postfix"),
    *[pytest.param(FIRST, path.rsplit("/", 1)[0], [written(path)], id=f"first-{path.rsplit('/', 1)[1]}")
      for path in HOME_PATHS if path.startswith("/etc/")],
    pytest.param(FIRST, STATE_DISK, [noted(f"{STATE}/pending"), kept(OVERRIDE), written(f"{STATE}/blocks{CONF}"),
                                     written(f"{STATE}/applied{RELAY_MAP}"), written(f"{STATE}/backup/sysctl.conf"),
                                     noted(f"{STATE}/pending/sysctl-previous")], id="first-state"),
    pytest.param(RELAY, POSTFIX_DIR, [written(RELAY_MAP)], id="update-postfix"),
    pytest.param(RELAY, DOVECOT_DIR, [written(EXTRA_CONF)], id="update-dovecot"),
    pytest.param(RELAY, FIREWALL.rsplit("/", 1)[0], [written(FIREWALL)], id="update-firewall"),
    # The gateway's whitelist record goes first: its old copy's room then takes the copy of
    # the next record, whose new copy is the write that does not fit.
    pytest.param(RELAY, STATE_DISK, [noted(f"{STATE}/pending"), kept(RELAY_MAP), kept(f"{STATE}/fail2ban-whitelist"),
                                     written(f"{STATE}/blocks{EXTRA_CONF}"), written(f"{STATE}/applied{FIREWALL}")],
                 id="update-state"),
]


def disk(home: StoppableHome, where: str) -> Path:
    return home.tmpdir if where == TMPDIR else home.root / where.lstrip("/")


def test_a_full_disk_stops_the_run_with_nothing_changed(home, tmp_path):
    """mailcow.conf of 13 KB: with no page free the override does not fit, with one to three
    mailcow.conf does not (and the override already installed goes back); with room, the
    same run goes through. Both logins."""
    with mailcow_file(home, "mailcow.conf").open("a") as conf:
        conf.write("".join(f"# a comment line of Mailcow's own, number {n:05d}\n" for n in range(300)))
    said = run_until_there_is_room(home, home.mailcow, home.apply, tmp_path)
    assert written(OVERRIDE) in said[0] and len(said) > 1
    assert all(written(CONF) in stderr for stderr in said[1:])
    assert home.serving() == BOTH_SERVING


@pytest.mark.parametrize("run, where, named", FULL_DISKS)
def test_a_full_disk_at_each_write_stops_the_run_with_nothing_changed(root_home, clean, dev_raw, tmp_path,
                                                                      run, where, named):
    home = root_home
    before, inputs = runs(run, dev_raw)
    for earlier in before:
        assert home.apply(**earlier).returncode == 0
    said = run_until_there_is_room(home, disk(home, where), lambda: home.apply(**inputs), tmp_path)
    for message in named:
        assert any(message in stderr for stderr in said), (message, said)
    check_as_a_clean_run_leaves_it(home, clean, run)


@pytest.mark.parametrize("where, named", [
    pytest.param(MAILCOW, [written(OVERRIDE)], id="mailcow"),  # each file without mailgate's block
    pytest.param(STATE_DISK, [noted(f"{STATE}/containers-pending")], id="state"),
    pytest.param(TMPDIR, [kept(RELAY_MAP)], id="tmpdir"),  # the staged files, the copies of those it deletes
])
def test_a_full_disk_stops_destroy_with_nothing_changed(root_home, clean, tmp_path, where, named):
    home = root_home
    assert home.apply().returncode == 0
    # In TMPDIR the first writes are the staged files, which the programs report themselves.
    says = "No space left on device" if where == TMPDIR else "(disk full?)"
    said = run_until_there_is_room(home, disk(home, where), home.destroy, tmp_path, says)
    for message in named:
        assert any(message in stderr for stderr in said), (message, said)
    assert home.tree(without_state=False) == clean["original"].tree
    assert home.serving() == BOTH_SERVING
