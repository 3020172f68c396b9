"""Home side: the compose override (checked by docker-compose), the twin-port filter
(loaded into iptables' raw table and probed with real connections) and the docker drop-in."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from mailgate import catalogue
from mailgate.deployment import Deployment
from mailgate.renderers.compose import render_compose_override
from mailgate.renderers.firewall import render_home_firewall, render_home_firewall_v6
from mailgate.renderers.mailcow import render_docker_after_tailscale, render_mailcow_conf
from mailgate.settings import TAILNET_RANGES
from tests.settings_variants import variant
from tests.conftest import need_program
from tests.splice import Splicer
from tests.validators import Netns, compose_config, iptables_restore

USER_OVERRIDE = """\
# my own additions
services:
  rspamd-mailcow:
    environment:
      - MY_SETTING=1   # keep me
  postfix-mailcow:
    ports:
      - "${SMTP_PORT_HAPROXY:-127.0.0.1:10025}:10025"
      - "127.0.0.1:2525:25"
"""


def published(config: dict, service: str) -> set[str]:
    result = set()
    for port in config["services"][service].get("ports", []):
        if isinstance(port, str):
            result.add(port)
        else:
            result.add(f"{port.get('host_ip', '')}:{port.get('published')}:{port['target']}")
    return result


def test_compose_publishes_each_twin_on_the_tailnet_ip_only(dev_settings, tmp_path):
    config = compose_config(render_compose_override(dev_settings), render_mailcow_conf(dev_settings), tmp_path)
    # Mailcow publishes its own web ports (port 80 among them); mailgate only the twins.
    mine = [s for s in dev_settings.enabled_services if s.mailcow_variable]
    twins = {s.container: set() for s in mine}
    for service in mine:
        twins[service.container].add(f"100.64.0.2:{service.home_port}:{service.home_port}/tcp")
    for container, expected in twins.items():
        got = {p for p in published(config, container) if p.startswith("100.64.")}
        assert got == expected, container
        # Nothing else publishes a twin port: not on 0.0.0.0, not on 127.0.0.1.
        others = published(config, container) - expected
        assert not any(p.rsplit(":", 1)[-1].split("/")[0] in {str(s.home_port) for s in catalogue.PROXY_SERVICES}
                       for p in others), others


def test_compose_refuses_the_override_without_mailgates_variables(dev_settings, tmp_path):
    with pytest.raises(AssertionError, match="set by mailgate in mailcow.conf"):
        compose_config(render_compose_override(dev_settings), "", tmp_path)


def spliced(settings, live: str | None, tmp_path) -> str:
    result = Splicer(tmp_path / "host").compose(settings, live)
    assert result.returncode == 0, result.stderr
    return result.stdout


def twin_mappings(config: dict, settings) -> dict[str, list[str]]:
    """Every published twin port of each service, as Compose resolved it."""
    twins = {str(s.home_port) for s in catalogue.PROXY_SERVICES}
    return {container: sorted(p for p in published(config, container) if p.rsplit(":", 1)[-1].split("/")[0] in twins)
            for container in ("postfix-mailcow", "dovecot-mailcow")}


def expected_twins(settings) -> dict[str, list[str]]:
    expected: dict[str, list[str]] = {"postfix-mailcow": [], "dovecot-mailcow": []}
    for service in (s for s in settings.enabled_services if s.mailcow_variable):
        expected[service.container].append(f"100.64.0.2:{service.home_port}:{service.home_port}/tcp")
    return {container: sorted(ports) for container, ports in expected.items()}


def test_user_override_keeps_every_line_and_gets_the_twin_ports(dev_settings, tmp_path):
    merged = spliced(dev_settings, USER_OVERRIDE, tmp_path)
    # Every line of the user's file is still there, in order, untouched: without
    # mailgate's blocks (destroy's view) the file is the user's again, byte for byte.
    assert Splicer(tmp_path / "host").remove(merged) == USER_OVERRIDE
    document = yaml.safe_load(merged)
    assert document["services"]["rspamd-mailcow"] == {"environment": ["MY_SETTING=1"]}
    # The HAPROXY example's mapping reads mailgate's variable: it publishes 10025 already.
    postfix_ports = document["services"]["postfix-mailcow"]["ports"]
    assert [p for p in postfix_ports if p.endswith(":10025")] == ["${SMTP_PORT_HAPROXY:-127.0.0.1:10025}:10025"]
    config = compose_config(merged, render_mailcow_conf(dev_settings), tmp_path)
    assert twin_mappings(config, dev_settings) == expected_twins(dev_settings)
    assert "127.0.0.1:2525:25/tcp" in published(config, "postfix-mailcow")


def test_merging_again_changes_nothing_and_follows_the_settings(dev_settings, dev_raw, tmp_path):
    once = spliced(dev_settings, USER_OVERRIDE, tmp_path)
    assert spliced(dev_settings, once, tmp_path) == once
    smtp_only = variant(dev_raw, services=["smtp", "submission"])
    fewer = spliced(smtp_only, once, tmp_path)
    assert "10993" not in fewer and "10587" in fewer
    assert fewer == spliced(smtp_only, USER_OVERRIDE, tmp_path)


@pytest.mark.parametrize("layout", [
    # four-space indentation, a comment between services
    "services:\n    # mine\n    postfix-mailcow:\n        environment:\n            - A=1\n"
    "    dovecot-mailcow:\n        ports:\n            - \"127.0.0.1:4190:4190\"\n",
    # lists written without indentation under their key, another top-level key after
    "services:\n  dovecot-mailcow:\n    ports:\n    - 127.0.0.1:2143:143\n"
    "    environment:\n    - B=2\nvolumes:\n  mine: {}\n",
    # no services: at all
    "volumes:\n  mine: {}\n",
    # an empty file, and none
    "", None,
], ids=["four-spaces", "indentless-lists", "no-services", "empty", "absent"])
def test_any_block_layout_gets_the_twin_ports_and_gives_them_back(dev_settings, tmp_path, layout):
    merged = spliced(dev_settings, layout, tmp_path)
    config = compose_config(merged, render_mailcow_conf(dev_settings), tmp_path)
    assert twin_mappings(config, dev_settings) == expected_twins(dev_settings)
    assert spliced(dev_settings, merged, tmp_path) == merged
    assert Splicer(tmp_path / "host").remove(merged) == (layout or "")
    if layout is None:
        assert merged == render_compose_override(dev_settings)  # what `render` shows


@pytest.mark.parametrize("override, message", [
    ("services:\n  postfix-mailcow:\n    ports:\n      - \"127.0.0.1:10025:10025\"\n",
     'line 4 publishes port 10025 of postfix-mailcow (- "127.0.0.1:10025:10025"), which mailgate publishes on the '
     "tailnet address: delete that line, or let it read ${SMTP_PORT_HAPROXY}"),
    ("services:\n  postfix-mailcow:\n    ports: [\"2525:25\"]\n",
     "line 3: the ports of postfix-mailcow must be a block list (one mapping per line)"),
    ("services: {rspamd-mailcow: {}}\n", "line 1: services: must be a block mapping"),
], ids=["another-mapping-of-a-twin-port", "flow-list", "flow-services"])
def test_an_override_mailgate_cannot_place_its_ports_in_is_refused_with_the_line(dev_settings, tmp_path,
                                                                                 override, message):
    result = Splicer(tmp_path / "host").compose(dev_settings, override)
    assert result.returncode == 4
    assert f"mailgate: docker-compose.override.yml: {message}" in result.stderr


# Runs in the peer namespace: connect to each twin port from each source address, all
# at once (a dropped SYN costs the whole timeout).
PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
home, sources, ports = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
def connect(source, port):
    try:
        socket.create_connection((home, port), timeout=2, source_address=(source, 0)).close()
        return "open"
    except ConnectionRefusedError:
        return "reset"
    except OSError as error:
        return type(error).__name__
pairs = [(source, port) for source in sources for port in ports]
with ThreadPoolExecutor(len(pairs)) as pool:
    answers = list(pool.map(lambda pair: connect(*pair), pairs))
print(json.dumps({f"{source}:{port}": answer for (source, port), answer in zip(pairs, answers)}))
"""
LISTEN = r"""
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
listeners = [socket.create_server((sys.argv[1], int(port)), family=family) for port in sys.argv[2:]]
print("ready", flush=True)
time.sleep(60)
"""


def probe_over_tailscale0(rules: str, chain: str, ip_version: int, home: str, peers: list[str],
                          ports: list[int]) -> dict[str, str]:
    """Home in one namespace, the tailnet in another, over a veth named tailscale0. Home
    accepts everything from tailscale0 first in INPUT and FORWARD (as tailscaled's ts-input
    and ts-forward do), has `rules` loaded and `chain` hooked first into raw PREROUTING,
    and listens on `ports` at `home`: what each peer address gets from each port."""
    tool, prefix = ("iptables", 32) if ip_version == 4 else ("ip6tables", 128)
    with Netns() as home_ns, Netns() as tailnet:
        subprocess.run(["ip", "link", "add", "tailscale0", "netns", home_ns.name, "type", "veth",
                        "peer", "peer0", "netns", tailnet.name], check=True)
        for ns, interface, addresses, far in ((home_ns, "tailscale0", [home], peers),
                                              (tailnet, "peer0", peers, [home])):
            for address in addresses:
                # nodad: usable at once, not after duplicate address detection.
                nodad = ["nodad"] if ip_version == 6 else []
                ns.run(["ip", "addr", "add", f"{address}/{prefix}", "dev", interface, *nodad]).check_returncode()
            for up in ("lo", interface):
                ns.run(["ip", "link", "set", up, "up"]).check_returncode()
            for address in far:
                ns.run(["ip", "route", "add", f"{address}/{prefix}", "dev", interface]).check_returncode()
        for builtin in ("INPUT", "FORWARD"):
            home_ns.run([tool, "-I", builtin, "1", "-i", "tailscale0", "-j", "ACCEPT"]).check_returncode()
        saved = iptables_restore(rules, home_ns, ip_version)
        assert "*raw" in saved and "*filter" in saved
        home_ns.run([tool, "-t", "raw", "-I", "PREROUTING", "-j", chain]).check_returncode()
        listener = subprocess.Popen(["ip", "netns", "exec", home_ns.name, sys.executable, "-c", LISTEN, home,
                                     *map(str, ports)], stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout.readline().strip() == "ready"
            probe = tailnet.run([sys.executable, "-c", PROBE, home, json.dumps(peers), json.dumps(ports)])
        finally:
            listener.kill()
            listener.wait()
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout)


def test_only_the_gateway_reaches_the_twin_ports_whatever_the_filter_table_accepts(dev_settings):
    """The raw chain drops the spoofer's SYN before the filter table's accept is consulted."""
    gateway, spoofer, home = "100.64.0.1", "100.64.0.3", dev_settings.home.tailnet_ip
    rules = render_home_firewall(dev_settings, Deployment(gateway_tailnet_ip=gateway))
    twin_ports = [s.home_port for s in catalogue.PROXY_SERVICES]
    seen = probe_over_tailscale0(rules, dev_settings.names.home_twin_chain, 4, home, [gateway, spoofer], twin_ports)
    enabled = {s.home_port for s in dev_settings.enabled_services}
    for port in twin_ports:
        assert seen[f"{spoofer}:{port}"] == "TimeoutError", port  # dropped: raw cannot reset
        assert seen[f"{gateway}:{port}"] == ("open" if port in enabled else "TimeoutError"), port


def test_no_tailnet_peer_reaches_a_twin_port_over_ipv6(dev_settings):
    """The IPv6 filter, loaded with ip6tables-restore: a peer's SYN to a twin port on an
    address of Tailscale's IPv6 range is dropped (nothing is let through there: the gateway
    comes over IPv4), while a port that is no twin still answers on the same address."""
    home, peer, not_a_twin = "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::3", 10026
    rules = render_home_firewall_v6(dev_settings)
    twin_ports = [s.home_port for s in catalogue.PROXY_SERVICES]
    seen = probe_over_tailscale0(rules, dev_settings.names.home_twin_chain, 6, home, [peer],
                                 [*twin_ports, not_a_twin])
    assert seen[f"{peer}:{not_a_twin}"] == "open"
    for port in twin_ports:
        assert seen[f"{peer}:{port}"] == "TimeoutError", port


def test_the_ipv6_filter_covers_tailscales_whole_ipv6_range_with_the_same_chain(dev_settings):
    rules = render_home_firewall_v6(dev_settings)
    assert [line for line in rules.splitlines() if line.startswith(("*", ":"))] == [
        "*raw", f":{dev_settings.names.home_twin_chain} - [0:0]"]
    [rule] = [line for line in rules.splitlines() if line.startswith("-A ")]
    assert f" -d {TAILNET_RANGES[1]} " in rule and rule.endswith(" -j DROP") and " -s " not in rule


def test_the_home_filter_is_ipv4_raw_only(dev_settings):
    """raw, so no filter-table rule of tailscaled or Docker is consulted first; IPv4, since
    the twin ports are published on the IPv4 tailnet address only."""
    rules = render_home_firewall(dev_settings, Deployment(gateway_tailnet_ip="100.64.0.1"))
    tables = [line for line in rules.splitlines() if line.startswith("*")]
    assert tables == ["*raw"]
    assert "REJECT" not in rules and "DOCKER-USER" not in rules
    assert f"-d {dev_settings.home.tailnet_ip}/32" in rules and ":" not in dev_settings.home.tailnet_ip


def exec_start_post(drop_in: str) -> list[str]:
    return [line.split("=", 1)[1] for line in drop_in.splitlines() if line.startswith("ExecStartPost=")]


def rendered_drop_in(settings, firewall_rules: str | None = None, firewall_rules_v6: str | None = None) -> str:
    names = settings.names
    return render_docker_after_tailscale(firewall_rules or names.home_firewall_path,
                                         firewall_rules_v6 or names.home_firewall_v6_path, names.home_twin_chain)


def test_docker_waits_for_tailscaled_and_reloads_both_filters(dev_settings, tmp_path):
    rules, rules_v6 = tmp_path / "home-firewall.rules", tmp_path / "home-firewall.rules.v6"
    rules.write_text(render_home_firewall(dev_settings, Deployment()))
    rules_v6.write_text(render_home_firewall_v6(dev_settings))
    text = rendered_drop_in(dev_settings, str(rules), str(rules_v6))
    assert "[Unit]\nAfter=tailscaled.service\nWants=tailscaled.service\n" in text
    commands = exec_start_post(text)
    assert len(commands) == 2  # one per IP version: a host without IPv6 still gets IPv4's
    argvs = [["/bin/sh", "-c", command.split("/bin/sh -c ", 1)[1].strip("'")] for command in commands]
    chain = dev_settings.names.home_twin_chain
    with Netns() as ns:
        # Docker 28's own raw rule for a container; the filter goes before it.
        ns.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-d", "198.51.100.2/32", "!", "-i", "br-x",
                "-j", "DROP"]).check_returncode()
        for _ in range(2):  # every docker start (each boot) runs them again
            for argv in argvs:
                ran = ns.run(argv)
                assert ran.returncode == 0, ran.stderr
        prerouting = ns.run(["iptables", "-t", "raw", "-S", "PREROUTING"]).stdout.splitlines()
        twin = ns.run(["iptables", "-t", "raw", "-S", chain]).stdout
        prerouting_v6 = ns.run(["ip6tables", "-t", "raw", "-S", "PREROUTING"]).stdout.splitlines()
        twin_v6 = ns.run(["ip6tables", "-t", "raw", "-S", chain]).stdout
    assert prerouting[1:] == [f"-A PREROUTING -j {chain}",
                              "-A PREROUTING -d 198.51.100.2/32 ! -i br-x -j DROP"]
    assert twin.count(" -j DROP") == 1 and twin.count(" -j RETURN") == 1
    assert prerouting_v6[1:] == [f"-A PREROUTING -j {chain}"]
    assert twin_v6.count(" -j DROP") == 1 and f"-d {TAILNET_RANGES[1]}" in twin_v6


def test_nothing_in_the_drop_in_can_stop_docker(dev_settings):
    """systemd stops a unit whose ExecStartPost fails unless the line starts with '-';
    iptables without -w fails at once while dockerd holds the xtables lock."""
    commands = exec_start_post(rendered_drop_in(dev_settings))
    assert commands
    for command in commands:
        assert command.startswith("-/"), command
        invocations = re.findall(r"\bip6?tables(?:-restore)?\b[^&|;)']*", command)
        assert invocations, command
        for invocation in invocations:
            assert " -w " in f"{invocation} ", invocation


def test_systemd_reads_the_drop_in_without_a_complaint(dev_settings, tmp_path):
    """`systemd-analyze verify` (offline, no systemd running) on a docker.service plus
    the drop-in at its real name: unknown keys, bad quoting or a missing program in an
    ExecStartPost without '-' are reported."""
    analyze = need_program("systemd-analyze")
    units = tmp_path / "units"
    drop_in = units / "docker.service.d" / dev_settings.names.docker_drop_in.rsplit("/", 1)[1]
    drop_in.parent.mkdir(parents=True)
    (units / "docker.service").write_text(
        "[Unit]\nDescription=Docker (stand-in)\n[Service]\nExecStart=/bin/true\n"
        "[Install]\nWantedBy=multi-user.target\n")
    verify = lambda: subprocess.run(  # noqa: E731
        [analyze, "verify", "--man=no", str(units / "docker.service")], capture_output=True, text=True,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}, timeout=60)
    # The check itself: an ExecStartPost of a missing program without '-' is refused.
    drop_in.write_text("[Service]\nExecStartPost=/nonexistent/iptables -w -L\n")
    refused = verify()
    assert refused.returncode != 0 and "/nonexistent/iptables" in refused.stderr
    drop_in.write_text(rendered_drop_in(dev_settings))
    accepted = verify()
    assert (accepted.returncode, accepted.stderr) == (0, "")
