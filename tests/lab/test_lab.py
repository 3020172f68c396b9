"""The lab end to end: up, check, down; and each broken promise makes check fail."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailgate.lab import NAMESPACES, STATE, lab
from mailgate import catalogue
from mailgate.lab import GATEWAY_TAILNET, HOME
from mailgate.lab.checks import (
    filter_holds_after_restarts, forged_proxy_refused, plain_ports_closed_to_the_tunnel, real_client_address,
)
from mailgate.lab.system import run
from mailgate.lab.system import alive, exclusive, recorded_pids
from tests.conftest import ROOT
from tests.lab.machine import need_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", autouse=True)
def lab_machine():
    need_lab()
    with exclusive():  # another run of these tests on this machine waits instead of clobbering
        yield
        lab.down()


def namespaces_left() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [name for name in NAMESPACES if name in listed]


def failed(results) -> dict[str, str]:
    return {r.name: r.detail for r in results if not r.passed}


def test_up_check_down_through_the_command_line():
    def mailgate(*args):
        return subprocess.run([sys.executable, "-m", "mailgate", "lab", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    # The short IMAP timeout lets check show both sides of it within seconds.
    up = mailgate("up", "--imap-timeout", "10")
    assert up.returncode == 0, up.stderr
    assert mailgate("up", "--imap-timeout", "10").returncode == 0  # idempotent: a second up rebuilds cleanly
    pids = recorded_pids()
    assert len(pids) == 12 and all(alive(pid) for pid in pids.values())  # gateway-other-services too
    check = mailgate("check")
    print(check.stdout)
    assert check.returncode == 0, check.stdout
    assert check.stdout.splitlines()[-1] == "54 passed, 0 failed"
    # Bans: fail2ban at home bans, the gateway drops, failures keep the set, an unban lifts.
    assert "PASS  then the gateway drops its SYNs to every public port within one interval" in check.stdout
    assert "PASS  home unreachable (tunnel down): the gateway keeps its last good set" in check.stdout
    assert "PASS  `fail2ban-client unban` at home lets the attacker in again" in check.stdout
    assert "PASS  a list with 0.0.0.0/0, ::/0, 198.51.100.0/24" in check.stdout
    for end in ("the gateway's", "home's"):  # the watcher pair, against the lab's relay
        assert f"): {end} watcher sends one alert, then one recovery, through the relay: relay saw 1 alert(s), 1 recovery(ies)" in check.stdout
        assert f"PASS  tunnel flapping (3 outages, each seen at 2 runs, threshold 5 s): {end} watcher sends nothing" in check.stdout
    assert "PASS  after tailscaled and Docker restarts, a second tailnet peer gets no banner from any twin" in check.stdout
    assert "PASS  IMAP session idle 8 s through the gateway stays open" in check.stdout
    assert "PASS  IMAP session idle 14 s is cut at the configured 10 s" in check.stdout
    # The short variant picks its own idle times; a contradicting --imap-idle is refused.
    refused = mailgate("check", "--imap-idle", "30")
    assert refused.returncode == 1 and "--imap-idle does not apply" in refused.stderr
    down = mailgate("down")
    assert down.returncode == 0
    assert namespaces_left() == []
    assert not any(alive(pid) for pid in pids.values())
    assert not STATE.exists()
    assert "the lab is not up" in mailgate("check").stderr


def test_without_the_home_firewall_forged_proxy_headers_get_through(dev_settings):
    lab.up(dev_settings, home_firewall=False)
    settings = lab.lab_settings(dev_settings)
    try:
        broken = failed(real_client_address(settings) + forged_proxy_refused(settings))
    finally:
        lab.down()
    assert {name for name in broken if name.startswith("forged PROXY header refused")} == {
        f"forged PROXY header refused on twin {port}" for port in (10025, 10465, 10587, 10143, 10993, 14190)
    }
    assert all(name.startswith("forged PROXY") for name in broken), broken


def docker_user_filter(settings) -> str:
    """The home filter mailgate rendered before it moved to raw: a filter-table chain,
    hooked into Docker's DOCKER-USER."""
    chain, home = settings.names.home_twin_chain, settings.home.tailnet_ip
    enabled = ",".join(str(s.home_port) for s in settings.enabled_services if s.proxy_protocol)
    every = ",".join(str(s.home_port) for s in catalogue.PROXY_SERVICES)
    return "\n".join([
        "*filter", f":{chain} - [0:0]",
        f"-A {chain} -s {GATEWAY_TAILNET}/32 -p tcp -m conntrack --ctorigdst {home}/32 "
        f"-m multiport --dports {enabled} -j RETURN",
        f"-A {chain} -p tcp -m conntrack --ctorigdst {home}/32 -m multiport --dports {every} "
        "-j REJECT --reject-with tcp-reset",
        "COMMIT", ""])


def test_a_filter_behind_docker_user_is_overtaken_by_tailscaled(dev_settings):
    # tailscaled's ts-forward, first in FORWARD, accepts whatever arrives on tailscale0
    # before Docker's FORWARD jumps reach DOCKER-USER: the spoofer gets its banners.
    lab.up(dev_settings, home_firewall=False)
    settings = lab.lab_settings(dev_settings)
    try:
        run(["iptables-restore", "--noflush"], HOME, stdin=docker_user_filter(settings))
        run(["iptables", "-I", "DOCKER-USER", "-j", settings.names.home_twin_chain], HOME)
        forged = forged_proxy_refused(settings)
        spoofer, gateway = filter_holds_after_restarts(settings)
    finally:
        lab.down()
    assert forged and not any(result.passed for result in forged), [r.line() for r in forged]
    assert not spoofer.passed and "open, banner 220" in spoofer.detail, spoofer.detail
    assert gateway.passed, gateway.detail


def test_without_proxy_protocol_the_real_address_check_fails(dev_settings):
    # Port 25 forwarded without the PROXY header: postscreen on the twin cannot learn
    # the client, so the check must find neither 198.51.100.7 nor the IPv6 client there.
    def no_proxy_on_smtp(text: str) -> str:
        head, _, rest = text.partition("proxy_pass 100.64.0.2:10025;")
        return head + "proxy_pass 100.64.0.2:10025;" + rest.replace("proxy_protocol on;", "proxy_protocol off;", 1)

    lab.up(dev_settings, nginx_edit=no_proxy_on_smtp)
    try:
        broken = failed(real_client_address(lab.lab_settings(dev_settings)))
    finally:
        lab.down()
    assert "real client address on smtp (25)" in broken
    assert "real client address over IPv6 on smtp (25)" in broken  # PROXY TCP6 missing too
    assert "real client address on imaps (993)" not in broken
    assert "real client address over IPv6 on imaps (993)" not in broken
    assert namespaces_left() == []


def perf_table(lines: list[str], unit: str) -> dict[str, list[str]]:
    """The rows of the bench's perf table in `unit`: part -> [via gateway, tunnel only]."""
    start = next(i for i, row in enumerate(lines) if row.startswith(f"| part of the path ({unit})"))
    rows = {}
    for row in lines[start + 2:]:
        if not row.startswith("| "):
            break
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        rows[cells[0]] = cells[1:]
    return rows


def test_bench_measures_every_path_and_holds_the_idle_sessions(dev_settings):
    import os

    from mailgate.lab.bench import bench
    from mailgate.lab.shaping import UPLINK_MBIT

    lab.up(dev_settings)
    try:
        lines = bench(rounds=1, messages=100, samples=20, idle=200, bulk_mb=5)
        qdiscs = run(["tc", "qdisc", "show"], HOME).stdout
        home_tunnel_cpus = os.sched_getaffinity(recorded_pids()[f"wireguard-{HOME}"])
    finally:
        lab.down()
    table = "\n".join(lines)
    assert "| via gateway (nginx + PROXY + WireGuard) |" in table and "| tunnel only |" in table
    assert "| via gateway, 10,000 IPv4 networks banned |" in table and "| via gateway, bans on, 0 banned |" in table
    assert "networks banned (+" in table  # banlist.py's own line from loading the 10,000-entry list
    assert "200 opened, 200 still open after 5 s idle" in table
    assert "10 messages per connection" in table and "IPv6 client via the gateway" in table
    assert "Bulk: one 5 MB message" in table and table.count("MB/s") >= 1
    # perf's account, per SMTP message and per MB fetched: nginx works only on the gateway's
    # path, the mail server on both, and each path has its own far tunnel end.
    for unit in ("microseconds per message", "ms per MB"):
        spent = {part: [float(value) for value in values] for part, values in perf_table(lines, unit).items()}
        via_gateway, tunnel_only = 0, 1
        for part, path in (("nginx", via_gateway), ("wireguard-go, the gateway's end", via_gateway),
                           ("wireguard-go, the peer's end", tunnel_only)):
            # Busy on its own path; on the other at most a stray sample (the tunnel's keepalives).
            assert spent[part][path] > 0 and spent[part][1 - path] < spent[part][path] / 2, (unit, part, spent)
        mail_server = spent["the mail server at home (Postfix, Dovecot)"]
        assert mail_server[via_gateway] > 0 and mail_server[tunnel_only] > 0, (unit, spent)
    own_core = [[cell.strip() for cell in row.split("|")[1:-1]] for row in lines
                if row.startswith(("| SMTP", "| bulk IMAPS"))]
    assert [int(row[1]) for row in own_core] == [1, 1, 1, 3, 1], own_core  # pairs: IPv6 gets three times
    assert all(float(row[2]) > 0 for row in own_core), own_core
    # The shaped fetch really was held to the home line's speed (unshaped: about 55 MB/s
    # here), and nothing stays shaped or pinned afterwards.
    shaped = float(own_core[-1][0].split("via gateway ")[1].split(" MB/s")[0])
    assert shaped < 1.5 * UPLINK_MBIT / 8, own_core[-1]
    assert "tbf" not in qdiscs, qdiscs
    assert home_tunnel_cpus == os.sched_getaffinity(0)


def test_tune_loads_each_setting_and_leaves_the_rendered_config(dev_settings):
    from mailgate.lab import GATEWAY, INET, PUBLIC_IP
    from mailgate.lab.checks import probe
    from mailgate.lab.daemons import NGINX_CONF
    from mailgate.lab.system import LabError
    from mailgate.lab.tune import BASELINE, VARIANTS, Variant, tune

    default = next(v for v in VARIANTS if v.name.startswith("proxy_buffer_size 16k"))
    buffers = next(v for v in VARIANTS if "rcvbuf=256k" in v.name)
    broken = Variant("proxy_protocol maybe", lambda text: text.replace("proxy_protocol on;", "proxy_protocol maybe;"))
    lab.up(dev_settings)
    try:
        rendered = NGINX_CONF.read_text()
        lines = tune(rounds=1, messages=20, idle=300, bulk_mb=2, variants=(BASELINE, default, buffers))
        assert NGINX_CONF.read_text() == rendered
        # A listen option tried once is gone afterwards (a reload would have kept it on the socket).
        listeners = run(["ss", "-ltmnH", "sport", "= :25"], GATEWAY).stdout
        assert "rb524288" not in listeners and "rb" in listeners, listeners
        memory = {row.split("|")[1].strip(): float(row.split("|")[8]) for row in lines if row.startswith("| ")
                  and not row.startswith("| setting")}
        # The module's 16k buffers really were in force: idle sessions cost much more.
        assert memory[default.name] > 1.5 * memory[BASELINE.name], memory
        with pytest.raises(LabError, match="nginx refuses 'proxy_protocol maybe'"):
            tune(rounds=1, messages=20, idle=10, bulk_mb=2, variants=(BASELINE, broken))
        assert NGINX_CONF.read_text() == rendered
        # And nginx still proxies, with the rendered config.
        banner = probe(INET, "banners", PUBLIC_IP, "143").get("143", "")
        assert banner.startswith("* OK"), banner
    finally:
        lab.down()


def test_without_the_tailnet_policy_the_gateway_reaches_the_plain_ports(dev_settings):
    lab.up(dev_settings, tailnet_policy=False)
    try:
        result = plain_ports_closed_to_the_tunnel(lab.lab_settings(dev_settings))
    finally:
        lab.down()
    assert not result.passed and "'25': 'open'" in result.detail, result.detail
    assert "'10025': 'open'" in result.detail  # the twins still answer: only the policy is gone


def test_when_nginx_ignores_the_configured_imap_timeout_the_idle_check_fails(dev_settings):
    # Rendered with a 10 s IMAP timeout, then the IMAP servers' proxy_timeout lines are
    # dropped, so nginx's 600 s default governs: the session that should be cut survives.
    from mailgate.lab.checks import IdleImap

    def default_timeout_for_imap(text: str) -> str:
        assert text.count("proxy_timeout 10s;") == 3  # imap, imaps, managesieve
        return text.replace("        proxy_timeout 10s;\n", "")

    lab.up(dev_settings, imap_timeout=10, nginx_edit=default_timeout_for_imap)
    sessions = IdleImap()
    try:
        sessions.start()
        survives, cut = sessions.results()
    finally:
        sessions.stop()
        lab.down()
    assert survives.passed, survives.detail
    assert not cut.passed and "'open': True" in cut.detail, cut.detail


def test_a_gateway_watcher_with_the_wrong_relay_key_gets_no_alert_through(dev_settings):
    # The relay takes the relay password and the gateway's own alert key; with any other
    # key the gateway's alert and recovery never reach it, and the outage check says so.
    from mailgate.lab.watchers import outage_alerts_once_then_recovers

    lab.up(dev_settings)
    try:
        gateway, home = outage_alerts_once_then_recovers(lab.lab_settings(dev_settings), gateway_key="not-the-alert-key")
    finally:
        lab.down()
    assert not gateway.passed and "relay saw 0 alert(s), 0 recovery(ies) from 192.0.2.13" in gateway.detail, gateway.detail
    assert "authentication failed" in gateway.detail, gateway.detail
    assert home.passed, home.detail


def test_without_the_gateways_drop_rule_a_banned_attacker_gets_through(dev_settings):
    # banlist.py's nft input without its rules: fail2ban bans at home and the gateway's set
    # holds the attacker, but nothing drops its packets, and the check says so.
    from mailgate.lab import bans
    from mailgate.lab.ban_checks import attacker_is_banned

    lab.up(dev_settings)
    no_rules = STATE / "nft-without-rules"
    no_rules.write_text("#!/bin/sh\ngrep -v '^add rule' | /usr/sbin/nft \"$@\"\n")
    no_rules.chmod(0o755)
    try:
        with bans.fetching(lambda config: {**config, "nft": str(no_rules)}) as fetcher:
            at_home, at_gateway, bystander = attacker_is_banned(lab.lab_settings(dev_settings), fetcher, "imap")
    finally:
        lab.down()
    assert at_home.passed, at_home.detail
    assert not at_gateway.passed and "s: True;" in at_gateway.detail, at_gateway.detail
    assert "'25': 'open'" in at_gateway.detail and "'993': 'open'" in at_gateway.detail, at_gateway.detail
    assert bystander.passed, bystander.detail


def test_a_gateway_ipv6_firewall_that_lets_more_in_fails_its_check(dev_settings):
    """One more port accepted in MAILGATE-IN (say a hand-added rule): the IPv6 firewall
    check sees the host's service on it from outside and fails."""
    from mailgate.lab import GATEWAY
    from mailgate.lab.checks import gateway_ipv6_firewall_opens_exactly_the_catalogue
    from mailgate.lab.daemons import OTHER_SERVICE_PORT
    from mailgate.lab.system import run
    from mailgate.renderers.cloud_init import GATEWAY_INPUT_CHAIN

    lab.up(dev_settings)
    try:
        settings = lab.lab_settings(dev_settings)
        assert gateway_ipv6_firewall_opens_exactly_the_catalogue(settings).passed
        run(["ip6tables", "-A", GATEWAY_INPUT_CHAIN, "-p", "tcp", "--dport", str(OTHER_SERVICE_PORT),
             "-j", "ACCEPT"], GATEWAY)
        broken = gateway_ipv6_firewall_opens_exactly_the_catalogue(settings)
    finally:
        lab.down()
    assert not broken.passed and f"'{OTHER_SERVICE_PORT}': 'open'" in broken.detail, broken.detail
