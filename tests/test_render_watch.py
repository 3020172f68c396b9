"""The watcher's systemd units and config, checked by the programs that read them:
`systemd-analyze verify` for the units, the watcher itself for its config."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from mailgate.deployment import Deployment
from mailgate.layout import GATEWAY, HOME, watch_files
from mailgate.renderers.bans import render_banlist_service, render_banlist_timer
from mailgate.renderers.watch import (
    GATEWAY_END,
    HOME_END,
    WATCH_PROGRAM,
    render_watch_config,
    render_watch_service,
    render_watch_timer,
)
from tests.conftest import need_program
from tests.settings_variants import variant


def verify(tmp_path, settings, end: str, timer: str | None = None) -> str:
    """What systemd-analyze says about the units (nothing when they are right)."""
    unit = settings.names.watch_unit
    (tmp_path / f"{unit}.service").write_text(render_watch_service(settings, end))
    (tmp_path / f"{unit}.timer").write_text(timer or render_watch_timer(settings))
    result = subprocess.run([need_program("systemd-analyze"), "verify", f"{unit}.service", f"{unit}.timer"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else f" (exit {result.returncode})")


@pytest.mark.parametrize("end", [GATEWAY_END, HOME_END])
def test_the_units_are_what_systemd_reads_without_a_word(tmp_path, dev_settings, end):
    assert verify(tmp_path, dev_settings, end) == ""


def test_a_misspelt_unit_key_is_caught(tmp_path, dev_settings):
    timer = render_watch_timer(dev_settings).replace("OnUnitActiveSec", "OnUnitActivSec")
    assert "Unknown key 'OnUnitActivSec'" in verify(tmp_path, dev_settings, HOME_END, timer)


@pytest.mark.parametrize("host", [GATEWAY, HOME])
def test_the_service_runs_the_installed_program_with_the_installed_config(dev_settings, host):
    names = dev_settings.names
    files = {f.path: f for f in watch_files(dev_settings, host, "{}")}
    service = files[names.watch_unit_path("service")].text
    assert f"ExecStart=/usr/bin/python3 {names.watch_script}\n" in service
    assert f"LoadCredential=watch.json:{names.watch_config}\n" in service
    assert "DynamicUser=yes" in service
    assert files[names.watch_script].text == WATCH_PROGRAM.read_text() and files[names.watch_script].mode == 0o755
    assert files[names.watch_config].mode == 0o600 and files[names.watch_config].secret


def test_each_end_checks_the_other_and_alerts_after_the_configured_time(dev_raw):
    settings = variant(dev_raw, alerts={"to": "owner@example.net", "afterMinutes": 30})
    deployment = Deployment(public_ipv4="203.0.113.25")
    gateway = json.loads(render_watch_config(settings, GATEWAY_END, deployment, "gateway-key"))
    home = json.loads(render_watch_config(settings, HOME_END, deployment, "relay-key", "https://hooks.example.net/x"))
    assert gateway["after_seconds"] == home["after_seconds"] == 1800
    assert [(t["port"], t["proxy"], t["tls"]) for t in gateway["targets"]] == [
        (10025, True, False), (10465, True, True), (10587, True, False),
        (10143, True, False), (10993, True, True), (14190, True, False)]
    assert {t["host"] for t in gateway["targets"]} == {settings.home.tailnet_ip}
    assert [(t["host"], t["port"], t["proxy"], t["tls"]) for t in home["targets"]] == [
        ("203.0.113.25", 465, False, True), ("203.0.113.25", 587, False, False),
        ("203.0.113.25", 143, False, False), ("203.0.113.25", 993, False, True),
        ("203.0.113.25", 4190, False, False)]
    mail = home["channels"][0]
    assert (mail["host"], mail["port"], mail["tls"], mail["password"]) == (
        settings.relay.host, 587, "starttls", "relay-key")
    assert (mail["from"], mail["to"]) == ("mailgate@example.com", "owner@example.net")
    assert home["channels"][1] == {"kind": "webhook", "url": "https://hooks.example.net/x"}
    assert [c["kind"] for c in gateway["channels"]] == ["smtp"]
    implicit = json.loads(render_watch_config(variant(dev_raw, alerts={"to": "o@example.net"}, relay__port=465),
                                              HOME_END, deployment, "k"))
    assert implicit["channels"][0]["tls"] == "implicit"


def test_the_program_reads_the_rendered_config(dev_raw, monkeypatch):
    """Every key the watcher reads is in what the renderer writes (no network: the targets
    are put on a closed loopback port and the sending is recorded)."""
    spec = importlib.util.spec_from_file_location("watch", WATCH_PROGRAM)
    watch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(watch)
    sent = []
    monkeypatch.setattr(watch, "notify", lambda config, status, subject, body, ca: sent.append(body) or True)
    settings = variant(dev_raw, alerts={"to": "owner@example.net"})
    for end in (GATEWAY_END, HOME_END):
        config = json.loads(render_watch_config(settings, end, Deployment(public_ipv4="127.0.0.1"), "k",
                                                after_seconds=0))
        config["targets"] = [{**target, "host": "127.0.0.1", "port": 9} for target in config["targets"]]
        config["timeout_seconds"] = 1
        assert watch.run_once(config, {}, 1000.0)["alerted"] is True
    assert "Check the Mini PC" in sent[0] and "Oracle stops idle Always Free VMs" in sent[1]
    off = json.loads(render_watch_config(variant(dev_raw), HOME_END, Deployment(), "k"))
    assert off == {"enabled": False, "stack": "dev", "end": HOME_END}


def test_the_ban_loader_units_are_what_systemd_reads_without_a_word(tmp_path, dev_settings):
    unit = dev_settings.names.bans_unit
    (tmp_path / f"{unit}.service").write_text(render_banlist_service(dev_settings))
    (tmp_path / f"{unit}.timer").write_text(render_banlist_timer(dev_settings))
    result = subprocess.run([need_program("systemd-analyze"), "verify", f"{unit}.service", f"{unit}.timer"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    service = render_banlist_service(dev_settings)
    assert f"ExecStart=/usr/bin/python3 {dev_settings.names.bans_script}\n" in service
    assert f"LoadCredential=bans.json:{dev_settings.names.bans_config}\n" in service
    assert "AmbientCapabilities=CAP_NET_ADMIN" in service
    assert "OnUnitActiveSec=30s" in render_banlist_timer(dev_settings)
