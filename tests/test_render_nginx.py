"""The gateway's nginx stream file: checked by `nginx -t` inside the installed Debian
nginx.conf, then (in the lab's whole config) run for real in a namespace."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailgate import catalogue
from mailgate.catalogue import IdleTimeout
from mailgate.layout import NGINX_PACKAGED_CONF, NGINX_STREAM, gateway_files
from mailgate.renderers.nginx import CONNECT_TIMEOUT_SECONDS, NginxRuntime, render_nginx_conf, render_nginx_http, render_nginx_stream
from tests.conftest import need_program
from tests.settings_variants import everything, variant
from tests.validators import Netns, nginx_check

SERVER = re.compile(r"server \{(.*?)\n    \}", re.S)


def servers(conf: str) -> dict[int, dict[str, list[str]]]:
    """public port -> directive -> values, from the rendered stream servers."""
    found = {}
    for body in SERVER.findall(conf):
        directives: dict[str, list[str]] = {}
        for line in body.strip().splitlines():
            name, _, value = line.strip().rstrip(";").partition(" ")
            directives.setdefault(name, []).append(value)
        port = int(directives["listen"][0].split()[0].rsplit(":", 1)[-1])
        found[port] = directives
    return found


@pytest.mark.parametrize("build", [lambda raw: variant(raw), everything,
                                   lambda raw: variant(raw, services=["smtp"])])
def test_nginx_accepts_the_config(dev_raw, tmp_path, build):
    nginx_check(render_nginx_conf(build(dev_raw)), tmp_path)


def test_the_stream_file_loads_from_the_packaged_nginx_conf(dev_raw, tmp_path):
    """Debian's own nginx.conf, untouched but for where its modules-enabled include points:
    the stream file sorts after the module loader and nginx -t accepts the pair."""
    need_program("nginx")
    packaged = Path(NGINX_PACKAGED_CONF)
    enabled = Path(NGINX_STREAM).parent
    assert f"include {enabled}/*.conf;" in packaged.read_text()
    loaders = sorted(p.name for p in enabled.glob("*.conf") if p.name != Path(NGINX_STREAM).name)
    assert "50-mod-stream.conf" in loaders
    assert sorted(loaders + [Path(NGINX_STREAM).name])[-1] == Path(NGINX_STREAM).name
    copy = tmp_path / "modules-enabled"
    copy.mkdir()
    for name in loaders:
        (copy / name).symlink_to(enabled / name)
    stream = render_nginx_stream(everything(dev_raw))
    (copy / Path(NGINX_STREAM).name).write_text(stream)
    nginx_check(packaged.read_text().replace(f"{enabled}/*.conf", f"{copy}/*.conf"), tmp_path)
    # Only the stream block: the main context stays the package's.
    assert not re.search(r"^(user|pid|events|worker_\w+|error_log|include)\b", stream, re.M)


def test_the_gateway_gets_the_stream_file_not_a_whole_nginx_conf(dev_settings):
    paths = {f.path: f.text for f in gateway_files(dev_settings)}
    assert NGINX_PACKAGED_CONF not in paths
    assert paths[NGINX_STREAM] == render_nginx_stream(dev_settings)
    assert paths[NGINX_STREAM] in render_nginx_conf(dev_settings)


def test_nginx_refuses_a_broken_config(dev_settings, tmp_path):
    # The validator itself must be able to say no, or the test above proves nothing.
    broken = render_nginx_conf(dev_settings).replace("proxy_protocol on;", "proxy_protocol maybe;", 1)
    with pytest.raises(AssertionError, match="nginx -t refused"):
        nginx_check(broken, tmp_path)


def test_one_server_per_enabled_service_to_its_twin(dev_raw):
    settings = everything(dev_raw)
    found = servers(render_nginx_stream(settings))
    assert set(found) == {s.public_port for s in catalogue.STREAM_SERVICES}
    for service in catalogue.STREAM_SERVICES:
        directives = found[service.public_port]
        assert directives["proxy_pass"] == [f"100.64.0.2:{service.home_port}"]
        assert directives["proxy_protocol"] == ["on" if service.proxy_protocol else "off"]
        assert directives["proxy_timeout"] == [f"{service.timeout.seconds}s"]
        # Long-idle sessions get small buffers (docs/performance.md, tuning log); the rest
        # keep the stream module's 16k.
        small = ["2k"] if service.timeout is IdleTimeout.IMAP else None
        assert directives.get("proxy_buffer_size") == small, service.name
        assert directives["listen"] == [f"{service.public_port} so_keepalive=on",
                                        f"[::]:{service.public_port} so_keepalive=on"]


def test_mail_is_never_forwarded_to_a_plain_port(dev_raw):
    found = servers(render_nginx_stream(everything(dev_raw)))
    plain_mail_ports = {s.public_port for s in catalogue.SERVICES if s.proxy_protocol}
    targets = {int(d["proxy_pass"][0].rsplit(":", 1)[1]) for d in found.values()}
    assert not targets & plain_mail_ports


def test_disabled_services_are_absent(dev_raw):
    settings = variant(dev_raw, services=["smtp", "imaps"], acme={"method": "none"})
    assert set(servers(render_nginx_stream(settings))) == {25, 993}
    assert "server {" not in render_nginx_http(settings)


def test_timeouts_exceed_protocol_limits_and_connect_is_short(dev_settings):
    conf = render_nginx_stream(dev_settings)
    assert f"proxy_connect_timeout {CONNECT_TIMEOUT_SECONDS}s;" in conf
    assert CONNECT_TIMEOUT_SECONDS <= 10
    found = servers(conf)
    assert found[993]["proxy_timeout"] == ["1860s"]  # > 30 min IMAP autologout
    assert found[4190]["proxy_timeout"] == ["1860s"]
    assert found[25]["proxy_timeout"] == ["600s"]
    assert "proxy_socket_keepalive on;" in conf


def test_a_timeout_override_changes_only_its_class(dev_settings):
    # The lab's --imap-timeout: every IMAP-class server gets the override, nothing else moves.
    normal = servers(render_nginx_stream(dev_settings))
    short = servers(render_nginx_stream(dev_settings, idle_seconds={IdleTimeout.IMAP: 10}))
    changed = {port for port in normal if normal[port] != short[port]}
    assert changed == {s.public_port for s in dev_settings.enabled_services if s.timeout is IdleTimeout.IMAP}
    assert all(short[port]["proxy_timeout"] == ["10s"] for port in changed)


# Runs inside the namespace: plays the home twin listeners and the internet client.
PROBE = r"""
import json, socket, sys
client_ip, public_ip, home_ip, pairs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
result = {}
for public, twin in pairs:
    listener = socket.create_server((home_ip, twin))
    listener.settimeout(5)
    client = socket.create_connection((public_ip, public), timeout=5, source_address=(client_ip, 0))
    upstream, _ = listener.accept()
    upstream.settimeout(5)
    data = b""
    while b"\r\n" not in data:
        chunk = upstream.recv(200)
        if not chunk:
            break
        data += chunk
    result[public] = [data.split(b"\r\n")[0].decode(), client.getsockname()[1]]
    client.close(); upstream.close(); listener.close()
print(json.dumps(result))
"""


def test_real_nginx_sends_the_real_client_address_to_every_twin(dev_settings, tmp_path):
    client, public, home = "198.51.100.7", "203.0.113.10", dev_settings.home.tailnet_ip
    runtime = NginxRuntime(
        user="root", pid=str(tmp_path / "nginx.pid"), error_log=str(tmp_path / "error.log"),
        access_log=str(tmp_path / "access.log"), worker_connections=64, listen_address=public,
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(dev_settings, runtime))
    with Netns() as ns:
        for address in (client, public, home):
            ns.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"]).check_returncode()
        ns.run(["ip", "link", "set", "lo", "up"]).check_returncode()
        started = ns.run(["nginx", "-c", str(conf)])
        assert started.returncode == 0, started.stderr
        try:
            pairs = [[s.public_port, s.home_port] for s in dev_settings.enabled_services if not s.gateway_http]
            probe = ns.run([sys.executable, "-c", PROBE, client, public, home, json.dumps(pairs)])
            assert probe.returncode == 0, probe.stderr
            seen = json.loads(probe.stdout)
        finally:
            pid = int((tmp_path / "nginx.pid").read_text())
            subprocess.run(["kill", str(pid)], check=False)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
    for service in (s for s in dev_settings.enabled_services if not s.gateway_http):
        header, client_port = seen[str(service.public_port)]
        assert header == f"PROXY TCP4 {client} {public} {client_port} {service.public_port}", service.name


# Runs inside the namespace: Mailcow's port 80 on the home address (recording each path
# it is asked for) and a client sending requests to the gateway's port 80.
HTTP_PROBE = r"""
import http.client, http.server, json, sys, threading
public_ip, home_ip, requests = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
seen = []
class Home(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen.append([self.path, self.headers.get("Host")])
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    do_POST = do_GET
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer((home_ip, 80), Home)
threading.Thread(target=server.serve_forever, daemon=True).start()
answers = []
for method, path, host in requests:
    connection = http.client.HTTPConnection(public_ip, 80, timeout=5)
    connection.putrequest(method, path, skip_host=True)
    connection.putheader("Host", host)
    connection.putheader("Content-Length", "0")
    connection.endheaders()
    response = connection.getresponse()
    answers.append([response.status, response.getheader("Location")])
    connection.close()
server.shutdown()
print(json.dumps({"answers": answers, "seen": seen}))
"""


def port_80_behaviour(settings, tmp_path, requests):
    public, home = "203.0.113.10", settings.home.tailnet_ip
    runtime = NginxRuntime(user="root", pid=str(tmp_path / "nginx.pid"), error_log=str(tmp_path / "error.log"),
                           access_log=str(tmp_path / "access.log"), http_access_log=str(tmp_path / "http.log"),
                           worker_connections=64, listen_address=public)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(settings, runtime))
    with Netns() as ns:
        for address in (public, home):
            ns.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"]).check_returncode()
        ns.run(["ip", "link", "set", "lo", "up"]).check_returncode()
        started = ns.run(["nginx", "-c", str(conf)])
        assert started.returncode == 0, started.stderr
        try:
            probe = ns.run([sys.executable, "-c", HTTP_PROBE, public, home, json.dumps(requests)])
            assert probe.returncode == 0, probe.stderr
            return json.loads(probe.stdout)
        finally:
            subprocess.run(["kill", (tmp_path / "nginx.pid").read_text().strip()], check=False)


CHALLENGE = "/.well-known/acme-challenge/tok3n"
ESCAPES = ("/", "/admin", "/.well-known/acme-challenge", "/.well-known/acme-challenge/../../admin",
           "/.well-known/acme-challenge/%2e%2e/%2e%2e/admin", "/.well-known/other")


def test_port_80_passes_only_acme_challenges_home_for_any_name(dev_raw, tmp_path):
    settings = variant(dev_raw)
    requests = ([["GET", CHALLENGE, name] for name in ("mail.example.com", "mta-sts.example.org")]
                + [["GET", path, "mail.example.com"] for path in ESCAPES]
                + [["POST", CHALLENGE + "-post", "mail.example.com"]])
    result = port_80_behaviour(settings, tmp_path, requests)
    # The challenge reaches home with its name, whatever the name; nothing else does.
    assert result["seen"] == [[CHALLENGE, "mail.example.com"], [CHALLENGE, "mta-sts.example.org"]]
    statuses = [status for status, _ in result["answers"]]
    # The directory without its slash gets nginx's 301 to it (the location's own rule).
    assert statuses == [200, 200, 404, 404, 301, 404, 404, 404, 403], statuses


def test_with_web_forwarding_port_80_redirects_to_https(dev_raw, tmp_path):
    result = port_80_behaviour(variant(dev_raw, web={"enabled": True}), tmp_path,
                               [["GET", "/SOGo/?x=1", "mail.example.com"], ["GET", CHALLENGE, "mail.example.com"]])
    assert result["answers"] == [[301, "https://mail.example.com/SOGo/?x=1"], [200, None]]
    assert result["seen"] == [[CHALLENGE, "mail.example.com"]]
