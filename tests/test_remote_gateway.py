"""The gateway step's script, run over SSH against a real nginx in a network namespace.

The host looks like Debian's or Ubuntu's once nginx is installed: a packaged nginx.conf
that includes modules-enabled/*.conf (with the stream module's loader) and serves no
stream, the MAILGATE-IN chain, a pid file. nginx is started, reloaded and probed only
through the HostCommands the script is rendered with.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mailgate.deployment import Deployment
from mailgate.layout import (
    GATEWAY, GATEWAY_FIREWALL_V4, GATEWAY_FIREWALL_V6, NGINX_HTTP, NGINX_PACKAGED_CONF, NGINX_STREAM, RenderedFile,
    ban_files,
    watch_files,
)
from mailgate.renderers.bans import render_banlist_config
from mailgate.renderers.firewall import render_gateway_firewall
from mailgate.renderers.nginx import NginxRuntime, render_nginx_conf, render_nginx_http, render_nginx_stream
from mailgate.renderers.remote_scripts import HostCommands, pack, gateway_timers, render_gateway_apply
from mailgate.renderers.watch import GATEWAY_END, render_watch_config
from tests.settings_variants import variant
from tests.sshd import SUDO_LOGIN, start_sshd
from tests.validators import Netns

PUBLIC = "203.0.113.10"
PROBE = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()"
STREAM_LOADER = "/etc/nginx/modules-enabled/50-mod-stream.conf"
# ip6tables-restore that accepts a dry run (--test) and fails the real load.
FAILING_RESTORE = '#!/bin/sh\nfor a; do [ "$a" = --test ] && exit 0; done\necho "ip6tables-restore: line 3 failed" >&2\nexit 1\n'


def packaged_conf(tmp_path: Path, root: Path) -> str:
    """Debian's nginx.conf in miniature: top-level modules-enabled include, an http block."""
    return (f"user root;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
            f"include {root}/etc/nginx/modules-enabled/*.conf;\n\nevents {{\n\tworker_connections 64;\n}}\n\n"
            f"http {{\n\taccess_log off;\n\tinclude {root}/etc/nginx/conf.d/*.conf;\n}}\n")


@pytest.fixture(params=["root", SUDO_LOGIN])
def gateway(request, tmp_path, login):
    """The gateway, reached as root and as `ubuntu`-like user with passwordless sudo."""
    user = request.param if request.param == "root" else login(request.param)
    with Netns("mg5gw") as netns:
        netns.run(["ip", "addr", "add", f"{PUBLIC}/32", "dev", "lo"]).check_returncode()
        netns.run(["ip", "link", "set", "lo", "up"]).check_returncode()
        netns.run(["iptables", "-N", "MAILGATE-IN"]).check_returncode()
        sshd = start_sshd(tmp_path / "ssh", user=user)
        root = tmp_path / "root"
        conf = root / NGINX_PACKAGED_CONF.lstrip("/")
        (conf.parent / "modules-enabled").mkdir(parents=True)
        (conf.parent / "conf.d").mkdir()
        (root / STREAM_LOADER.lstrip("/")).symlink_to(STREAM_LOADER)
        conf.write_text(packaged_conf(tmp_path, root))
        pid = tmp_path / "nginx.pid"
        in_ns = f"ip netns exec {netns.name} "
        commands = HostCommands(
            root=str(root), iptables=in_ns + "iptables", ip6tables=in_ns + "ip6tables",
            nginx_check=f"{in_ns}nginx -t", nginx_reload=f"{in_ns}nginx -s reload -c {conf}",
            nginx_start=f"{in_ns}nginx -c {conf}", nginx_active=f'kill -0 "$(cat {pid} 2>/dev/null)"',
            listening_tcp=f"{in_ns}ss -ltnpH", persist_firewall=f"touch {tmp_path}/persisted", nft=in_ns + "nft",
            lock_wait_seconds=30, listen_wait_seconds=5,
        )
        runtime = NginxRuntime(access_log=str(tmp_path / "access.log"),
                               http_access_log=str(tmp_path / "http-access.log"), listen_address=PUBLIC)
        state = {"netns": netns, "sshd": sshd, "commands": commands, "runtime": runtime, "root": root,
                 "conf": conf, "pid": pid, "tmp": tmp_path, "packaged": conf.read_bytes()}
        try:
            yield state
        finally:
            sshd.stop()
            stop_nginx(state)
            assert conf.read_bytes() == state["packaged"], "the packaged nginx.conf was changed"


def stop_nginx(gateway) -> None:
    pid_file = gateway["pid"]
    if pid_file.exists() and pid_file.read_text().strip():
        pid = int(pid_file.read_text())
        subprocess.run(["kill", str(pid)], check=False)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)


def start_nginx(gateway) -> int:
    started = gateway["netns"].run(["nginx", "-c", str(gateway["conf"])])
    assert started.returncode == 0, started.stderr
    for _ in range(50):
        if gateway["pid"].exists() and gateway["pid"].read_text().strip():
            break
        time.sleep(0.1)
    return int(gateway["pid"].read_text())


def files_for(settings, runtime, broken=False):
    stream = render_nginx_stream(settings, runtime)
    if broken:
        stream = stream.replace("proxy_timeout", "proxy_timeot", 1)
    files = [RenderedFile("gateway", NGINX_STREAM, stream),
             RenderedFile("gateway", GATEWAY_FIREWALL_V4, render_gateway_firewall(settings), 0o640)]
    if settings.gateway.ipv6:
        files.append(RenderedFile("gateway", GATEWAY_FIREWALL_V6, render_gateway_firewall(settings, 6), 0o640))
    files.append(RenderedFile("gateway", NGINX_HTTP, render_nginx_http(settings, runtime)))
    return files


def apply(gateway, files, commands=None):
    script = render_gateway_apply(files, commands or gateway["commands"], wait_for_cloud_init=False)
    return gateway["sshd"].run(script, pack(files))


def listening(gateway, port: int) -> bool:
    probe = gateway["netns"].run(["python3", "-c", PROBE, PUBLIC, str(port)])
    return probe.returncode == 0


@contextlib.contextmanager
def squatting(gateway, port: int):
    """Another program holds `port` on the public address for the duration."""
    squatter = subprocess.Popen(["ip", "netns", "exec", gateway["netns"].name, "python3", "-c",
                                 f"import socket,time; s=socket.create_server(('{PUBLIC}', {port})); time.sleep(60)"])
    try:
        for _ in range(50):
            if listening(gateway, port):
                break
            time.sleep(0.1)
        yield
    finally:
        squatter.kill()
        squatter.wait()


def chain(gateway) -> list[str]:
    return [line for line in gateway["netns"].run(["iptables-save"]).stdout.splitlines() if "MAILGATE-IN" in line]


def installed(gateway, path: str) -> Path:
    return gateway["root"] / path.lstrip("/")


def leftovers(gateway) -> list[str]:
    """Anything a run may leave behind on the host: staged copies, check configs."""
    return [str(p) for p in gateway["root"].rglob("*") if ".mailgate-" in p.name]


def test_apply_checks_reloads_and_a_broken_config_is_never_installed(gateway, dev_raw):
    # nginx is already running (cloud-init installed it) with the packaged config.
    pid = start_nginx(gateway)

    smtp_only = variant(dev_raw, services=["smtp"])
    first = apply(gateway, files_for(smtp_only, gateway["runtime"]))
    assert first.returncode == 0, first.stderr
    assert f"gateway updated: {NGINX_STREAM} {GATEWAY_FIREWALL_V4}" in first.stdout
    assert listening(gateway, 25)
    assert "-A MAILGATE-IN -p tcp -m multiport --dports 25,80 -j ACCEPT" in chain(gateway)
    assert listening(gateway, 80)  # ACME's port, the gateway's own http server

    stream = installed(gateway, NGINX_STREAM)
    good_text, good_chain = stream.read_text(), chain(gateway)
    with_imaps = variant(dev_raw, services=["smtp", "imaps"])
    broken = apply(gateway, files_for(with_imaps, gateway["runtime"], broken=True))
    assert broken.returncode == 1
    assert "nginx refused the new config" in broken.stderr and "proxy_timeot" in broken.stderr
    # The message names the file as it would be installed, not the staged copy.
    assert f"{gateway['root']}{NGINX_STREAM}" in broken.stderr
    assert stream.read_text() == good_text and chain(gateway) == good_chain
    assert not leftovers(gateway)
    assert Path(f"/proc/{pid}").exists() and listening(gateway, 25)

    fixed = apply(gateway, files_for(with_imaps, gateway["runtime"]))
    assert fixed.returncode == 0, fixed.stderr
    # The step itself waited for the reload's new listeners.
    assert listening(gateway, 993) and listening(gateway, 25)
    assert "nginx listens on 25 80 993" in fixed.stdout

    again = apply(gateway, files_for(with_imaps, gateway["runtime"]))
    assert again.returncode == 0 and "already up to date" in again.stdout, again.stderr
    assert not leftovers(gateway)


def test_a_stopped_nginx_is_started_by_a_run_that_changes_files(gateway, dev_raw):
    result = apply(gateway, files_for(variant(dev_raw, services=["smtp"]), gateway["runtime"]))
    assert result.returncode == 0, result.stderr
    assert listening(gateway, 25)
    assert (gateway["tmp"] / "persisted").exists()


def test_nothing_changed_but_nginx_down_is_repaired_not_reported_up_to_date(gateway, dev_raw):
    files = files_for(variant(dev_raw, services=["smtp"]), gateway["runtime"])
    start_nginx(gateway)
    assert apply(gateway, files).returncode == 0
    stop_nginx(gateway)
    assert not listening(gateway, 25)

    again = apply(gateway, files)
    assert again.returncode == 0, again.stderr
    assert "nginx is not running" in again.stdout and "now nginx listens on 25" in again.stdout
    assert listening(gateway, 25)


def test_nothing_changed_and_nginx_cannot_start_fails_with_the_reason(gateway, dev_raw):
    files = files_for(variant(dev_raw, services=["smtp"]), gateway["runtime"])
    start_nginx(gateway)
    assert apply(gateway, files).returncode == 0
    stop_nginx(gateway)
    # Something else took port 25 while nginx was down.
    with squatting(gateway, 25):
        again = apply(gateway, files)
    assert again.returncode == 1, again.stdout
    assert "already up to date" not in again.stdout
    assert "nginx does not serve them" in again.stderr and "Address already in use" in again.stderr


def test_nginx_that_cannot_serve_the_new_config_rolls_everything_back(gateway, dev_raw):
    start_nginx(gateway)
    before_chain = chain(gateway)
    with squatting(gateway, 25):
        # nginx -t passes (it does not bind), the reload cannot bind 25: noticed, undone.
        result = apply(gateway, files_for(variant(dev_raw, services=["smtp"]), gateway["runtime"]))
    assert result.returncode == 1, result.stdout
    assert "does not listen on port(s) 25" in result.stderr
    assert not installed(gateway, NGINX_STREAM).exists()
    assert not installed(gateway, GATEWAY_FIREWALL_V4).exists()
    assert chain(gateway) == before_chain
    assert not (gateway["tmp"] / "persisted").exists(), "the firewall was saved before nginx served"
    assert not leftovers(gateway)


def test_a_failing_ipv6_firewall_load_leaves_the_ipv4_chain_as_it_was(gateway, dev_raw):
    start_nginx(gateway)
    smtp = variant(dev_raw, services=["smtp"])
    assert apply(gateway, files_for(smtp, gateway["runtime"])).returncode == 0
    before_chain, before_stream = chain(gateway), installed(gateway, NGINX_STREAM).read_text()

    fake = gateway["tmp"] / "bin"
    fake.mkdir()
    (fake / "ip6tables-restore").write_text(FAILING_RESTORE)
    (fake / "ip6tables-save").write_text("#!/bin/sh\nexit 0\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    commands = replace(gateway["commands"], ip6tables=str(fake / "ip6tables"))
    with_v6 = variant(dev_raw, services=["smtp", "imaps"], gateway__ipv6=True)
    result = apply(gateway, files_for(with_v6, gateway["runtime"]), commands)
    assert result.returncode == 1, result.stdout
    assert "mailgate.rules.v6 did not load" in result.stderr and "line 3 failed" in result.stderr
    assert chain(gateway) == before_chain
    assert installed(gateway, NGINX_STREAM).read_text() == before_stream
    assert not installed(gateway, GATEWAY_FIREWALL_V6).exists()
    assert listening(gateway, 25) and not listening(gateway, 993)


def test_two_runs_at_once_are_serialised(gateway, dev_raw):
    start_nginx(gateway)
    files = files_for(variant(dev_raw, services=["smtp"]), gateway["runtime"])
    lock = gateway["root"] / "run/mailgate/gateway.lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    holder = subprocess.Popen(["flock", str(lock), "sleep", "4"])
    try:
        time.sleep(0.3)
        impatient = replace(gateway["commands"], lock_wait_seconds=1)
        refused = apply(gateway, files, impatient)
        assert refused.returncode == 1
        assert "another mailgate run has held" in refused.stderr and "nothing was changed" in refused.stderr
        assert not installed(gateway, NGINX_STREAM).exists()

        waited = apply(gateway, files)
        assert waited.returncode == 0, waited.stderr
        assert holder.poll() is not None, "the run did not wait for the one holding the lock"
    finally:
        holder.kill()
        holder.wait()

    # Two real runs at once: both succeed, one after the other.
    with_imaps = files_for(variant(dev_raw, services=["smtp", "imaps"]), gateway["runtime"])
    results = [None, None]

    def run(index):
        results[index] = apply(gateway, with_imaps)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert sorted("updated" in r.stdout for r in results) == [False, True]
    assert listening(gateway, 993)


def test_a_gateway_with_an_older_mailgates_nginx_conf_moves_its_stream_block(gateway, dev_raw):
    # Before the stream file, mailgate replaced nginx.conf with a whole config of its own.
    # An older mailgate's whole config had no http block: the move gives it one that
    # loads conf.d, where port 80's server goes.
    smtp = variant(dev_raw, services=["smtp"], acme={"method": "none"})
    runtime = NginxRuntime(user="root", pid=str(gateway["pid"]), error_log=str(gateway["tmp"] / "error.log"),
                           access_log=str(gateway["tmp"] / "access.log"), worker_connections=64,
                           listen_address=PUBLIC,
                           modules_include=f"{gateway['root']}/etc/nginx/modules-enabled/*.conf")
    old = "# Rendered by mailgate from its port catalogue; `pulumi up` replaces this file.\n" + \
        render_nginx_conf(smtp, runtime).split("\n", 2)[2].split("\nhttp {")[0]
    gateway["conf"].write_text(old)
    start_nginx(gateway)
    assert listening(gateway, 25)

    result = apply(gateway, files_for(variant(dev_raw, services=["smtp", "imaps"]), gateway["runtime"]))
    assert result.returncode == 0, result.stderr
    assert "older mailgate" in result.stderr
    migrated = gateway["conf"].read_text()
    assert "stream {" not in migrated and "proxy_pass" not in migrated
    assert migrated.startswith(old[:old.index("events {")])
    assert listening(gateway, 25) and listening(gateway, 993) and listening(gateway, 80)
    assert f"http {{\n    include {gateway['root']}/etc/nginx/conf.d/*.conf;\n}}" in migrated
    gateway["packaged"] = migrated.encode()


def with_watcher(settings, files, relay_key: str | None = "gateway-alert-key"):
    config = render_watch_config(settings, GATEWAY_END, Deployment(), relay_key)
    return files + watch_files(settings, GATEWAY, config)


def recording_systemctl(gateway, refuse: str = "") -> tuple[HostCommands, Path]:
    """A systemctl that records its calls (and fails for the verb `refuse`)."""
    tool, log = gateway["tmp"] / f"systemctl{'-refusing-' + refuse if refuse else ''}", gateway["tmp"] / "systemctl.log"
    tool.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n'
                    f'if [ "$1" = "{refuse}" ]; then echo "Failed to {refuse} unit" >&2; exit 1; fi\n')
    tool.chmod(0o755)
    return replace(gateway["commands"], systemctl=str(tool)), log


def apply_with_watcher(gateway, settings, files, commands):
    script = render_gateway_apply(files, commands, wait_for_cloud_init=False, timers=gateway_timers(settings, commands))
    return gateway["sshd"].run(script, pack(files))


def timer_calls(log: Path, unit: str) -> list[str]:
    return [call for call in log.read_text().splitlines() if call.endswith(f" {unit}")]


def test_the_watcher_timer_follows_alerts_and_a_refused_start_rolls_back(gateway, dev_raw):
    start_nginx(gateway)
    commands, log = recording_systemctl(gateway)
    quiet = variant(dev_raw)
    unit, bans_unit = f"{quiet.names.watch_unit}.timer", f"{quiet.names.bans_unit}.timer"
    config = installed(gateway, quiet.names.watch_config)
    first = apply_with_watcher(gateway, quiet, with_watcher(quiet, files_for(quiet, gateway["runtime"])), commands)
    assert first.returncode == 0, first.stderr
    # Units first known to systemd, then each timer as its config says (no ban loader here).
    assert log.read_text().splitlines() == ["daemon-reload", f"disable --now {unit}", f"disable --now {bans_unit}"]
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert oct(installed(gateway, quiet.names.watch_script).stat().st_mode & 0o777) == "0o755"

    alerting = variant(dev_raw, alerts={"to": "owner@example.net"})
    files = with_watcher(alerting, files_for(alerting, gateway["runtime"]))
    on = apply_with_watcher(gateway, alerting, files, commands)
    assert on.returncode == 0, on.stderr
    assert timer_calls(log, unit)[-1] == f"enable --now {unit}"
    assert "gateway-alert-key" in config.read_text() and "gateway-alert-key" not in on.stdout + on.stderr
    # Nothing changed: systemctl is left alone.
    calls = len(log.read_text().splitlines())
    assert "already up to date" in apply_with_watcher(gateway, alerting, files, commands).stdout
    assert len(log.read_text().splitlines()) == calls

    # Alerts off, then on again with a systemctl that will not start the timer.
    refusing, _ = recording_systemctl(gateway, refuse="enable")
    assert apply_with_watcher(gateway, quiet, with_watcher(quiet, files_for(quiet, gateway["runtime"])),
                              commands).returncode == 0
    quiet_config = config.read_text()
    failed = apply_with_watcher(gateway, alerting, files, refusing)
    assert failed.returncode == 1
    assert f"systemctl could not start or stop mailgate's timers ({unit}" in failed.stderr
    assert config.read_text() == quiet_config and not leftovers(gateway)
    assert timer_calls(log, unit)[-1] == f"disable --now {unit}"


def test_the_ban_loader_is_laid_down_and_turning_bans_off_takes_its_table_away(gateway, dev_raw):
    start_nginx(gateway)
    commands, log = recording_systemctl(gateway)
    banning = variant(dev_raw, bans={"enabled": True})
    names = banning.names
    bans_unit = f"{names.bans_unit}.timer"
    files = files_for(banning, gateway["runtime"]) + ban_files(
        banning, render_banlist_config(banning, "banlist-id-secret", Deployment(public_ipv4=PUBLIC)))
    # A host without nft is refused before anything changes.
    without_nft = apply_with_watcher(gateway, banning, files, replace(commands, nft="/nonexistent/nft"))
    assert without_nft.returncode == 1
    assert ("bans (mailgate:banlistId) need /nonexistent/nft on this host, which it lacks "
            "(Debian, Ubuntu: sudo apt install nftables); nothing was changed") in without_nft.stderr
    assert not installed(gateway, names.bans_config).exists() and not log.exists()
    on = apply_with_watcher(gateway, banning, files, commands)
    assert on.returncode == 0, on.stderr
    assert timer_calls(log, bans_unit) == [f"enable --now {bans_unit}"]
    assert oct(installed(gateway, names.bans_config).stat().st_mode & 0o777) == "0o600"
    assert "banlist-id-secret" not in on.stdout + on.stderr
    # What the loader would have made (its own program, run by the timer).
    table = ("table inet mailgate_bans {\n set banned4 { type ipv4_addr; flags interval; }\n"
             " chain input { type filter hook input priority -5; policy accept; }\n}\n")
    assert gateway["netns"].run(["nft", "-f", "-"], stdin=table).returncode == 0
    quiet = variant(dev_raw)
    files = files_for(quiet, gateway["runtime"]) + ban_files(quiet, render_banlist_config(quiet, None, Deployment()))
    off = apply_with_watcher(gateway, quiet, files, commands)
    assert off.returncode == 0, off.stderr
    assert timer_calls(log, bans_unit)[-1] == f"disable --now {bans_unit}"
    assert gateway["netns"].run(["nft", "list", "table", "inet", "mailgate_bans"]).returncode != 0


def test_port_80s_server_is_checked_by_nginx_and_a_broken_one_changes_nothing(gateway, dev_raw):
    smtp = variant(dev_raw, services=["smtp"])
    first = apply(gateway, files_for(smtp, gateway["runtime"]))
    assert first.returncode == 0, first.stderr
    assert listening(gateway, 80)
    http = installed(gateway, NGINX_HTTP)
    before = http.read_text()
    assert "location ^~ /.well-known/acme-challenge/" in before

    files = files_for(variant(dev_raw, services=["smtp"], web={"enabled": True}), gateway["runtime"])
    broken = [RenderedFile(f.host, f.path, f.text.replace("return 301", "return 3o1"), f.mode)
              if f.path == NGINX_HTTP else f for f in files]
    result = apply(gateway, broken)
    assert result.returncode == 1
    assert "nginx refused the new config" in result.stderr
    assert f"{gateway['root']}{NGINX_HTTP}" in result.stderr  # named where it would live
    assert http.read_text() == before and listening(gateway, 80)

    # A packaged nginx.conf without conf.d would never load the server: said, nothing changed.
    gateway["conf"].write_text(gateway["packaged"].decode().replace(
        f"\tinclude {gateway['root']}/etc/nginx/conf.d/*.conf;\n", ""))
    result = apply(gateway, files)
    assert result.returncode == 1
    assert f"does not include /etc/nginx/conf.d/*.conf, so nginx would never load {NGINX_HTTP}" in result.stderr
    assert http.read_text() == before
    gateway["conf"].write_bytes(gateway["packaged"])
