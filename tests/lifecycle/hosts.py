"""The throwaway machines the remote steps reach over SSH: gateway VMs and the Mini PC.

Each machine is a root directory, a network namespace and its own sshd. The deployed
scripts are rendered once per program run for whichever machine a connection selects,
so a gateway's sshd hands them the machine's root and namespace in the environment
(sshd's `SetEnv`, see tests/sshd.py), and GATEWAY_COMMANDS refers to those variables. Processes are stopped by
PID (nginx by its pid file, sshd by Popen), never by name.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

from mailgate.layout import NGINX_STREAM
from mailgate.renderers.nginx import NginxRuntime
from mailgate.renderers.remote_scripts import HostCommands
from tests.conftest import need_program
from tests.sshd import start_sshd
from tests.validators import Netns

IN_NETNS = 'ip netns exec "$MGLC_NETNS" '
NGINX_ARGS = '-p "$MGLC_ROOT/" -c "$MGLC_ROOT/etc/nginx/nginx.conf"'
# The gateway's programs, in whichever VM the connection reached. `cloud-init status
# --wait` is replaced by the world booting a VM before its first step (World.reach).
GATEWAY_COMMANDS = HostCommands(
    root="$MGLC_ROOT", iptables=IN_NETNS + "iptables", ip6tables=IN_NETNS + "ip6tables",
    systemctl="true", nginx_check=f'{IN_NETNS}nginx -t -p "$MGLC_ROOT/"',
    nginx_reload=f"{IN_NETNS}nginx -s reload {NGINX_ARGS}", persist_firewall="true",
    wait_for_cloud_init=False, nginx_start=f"{IN_NETNS}nginx {NGINX_ARGS}",
    nginx_active='kill -0 "$(cat "$MGLC_ROOT/run/nginx.pid" 2>/dev/null)"',
    listening_tcp=IN_NETNS + "ss -ltnpH", nft=IN_NETNS + "nft",
)
# Relative paths resolve against each VM's prefix (-p), so one config fits every VM.
GATEWAY_NGINX = NginxRuntime(user="root", pid="run/nginx.pid", error_log="log/error.log",
                             access_log="log/mailgate-stream.log", http_access_log="log/mailgate-http.log",
                             worker_connections=64)
# The packaged nginx.conf once cloud-init installed nginx, in miniature: like Ubuntu's, it
# includes modules-enabled/*.conf at the top level (where the stream module's loader and
# mailgate's stream file sit), includes conf.d/*.conf in its http block (where port 80's
# server goes) and serves the default site on port 80, no stream.
STOCK_NGINX_CONF = (
    "user root;\npid run/nginx.pid;\nerror_log log/error.log;\ninclude modules-enabled/*.conf;\n"
    "events {}\nhttp {\n  access_log off;\n  include conf.d/*.conf;\n"
    "  server {\n    listen 80 default_server;\n  }\n}\n"
)
STREAM_LOADER = "load_module modules/ngx_stream_module.so;\n"
PROBE = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2).close()"


def _check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


class GatewayMachine:
    """One gateway VM as Oracle's Ubuntu image leaves it once cloud-init installed nginx:
    the stock nginx serving, an empty MAILGATE-IN chain hooked into INPUT, sshd up."""

    def __init__(self, directory: Path, netns_prefix: str):
        need_program("nginx")
        self.root = directory / "root"
        for sub in ("etc/nginx/modules-enabled", "etc/nginx/conf.d", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc/nginx/modules-enabled/50-mod-stream.conf").write_text(STREAM_LOADER)
        # modules-enabled says `load_module modules/...`, relative to the prefix.
        (self.root / "modules").symlink_to("/usr/lib/nginx/modules")
        self.conf = self.root / "etc/nginx/nginx.conf"
        self.stream = self.root / NGINX_STREAM.lstrip("/")
        self.conf.write_text(STOCK_NGINX_CONF)
        self.netns = Netns(netns_prefix).__enter__()
        self.run(["ip", "link", "set", "lo", "up"])
        self.run(["iptables", "-N", "MAILGATE-IN"])
        self.run(["iptables", "-I", "INPUT", "1", "-j", "MAILGATE-IN"])
        self.run(["nginx", "-p", f"{self.root}/", "-c", str(self.conf)])
        self.sshd = start_sshd(directory / "ssh", {"MGLC_ROOT": str(self.root),
                                                   "MGLC_NETNS": self.netns.name})

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return _check(self.netns.run(argv))

    def nginx_pid(self) -> int | None:
        pid_file = self.root / "run/nginx.pid"
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        return int(text) if text and Path(f"/proc/{text}").exists() else None

    def firewall(self) -> str:
        return self.run(["iptables-save"]).stdout

    def listening(self, port: int) -> bool:
        for _ in range(30):  # a reload starts new workers
            if self.netns.run(["python3", "-c", PROBE, str(port)]).returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self.sshd.stop()
        pid = self.nginx_pid()
        if pid:
            subprocess.run(["kill", str(pid)], check=False)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
        self.netns.__exit__(None, None, None)


MAILCOW_CONF = "MAILCOW_HOSTNAME=mail.example.com\nDBPASS=db-secret-not-ours\n"
MAILCOW_COMPOSE = ("services:\n  postfix-mailcow:\n    image: example/postfix\n"
                   "  dovecot-mailcow:\n    image: example/dovecot\n"
                   "  rspamd-mailcow:\n    image: example/rspamd\n")
USER_OVERRIDE = "services:\n  rspamd-mailcow:\n    environment:\n      - MINE=1  # keep\n"
USER_POSTFIX_EXTRA = "message_size_limit = 1\n"
RECORDING_SYSTEMCTL = '#!/bin/sh\nprintf "%s\\n" "$*" >> "$0.log"\n'


class HomeMachine:
    """The Mini PC every stack shares: one root holding a Mailcow checkout per stack
    (running before mailgate came), Docker's DOCKER-USER chain in a network namespace,
    a stand-in docker (tests/fake_docker.py), a recording systemctl, sshd."""

    def __init__(self, directory: Path, mailcow_dirs: list[str], docker_factory):
        self.root = directory / "root"
        self.netns = Netns("mglc-home").__enter__()
        _check(self.netns.run(["iptables", "-N", "DOCKER-USER"]))
        self.docker = docker_factory(directory / "bin/docker")
        systemctl = directory / "bin/systemctl"
        systemctl.write_text(RECORDING_SYSTEMCTL)
        systemctl.chmod(0o755)
        in_ns = f"ip netns exec {self.netns.name} "
        self.commands = HostCommands(root=str(self.root), docker=str(self.docker.path),
                                     iptables=in_ns + "iptables", ip6tables=in_ns + "ip6tables",
                                     systemctl=str(systemctl), sysctl=in_ns + "sysctl")
        for mailcow_dir in mailcow_dirs:
            checkout = self.mailcow(mailcow_dir)
            (checkout / "data/conf/postfix").mkdir(parents=True)
            (checkout / "data/conf/dovecot").mkdir(parents=True)
            (checkout / "mailcow.conf").write_text(MAILCOW_CONF)
            (checkout / "mailcow.conf").chmod(0o600)
            (checkout / "docker-compose.yml").write_text(MAILCOW_COMPOSE)
            (checkout / "docker-compose.override.yml").write_text(USER_OVERRIDE)
            (checkout / "data/conf/postfix/extra.cf").write_text(USER_POSTFIX_EXTRA)
            _check(self.docker.compose(checkout, "up", "-d"))
        self.sshd = start_sshd(directory / "ssh")

    def mailcow(self, mailcow_dir: str) -> Path:
        return self.root / mailcow_dir.lstrip("/")

    def tree(self, under: str = "/") -> dict[str, tuple[str, int]]:
        """path -> (sha256, mode) of every file below `under` on the host."""
        found = {}
        for path in sorted((self.root / under.lstrip("/")).rglob("*")):
            if path.is_file():
                found["/" + str(path.relative_to(self.root))] = (
                    hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
        return found

    def firewall(self) -> str:
        return _check(self.netns.run(["iptables-save"])).stdout

    def stop(self) -> None:
        self.sshd.stop()
        self.netns.__exit__(None, None, None)
