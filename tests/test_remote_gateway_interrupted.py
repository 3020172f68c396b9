"""The gateway step interrupted: a disk that runs full at each write, a run killed at each
step and killed again while it rolls back, a run killed outright (no trap runs), a run
whose SSH connection drops (issue 10, item 4; two runs at once: test_remote_gateway.py).
None may leave a partial state that the next run does not finish, and a run with nothing
to do changes nothing.

Every test starts from a gateway that serves a first run (smtp, IPv4 and IPv6) and then
applies a second one (smtp and imaps).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mailgate.layout import GATEWAY_FIREWALL_V4, GATEWAY_FIREWALL_V6, NGINX_STREAM
from tests import test_remote_gateway as gateways
from tests.settings_variants import variant
from tests.test_remote_gateway import apply, files_for, leftovers, listening, start_nginx, stop_nginx

gateway = gateways.gateway  # the fixture: a gateway in a namespace, reached as root and with sudo

PAGE = os.sysconf("SC_PAGE_SIZE")
NEW_RULE = "-A MAILGATE-IN -p tcp -m multiport --dports 25,993,80 -j ACCEPT"
OLD_RULE = "-A MAILGATE-IN -p tcp -m multiport --dports 25,80 -j ACCEPT"

# A host program as the step calls it, except that "$0.kill" holding "before N" or
# "after N" stops the run at the program's N-th call, before or after the real one ran.
# How, the line's third word: TERM (the default) to the run's process group, as Ctrl-C or
# a timeout sends; KILL to it, as the OOM killer or a power loss stops it (no trap runs);
# `drop`: the SSH session's sshd dies, as when the connection drops, and the run goes on
# with nobody reading its output.
KILLABLE = """#!/bin/sh
calls=$(( $(cat "$0.calls" 2>/dev/null || echo 0) + 1 ))
echo "$calls" > "$0.calls"
stop() {{
  [ -f "$0.kill" ] || return 0
  read -r when call how < "$0.kill"
  [ "$when $call" = "$1 $calls" ] || return 0
  rm -f "$0.kill"
  if [ "$how" != drop ]; then kill -"${{how:-TERM}}" 0; return; fi
  session=$$ depth=0
  while [ "$depth" -lt 20 ] && [ "$session" -gt 1 ] && [ "$(ps -o comm= -p "$session")" != sshd ]; do
    session=$(ps -o ppid= -p "$session" | tr -d " ") depth=$((depth + 1))
  done
  if [ "$session" -gt 1 ]; then kill -KILL "$session"; sleep 0.5; fi
}}
stop before
{real} "$@"
rc=$?
stop after
exit $rc
"""


@pytest.fixture
def host(gateway, dev_raw):
    """The gateway as cloud-init leaves it (both MAILGATE-IN chains, nginx running) with
    host programs that can kill the run, after a first run: smtp, IPv4 and IPv6."""
    gateway["dev_raw"] = dev_raw
    gateway["netns"].run(["ip6tables", "-N", "MAILGATE-IN"]).check_returncode()
    start_nginx(gateway)
    bin_dir = gateway["tmp"] / "bin"
    bin_dir.mkdir()
    commands = gateway["commands"]
    in_ns = f"ip netns exec {gateway['netns'].name} "
    # netfilter-persistent save, reduced to what a reboot would load into the chains.
    save = bin_dir / "save-firewall"
    save.write_text(f"#!/bin/sh\n{{ {in_ns}iptables-save; {in_ns}ip6tables-save; }} "
                    f"| grep MAILGATE-IN > {gateway['tmp']}/saved-firewall\n")
    save.chmod(0o755)
    programs = {
        "iptables-restore": f"{commands.iptables}-restore", "iptables-save": f"{commands.iptables}-save",
        "ip6tables-restore": f"{commands.ip6tables}-restore", "ip6tables-save": f"{commands.ip6tables}-save",
        "nginx-check": commands.nginx_check, "nginx-reload": commands.nginx_reload,
        "ss": commands.listening_tcp, "persist": str(save),
    }
    for name, real in programs.items():
        (bin_dir / name).write_text(KILLABLE.format(real=real))
        (bin_dir / name).chmod(0o755)
    gateway["commands"] = replace(
        commands, iptables=str(bin_dir / "iptables"), ip6tables=str(bin_dir / "ip6tables"),
        nginx_check=str(bin_dir / "nginx-check"), nginx_reload=str(bin_dir / "nginx-reload"),
        listening_tcp=str(bin_dir / "ss"), persist_firewall=str(bin_dir / "persist"))
    gateway["bin"] = bin_dir
    first = apply(gateway, files_for(variant(gateway["dev_raw"], services=["smtp"], gateway__ipv6=True),
                                     gateway["runtime"]))
    assert first.returncode == 0, first.stderr
    assert serving_only(gateway, [25], [993])
    first_state = state(gateway)
    assert first_state["chains"].count(OLD_RULE) == 2 and first_state["saved"].count(OLD_RULE) == 2
    return gateway


def second_run(host, pages: int = 1):
    """smtp and imaps; with `pages`, each file padded with comment lines to span that many."""
    files = files_for(variant(host["dev_raw"], services=["smtp", "imaps"], gateway__ipv6=True), host["runtime"])
    padding = ("#" * 79 + "\n") * ((pages - 1) * PAGE // 80 + 1) if pages > 1 else ""
    return [replace(f, text=f.text + padding) for f in files]


def state(host) -> dict:
    """What a user would look at: the files, both chains, what a reboot would load."""
    files = {str(p.relative_to(host["root"])): (p.read_bytes(), p.stat().st_mode)
             for p in sorted(host["root"].rglob("*")) if p.is_file() and p.name not in ("filler", "gateway.lock")}
    netns = host["netns"]
    chains = [line for tool in ("iptables-save", "ip6tables-save")
              for line in netns.run([tool]).stdout.splitlines() if "MAILGATE-IN" in line]
    saved = host["tmp"] / "saved-firewall"
    return {"files": files, "chains": chains, "saved": saved.read_text() if saved.exists() else None}


def serving_only(host, ports: list[int], not_ports: list[int]) -> bool:
    """nginx listens on `ports` and not on `not_ports`, within 5 s (a reload is asynchronous)."""
    for _ in range(50):
        if all(listening(host, p) for p in ports) and not any(listening(host, p) for p in not_ports):
            return True
        time.sleep(0.1)
    return False


def kill_at(host, *points: tuple) -> None:
    """Arm KILLABLE programs: (program, "before" or "after", which call[, how]), counted
    from now; with no points, only start counting the calls anew."""
    for calls in host["bin"].glob("*.calls"):
        calls.unlink()
    for program, when, call, *how in points:
        Path(f"{host['bin'] / program}.kill").write_text(" ".join([when, str(call), *how]) + "\n")


def calls(host, program: str) -> int:
    """How often the run(s) since the last kill_at called `program`."""
    counted = host["bin"] / f"{program}.calls"
    return int(counted.read_text()) if counted.exists() else 0


def assert_second_run_done(host, result) -> None:
    assert result.returncode == 0, result.stderr
    assert "gateway updated:" in result.stdout and "nginx listens on 25 80 993" in result.stdout
    assert serving_only(host, [25, 993], [])
    now = state(host)
    assert now["chains"].count(NEW_RULE) == 2, now["chains"]
    assert now["saved"].count(NEW_RULE) == 2, now["saved"]
    assert not leftovers(host)


# The second run's writes on /etc, in order, and the room on the disk with which each is
# the first to fail. Every file of the second run spans two pages, its first-run version
# one: nginx's check config takes a page until the run ends, and each file two more
# before its old version frees one.
FULL_AT = {
    "the check config": (0, "/etc/nginx/.mailgate-check."),
    "the stream file": (2, NGINX_STREAM),
    "the IPv4 rules": (3, GATEWAY_FIREWALL_V4),
    "the IPv6 rules": (4, GATEWAY_FIREWALL_V6),
}


@pytest.mark.parametrize("gateway", ["root"], indirect=True)  # the login plays no part in a write
@pytest.mark.parametrize("write", list(FULL_AT))
def test_a_disk_full_at_each_write_stops_the_run_with_nothing_changed(host, write):
    room, named = FULL_AT[write]
    etc = host["root"] / "etc"
    copy = host["tmp"] / "etc-copy"
    subprocess.run(["cp", "-a", str(etc), str(copy)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "mg10gw-full", str(etc)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{copy}/.", str(etc)], check=True)
        filler = etc / "filler"
        with filler.open("wb", buffering=0) as out:
            for _ in range(64 * 1024 // PAGE + 1):
                try:
                    out.write(b"\0" * PAGE)
                except OSError:
                    break
        os.truncate(filler, filler.stat().st_size - room * PAGE)
        # nginx lives in the mount namespace `ip netns exec` gave it when it started.
        stop_nginx(host)
        start_nginx(host)
        assert os.statvfs(etc).f_bavail * os.statvfs(etc).f_frsize == room * PAGE
        before = state(host)

        full = apply(host, second_run(host, pages=2))
        assert full.returncode == 1, full.stdout
        failed = [line for line in full.stderr.splitlines() if "disk full?" in line]
        assert failed and f"{host['root']}{named}" in failed[0], full.stderr
        assert state(host) == before
        assert serving_only(host, [25], [993])
        assert not leftovers(host)

        # With room again, the same run goes through.
        filler.unlink()
        assert_second_run_done(host, apply(host, second_run(host, pages=2)))
    finally:
        subprocess.run(["umount", str(etc)], check=True)


# Where the run is killed: (program, before or after its call, which call).
KILL_AT = {
    "during the staged nginx -t": ("nginx-check", "after", 1),
    "with the files installed": ("iptables-restore", "before", 2),
    "with the IPv4 chain loaded": ("ip6tables-restore", "before", 2),
    "once nginx reloaded": ("nginx-reload", "after", 1),
    "while waiting for the listeners": ("ss", "after", 1),
    "once the firewall is saved": ("persist", "after", 1),
}


@pytest.mark.parametrize("step", list(KILL_AT))
def test_a_run_killed_at_each_step_is_rolled_back_and_the_next_one_finishes(host, step):
    before = state(host)
    kill_at(host, KILL_AT[step])
    killed = apply(host, second_run(host))
    assert killed.returncode == 143, (killed.returncode, killed.stderr)
    assert "gateway updated" not in killed.stdout
    if step != "during the staged nginx -t":
        assert "rolling back this run's changes" in killed.stderr
    assert not Path(f"{host['bin'] / KILL_AT[step][0]}.kill").exists(), "the run never got there"
    # What the user finds: the run put everything back, and nginx serves the first run.
    assert state(host) == before
    assert serving_only(host, [25], [993])
    assert not leftovers(host)

    assert_second_run_done(host, apply(host, second_run(host)))


def test_a_second_signal_does_not_cut_the_rollback_short(host):
    """As sudo passes on the SIGTERM the run's group already got, or a second Ctrl-C."""
    before = state(host)
    # Killed once the firewall is saved, then again as the rollback reloads the IPv4 chain.
    kill_at(host, ("persist", "after", 1), ("iptables-restore", "before", 3))
    killed = apply(host, second_run(host))
    assert killed.returncode == 143, (killed.returncode, killed.stderr)
    assert not list(host["bin"].glob("*.kill")), "the run never got there"
    assert state(host) == before
    assert serving_only(host, [25], [993])
    assert not leftovers(host)

    assert_second_run_done(host, apply(host, second_run(host)))


# Where a run is killed outright, with nothing of it left to run a trap.
KILLED_OUTRIGHT_AT = {
    "with the files installed": ("iptables-restore", "before", 2),
    "with the IPv4 chain loaded": ("ip6tables-restore", "before", 2),
    "once nginx reloaded": ("nginx-reload", "after", 1),
}


@pytest.mark.parametrize("step", list(KILLED_OUTRIGHT_AT))
def test_a_run_killed_outright_is_finished_by_the_next_one(host, step):
    kill_at(host, (*KILLED_OUTRIGHT_AT[step], "KILL"))
    killed = apply(host, second_run(host))
    assert killed.returncode != 0 and "gateway updated" not in killed.stdout, killed.stdout
    assert not list(host["bin"].glob("*.kill")), "the run never got there"
    # The new files are in place, but a reboot would open port 25 only.
    assert state(host)["saved"].count(OLD_RULE) == 2

    kill_at(host)
    finished = apply(host, second_run(host))
    assert finished.returncode == 0, finished.stderr
    assert "stopped before it finished" in finished.stderr
    assert "nginx listens on 25 80 993" in finished.stdout
    assert calls(host, "nginx-reload") == 1, "nginx may still serve the killed run's previous file"
    assert serving_only(host, [25, 993], [])
    done = state(host)
    assert done["chains"].count(NEW_RULE) == 2, done["chains"]
    assert done["saved"].count(NEW_RULE) == 2, done["saved"]
    assert not leftovers(host)

    # Finished for good: the run after it has nothing left to do.
    assert_nothing_to_do(host, second_run(host), done)


def assert_nothing_to_do(host, files, now: dict) -> None:
    """A run with `files` finds them in place and everything live: it changes nothing,
    reloads nothing and saves nothing."""
    kill_at(host)
    again = apply(host, files)
    assert again.returncode == 0, again.stderr
    assert "already up to date" in again.stdout and not again.stderr, again.stderr
    for program in ("nginx-check", "nginx-reload", "iptables-restore", "ip6tables-restore", "persist"):
        assert calls(host, program) == 0, f"a run with nothing to do called {program}"
    assert state(host) == now


def test_a_run_with_nothing_to_do_changes_nothing(host):
    first = files_for(variant(host["dev_raw"], services=["smtp"], gateway__ipv6=True), host["runtime"])
    assert_nothing_to_do(host, first, state(host))


def test_a_rollback_killed_outright_is_finished_by_the_next_run(host):
    """Killed as the firewall is saved, then outright as the rollback reloads the IPv4
    chain: the files are the first run's again, the chains and the saved firewall the
    second's. The next run, with the first run's files, finds no file to change."""
    first = files_for(variant(host["dev_raw"], services=["smtp"], gateway__ipv6=True), host["runtime"])
    before = state(host)
    kill_at(host, ("persist", "after", 1), ("iptables-restore", "before", 3, "KILL"))
    killed = apply(host, second_run(host))
    assert killed.returncode != 0, killed.stdout
    assert not list(host["bin"].glob("*.kill")), "the run never got there"

    finished = apply(host, first)
    assert finished.returncode == 0, finished.stderr
    assert "stopped before it finished" in finished.stderr
    assert serving_only(host, [25], [993])
    assert state(host) == before
    assert not leftovers(host)


def test_a_run_that_fails_after_its_connection_dropped_still_rolls_back(host):
    """The SSH connection drops (nobody reads the run's output any more), then nginx cannot
    serve: the failure's message cannot be written, and the run still puts everything back."""
    before = state(host)
    lock = host["root"] / "run/mailgate/gateway.lock"
    kill_at(host, ("iptables-restore", "before", 2, "drop"))
    with gateways.squatting(host, 993):
        dropped = apply(host, second_run(host))
        assert dropped.returncode == 255, (dropped.returncode, dropped.stderr)
        assert not list(host["bin"].glob("*.kill")), "the run never got there"
        # The run goes on without its connection; it is over once it lets go of the lock.
        subprocess.run(["flock", "-w", "30", str(lock), "true"], check=True)
    assert state(host) == before
    assert serving_only(host, [25], [993])
    assert not leftovers(host)

    assert_second_run_done(host, apply(host, second_run(host)))
