"""The gateway step's script, run over SSH against a real nginx in a network namespace."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from mailgate.layout import GATEWAY_FIREWALL_V4, NGINX_CONF, RenderedFile
from mailgate.renderers.firewall import render_gateway_firewall
from mailgate.renderers.nginx import NginxRuntime, render_nginx_conf
from mailgate.renderers.remote_scripts import HostCommands, pack, render_gateway_apply
from tests.settings_variants import variant
from tests.sshd import SUDO_LOGIN, start_sshd
from tests.validators import Netns

PUBLIC = "203.0.113.10"
PROBE = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()"


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
        conf = root / NGINX_CONF.lstrip("/")
        in_ns = f"ip netns exec {netns.name} "
        commands = HostCommands(
            root=str(root), iptables=in_ns + "iptables",
            nginx_check=f"{in_ns}nginx -t -c {conf}", nginx_reload=f"{in_ns}nginx -s reload -c {conf}",
            persist_firewall="true",
        )
        runtime = NginxRuntime(user="root", pid=str(tmp_path / "nginx.pid"),
                               error_log=str(tmp_path / "error.log"),
                               access_log=str(tmp_path / "access.log"),
                               worker_connections=64, listen_address=PUBLIC)
        state = {"netns": netns, "sshd": sshd, "commands": commands, "runtime": runtime,
                 "conf": conf, "pid": tmp_path / "nginx.pid"}
        try:
            yield state
        finally:
            sshd.stop()
            if state["pid"].exists() and state["pid"].read_text().strip():
                pid = int(state["pid"].read_text())
                subprocess.run(["kill", str(pid)], check=False)
                for _ in range(50):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.1)


def files_for(settings, runtime, broken=False):
    nginx = render_nginx_conf(settings, runtime)
    if broken:
        nginx = nginx.replace("proxy_timeout", "proxy_timeot", 1)
    return [RenderedFile("gateway", NGINX_CONF, nginx),
            RenderedFile("gateway", GATEWAY_FIREWALL_V4, render_gateway_firewall(settings), 0o640)]


def apply(gateway, files):
    script = render_gateway_apply(files, gateway["commands"], wait_for_cloud_init=False)
    return gateway["sshd"].run(script, pack(files))


def listening(gateway, port: int) -> bool:
    probe = gateway["netns"].run(["python3", "-c", PROBE, PUBLIC, str(port)])
    return probe.returncode == 0


def test_apply_checks_reloads_and_a_broken_config_leaves_the_old_one_serving(gateway, dev_raw):
    # nginx is already running (cloud-init installed it) with some earlier config.
    gateway["conf"].parent.mkdir(parents=True)
    gateway["conf"].write_text(render_nginx_conf(variant(dev_raw, services=["smtp", "submission"]),
                                                 gateway["runtime"]))
    started = gateway["netns"].run(["nginx", "-c", str(gateway["conf"])])
    assert started.returncode == 0, started.stderr
    for _ in range(50):
        if gateway["pid"].exists() and gateway["pid"].read_text().strip():
            break
        time.sleep(0.1)
    pid = int(gateway["pid"].read_text())

    smtp_only = variant(dev_raw, services=["smtp"])
    first = apply(gateway, files_for(smtp_only, gateway["runtime"]))
    assert first.returncode == 0, first.stderr
    assert "gateway updated: /etc/nginx/nginx.conf /etc/iptables/mailgate.rules.v4" in first.stdout
    assert listening(gateway, 25)
    assert "-A MAILGATE-IN -p tcp -m multiport --dports 25 -j ACCEPT" in gateway["netns"].run(["iptables-save"]).stdout

    good_text = gateway["conf"].read_text()
    with_imaps = variant(dev_raw, services=["smtp", "imaps"])
    broken = apply(gateway, files_for(with_imaps, gateway["runtime"], broken=True))
    assert broken.returncode == 1
    assert "nginx refused the new config" in broken.stderr and "proxy_timeot" in broken.stderr
    assert gateway["conf"].read_text() == good_text
    assert Path(f"/proc/{pid}").exists() and listening(gateway, 25)
    assert "993" not in gateway["netns"].run(["iptables-save"]).stdout

    fixed = apply(gateway, files_for(with_imaps, gateway["runtime"]))
    assert fixed.returncode == 0, fixed.stderr
    for _ in range(30):  # reload starts new workers
        if listening(gateway, 993):
            break
        time.sleep(0.1)
    assert listening(gateway, 993) and listening(gateway, 25)

    again = apply(gateway, files_for(with_imaps, gateway["runtime"]))
    assert again.returncode == 0 and "already up to date" in again.stdout
