"""What the doctor checks: the stack's settings, the deployed addresses, and how it
reaches the hosts (when --ssh)."""

from __future__ import annotations

import atexit
import ipaddress
import os
import json
import shlex
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mailgate.config_report import ConfigError
from mailgate.settings import TAILNET_RANGES, Settings

GATEWAY_LOGIN = "ubuntu"  # the login of Oracle's Ubuntu images (cloud-init adds our key to it)
HOME_KEY, GATEWAY_KEY = Path("~/.ssh/mailgate_home"), Path("~/.ssh/mailgate_gateway")


@dataclass(frozen=True)
class Remote:
    """A way to run a shell script as root on a host: `argv` + `sh -s`, the script on stdin
    (never on a command line)."""

    name: str
    argv: tuple[str, ...]

    def run(self, script: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([*self.argv, "sh", "-s"], input=script, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def describe(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Target:
    settings: Settings
    public_ipv4: str
    public_ipv6: str | None = None
    gateway_tailnet_ip: str | None = None
    resolvers: tuple[str, ...] = ()
    """Empty: the system's resolver."""
    ca_file: str | None = None
    timeout: float = 5.0
    home: Remote | None = None
    gateway: Remote | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def public_addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.public_ipv4, self.public_ipv6) if a)


def read_outputs(path: Path) -> dict:
    """`pulumi stack output --json` as a file, or `-` for stdin."""
    import sys

    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    try:
        outputs = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError([f"--outputs {path}: not JSON ({error}); expected what "
                           "`pulumi stack output --json` prints"]) from None
    if not isinstance(outputs, dict):
        raise ConfigError([f"--outputs {path}: expected a JSON object of stack outputs"])
    return outputs


# Addresses that never face the internet: a machine with one is behind NAT (or a tunnel).
PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
    "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128"))


def is_public(address: str) -> bool:
    """Not private, the tunnel's, loopback or link-local (documentation ranges count as
    public: the lab's internet)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not any(ip in net for net in PRIVATE if net.version == ip.version)


def is_tailnet(address: str) -> bool:
    try:
        return any(ipaddress.ip_address(address) in net for net in TAILNET_RANGES)
    except ValueError:
        return False


def own_address(target: Target) -> str | None:
    """The address this machine's packets to the gateway leave from (before any NAT)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((target.public_ipv4, 9))
            return sock.getsockname()[0]
    except OSError:
        return None


def _ssh(user: str, host: str, port: int, key: Path, extra: list[str], timeout: float,
         sudo: bool = True) -> tuple[str, ...]:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(timeout)}", "-p", str(port)]
    if key.expanduser().exists():
        argv += ["-i", str(key.expanduser())]
    argv += [*extra, f"{user}@{host}"]
    return tuple(argv + ([] if user == "root" or not sudo else ["sudo", "-n"]))


def home_remote(settings: Settings, gateway_host: str | None, timeout: float,
                override: str | None) -> Remote:
    if override:
        return Remote("home", tuple(shlex.split(override)))
    home = settings.home
    # The host key is in the stack config: pin it, as the remote steps do.
    known = tempfile.NamedTemporaryFile("w", prefix="mailgate-doctor-", suffix=".known_hosts", delete=False)
    host = home.ssh_host if home.ssh_port == 22 else f"[{home.ssh_host}]:{home.ssh_port}"
    known.write(f"{host} {home.ssh_host_key}\n")
    known.close()
    atexit.register(os.unlink, known.name)
    extra = ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known.name}"]
    if home.via_gateway and gateway_host:
        # Not -J: the jump's own ssh would get none of these options (key, batch mode).
        jump = _ssh(GATEWAY_LOGIN, gateway_host, 22, GATEWAY_KEY, ["-o", "StrictHostKeyChecking=accept-new"],
                    timeout, sudo=False)
        extra += ["-o", "ProxyCommand=" + shlex.join([*jump[:-1], "-W", "%h:%p", jump[-1]])]
    return Remote("home", _ssh(home.ssh_user, home.ssh_host, home.ssh_port, HOME_KEY, extra, timeout))


def gateway_remote(gateway_host: str | None, timeout: float, override: str | None) -> Remote | None:
    if override:
        return Remote("gateway", tuple(shlex.split(override)))
    if not gateway_host:
        return None
    # A new VM has a new host key; over the tailnet Tailscale has already authenticated it.
    extra = ["-o", "StrictHostKeyChecking=accept-new"]
    return Remote("gateway", _ssh(GATEWAY_LOGIN, gateway_host, 22, GATEWAY_KEY, extra, timeout))
