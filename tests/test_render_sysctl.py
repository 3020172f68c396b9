"""The home host's non-local bind setting, applied from the rendered file with the real
`sysctl` in a private network namespace: a twin port binds the tailnet address before
tailscaled has assigned it (what Docker does at boot), and cannot without the file."""

from __future__ import annotations

import json
import sys

from mailgate.catalogue import BY_NAME
from mailgate.renderers.sysctl import NONLOCAL_BIND_KEYS, render_nonlocal_bind_sysctl
from tests.validators import Netns

# Runs inside the namespace, as docker-proxy would: bind and listen on the twin address,
# then tailscaled assigns the address to tailscale0 and a client connects to it.
BIND_THEN_ADDRESS = r"""
import errno, json, socket, subprocess, sys
address, port = sys.argv[1], int(sys.argv[2])
listener = socket.socket()
try:
    listener.bind((address, port))
except OSError as error:
    print(json.dumps({"bound": False, "error": errno.errorcode[error.errno]}))
    sys.exit()
listener.listen()
subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "tailscale0"], check=True)
client = socket.create_connection((address, port), timeout=3)
served, _ = listener.accept()
client.sendall(b"EHLO gateway")
print(json.dumps({"bound": True, "served": served.recv(64).decode()}))
"""


def bind_before_the_address(ns: Netns, address: str, port: int) -> dict:
    """A host at boot: loopback up (a namespace without any address accepts every bind),
    tailscale0 created but without its address yet."""
    for argv in (["ip", "link", "set", "lo", "up"], ["ip", "tuntap", "add", "dev", "tailscale0", "mode", "tun"],
                 ["ip", "link", "set", "tailscale0", "up"]):
        ns.run(argv).check_returncode()
    assert address not in ns.run(["ip", "-o", "addr", "show"]).stdout
    probe = ns.run([sys.executable, "-c", BIND_THEN_ADDRESS, address, str(port)])
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout)


def test_the_file_sets_both_keys_for_the_stack(dev_settings):
    text = render_nonlocal_bind_sysctl("dev")
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert settings == [f"{key} = 1" for key in NONLOCAL_BIND_KEYS]
    assert "stack dev" in text


def test_a_twin_port_binds_the_tailnet_address_before_it_exists(dev_settings, tmp_path):
    address, port = dev_settings.home.tailnet_ip, BY_NAME["smtp"].home_port
    conf = tmp_path / dev_settings.names.home_nonlocal_bind_sysctl.rsplit("/", 1)[1]
    conf.write_text(render_nonlocal_bind_sysctl(dev_settings.names.stack))

    with Netns("mgnb") as without:  # a fresh namespace: the kernel's default
        assert without.run(["sysctl", "-n", NONLOCAL_BIND_KEYS[0]]).stdout.strip() == "0"
        assert bind_before_the_address(without, address, port) == {"bound": False, "error": "EADDRNOTAVAIL"}

    with Netns("mgnb") as ns:
        applied = ns.run(["sysctl", "-p", str(conf)])
        assert applied.returncode == 0, applied.stderr
        for key in NONLOCAL_BIND_KEYS:
            assert ns.run(["sysctl", "-n", key]).stdout.strip() == "1", key
        assert bind_before_the_address(ns, address, port) == {"bound": True, "served": "EHLO gateway"}
