"""`lab up`, `down` and `status`: build and remove the whole lab."""

from __future__ import annotations

import shutil

from mailgate.lab import HOME_TAILNET, NAMESPACES, STATE
from mailgate.lab import bans, daemons, tailnet, topology
from mailgate.lab.system import LabError, alive, recorded_pids, stop
from mailgate.settings import Settings


def lab_settings(settings: Settings) -> Settings:
    """The stack's settings with the lab's home tailnet address, bans on (the lab's own
    ban-list id stands in for the secret mailgate:banlistId) and IPv6 on at the gateway:
    the only changes."""
    home = settings.home.model_copy(update={"tailnet_ip": HOME_TAILNET})
    bans_on = settings.bans.model_copy(update={"enabled": True})
    gateway = settings.gateway.model_copy(update={"ipv6": True})
    return settings.model_copy(update={"home": home, "bans": bans_on, "gateway": gateway})


def up(settings: Settings, home_firewall: bool = True, nginx_edit=None, tailnet_policy: bool = True,
       imap_timeout: int | None = None) -> None:
    """`home_firewall=False`, `tailnet_policy=False` and `nginx_edit` (text -> text) break
    the lab on purpose: the tests use them to show that each check fails when its promise
    is broken. `imap_timeout` renders nginx with a shorter IMAP idle timeout, so a check
    can watch it cut a session within seconds instead of 31 minutes."""
    daemons.require_programs()
    down()
    settings = lab_settings(settings)
    try:
        STATE.mkdir(parents=True)
        daemons.make_tls()
        topology.create_namespaces()
        topology.create_tunnel()
        daemons.start_relay(settings)
        tailnet.start_tailscaled()
        daemons.start_home(settings, home_firewall=home_firewall)
        bans.start(settings)
        if tailnet_policy:
            tailnet.apply(settings)  # before Docker's DNAT, as Tailscale filters before the host does
        daemons.start_gateway(settings, nginx_edit, imap_timeout)
        daemons.start_sender()
    except Exception as error:  # whatever broke, leave nothing behind
        down()
        raise LabError(f"lab up failed, everything it made is removed again: {error}") from error


def down() -> None:
    """Remove every process, mount, namespace and file the lab made (also after a failed up)."""
    daemons.stop_postfix()
    for pid in recorded_pids().values():
        stop(pid)
    topology.delete_namespaces()
    shutil.rmtree(STATE, ignore_errors=True)


def status() -> list[str]:
    lines = [f"namespace {name}: {'present' if name in topology.existing_namespaces() else 'absent'}"
             for name in NAMESPACES]
    for name, pid in sorted(recorded_pids().items()):
        lines.append(f"process {name} (pid {pid}): {'running' if alive(pid) else 'gone'}")
    return lines
