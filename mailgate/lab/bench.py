"""`lab bench`: what the gateway costs, measured side by side in one run.

Two shared cores run every namespace, so absolute numbers are noisy; the table reports
medians over rounds and ratios between paths measured in the same run. Every loop is
bounded by a message or connection count.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mailgate.lab import (
    GATEWAY, HOME_TAILNET, HOME_UNDERLAY, INET, MAIL_PASSWORD, MAIL_UID, MAIL_USER, PUBLIC_IP, PUBLIC_IP6, SPOOF,
)
from mailgate.lab import bans
from mailgate.lab.checks import probe
from mailgate.lab.system import LabError, recorded_pids, run
from mailgate.renderers.bans import NFT_TABLE

# (label, namespace the client runs in, address, port)
SMTP_PATHS = (
    ("via gateway (nginx + PROXY + WireGuard)", INET, PUBLIC_IP, 25),
    # From the second tailnet peer: the tailnet policy keeps the gateway off plain ports,
    # and the twins need a PROXY header smtp-source cannot send. Same wireguard-go hop.
    ("tunnel only (WireGuard, no nginx)", SPOOF, HOME_TAILNET, 25),
    # The underlay veth between the gateway and home namespaces: routed, no tunnel, no nginx.
    ("direct (routed, no tunnel, no nginx)", GATEWAY, HOME_UNDERLAY, 25),
)
# The same gateway path from the IPv6 client: nginx's IPv6 listener, PROXY TCP6, the same tunnel.
IPV6_PATH = ("via gateway from an IPv6 client", INET, f"[{PUBLIC_IP6}]", 25)
# A whole message fetched over IMAPS: nginx passes TLS through, so this is the stream's cost.
BULK_PATHS = (
    ("via gateway", INET, PUBLIC_IP, 993),
    ("tunnel only", SPOOF, HOME_TAILNET, 993),
    ("direct", GATEWAY, HOME_UNDERLAY, 993),
)
BULK_MB = 50
BULK_SUBJECT = "bench-bulk"
PER_CONNECTION = 10
BANNER_PATHS = (
    ("via gateway", INET, PUBLIC_IP, 143),
    ("tunnel only", SPOOF, HOME_TAILNET, 143),
    ("direct", GATEWAY, HOME_UNDERLAY, 143),
)


def smtp_rate(namespace: str, address: str, port: int, messages: int, per_connection: int = 1) -> float:
    """msg/s from 10 parallel sessions; `per_connection` > 1: each session sends that many
    messages before it disconnects (smtp-source -d, with messages = 10 x per_connection)."""
    reuse = ["-d"] if per_connection > 1 else []
    if per_connection > 1:
        messages = 10 * per_connection
    start = time.perf_counter()
    run(["smtp-source", "-s", "10", *reuse, "-m", str(messages), "-l", "1024", "-f", "bench@example.net",
         "-t", "sink@discard.example", f"{address}:{port}"], namespace, timeout=300)
    return messages / (time.perf_counter() - start)


def put_bulk_message(megabytes: int) -> None:
    """A message of `megabytes` MB straight into the lab mailbox (Maildir new/), as if delivered."""
    from mailgate.lab.daemons import MAIL_DIR

    local, domain = MAIL_USER.split("@")
    new = MAIL_DIR / domain / local / "new"
    new.mkdir(parents=True, exist_ok=True)
    line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = line * (megabytes * 1024 * 1024 // len(line))
    message = new / f"{int(time.time())}.bench.lab"
    message.write_bytes(f"From: bench@example.net\r\nTo: {MAIL_USER}\r\nSubject: {BULK_SUBJECT}\r\n\r\n".encode() + body)
    for path in (new.parent.parent, new.parent, new, message):
        os.chown(path, MAIL_UID, MAIL_UID)


def bulk_rate(namespace: str, address: str, port: int) -> float:
    result = probe(namespace, "bulk", address, port, MAIL_USER, MAIL_PASSWORD, BULK_SUBJECT)
    if not result.get("bytes"):
        raise LabError(f"bulk fetch failed: {result}")
    return result["bytes"] / 1e6 / result["seconds"]


def rss_kb(pid: int) -> int:
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return 0
    return int(fields.get("VmRSS", "0 kB").split()[0])


def nginx_rss_kb() -> int:
    master = recorded_pids()["nginx"]
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(master) or status.parent.name == str(master):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def tunnel_rss_kb() -> int:
    """The gateway's wireguard-go: the lab's stand-in for tailscaled (which also runs
    WireGuard in userspace on a gateway, plus its control client)."""
    return rss_kb(recorded_pids()[f"wireguard-{GATEWAY}"])


def hold_idle(count: int, seconds: float) -> dict:
    before, tunnel_before = nginx_rss_kb(), tunnel_rss_kb()
    argv = ["ip", "netns", "exec", INET, sys.executable, "-m", "mailgate.lab.probe", "hold",
            PUBLIC_IP, "143", str(count), str(seconds)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        opened = json.loads(process.stdout.readline())
        during, tunnel_during = nginx_rss_kb(), tunnel_rss_kb()
        final = json.loads(process.stdout.readline())
    finally:
        process.wait(timeout=seconds + 120)
    return {**final, "opened": opened["opened"], "rss_before_kb": before, "rss_during_kb": during,
            "tunnel_before_kb": tunnel_before, "tunnel_during_kb": tunnel_during}


BANNED = 10_000


def ban_list(count: int) -> list[str]:
    """`count` entries that stay separate networks (no two adjacent, so none merge), in
    the documentation ranges outside the stack's admin networks: the odd IPv4 addresses of
    192.0.2.0/24 and 203.0.113.0/24 (not the gateway's 203.0.113.10, which the program
    refuses), then every other /64 of 2001:db8:4000::/36."""
    v4 = [f"{prefix}.{host}" for prefix in ("192.0.2", "203.0.113") for host in range(1, 256, 2)]
    v6 = [f"2001:db8:{0x4000 + i // 4096:x}:{(i % 4096) * 2:x}::/64" for i in range(max(0, count - len(v4)))]
    return (v4 + v6)[:count]


def ipv4_set(count: int) -> str:
    """nft input filling banned4 with `count` separate IPv4 addresses (every other one
    from 100.100.0.0). The program never bans the tailnet range, and the documentation
    ranges hold too few: only nft can put 10,000 IPv4 entries in the set within the lab's
    address rules. No lab host has one of these addresses."""
    elements = ", ".join(f"100.100.{(2 * i) // 256}.{(2 * i) % 256}" for i in range(count))
    add = f"add element inet {NFT_TABLE} banned4 {{ {elements} }}\n" if count else ""
    return f"flush set inet {NFT_TABLE} banned4\n{add}"


def load_times(runs: int) -> dict:
    """banlist.py loading a BANNED-entry list served at home: once into an empty set,
    then `runs` reloads of the same list (seconds each, the whole run)."""
    bans.set_blacklist(ban_list(BANNED))
    try:
        fetcher = bans.Fetcher()
        first = fetcher.run_once()
        again = [fetcher.run_once() for _ in range(runs)]
    finally:
        bans.set_blacklist([])
    for ran in (first, *again):
        if ran.returncode != 0:
            raise LabError(f"banlist.py failed: {ran.said}")
    return {"first": first.ended - first.started, "again": [r.ended - r.started for r in again],
            "said": first.said, "networks": len(bans.gateway_set() or [])}


def bench(rounds: int = 3, messages: int = 200, samples: int = 200, idle: int = 10_000,
          bulk_mb: int = BULK_MB) -> list[str]:
    for _, namespace, address, port in SMTP_PATHS:  # postscreen remembers a client after one pass
        smtp_rate(namespace, address, port, 5)
    smtp_rate(IPV6_PATH[1], IPV6_PATH[2], IPV6_PATH[3], 5)
    put_bulk_message(bulk_mb)
    loaded = load_times(rounds)
    fetcher = bans.Fetcher()  # the list served now is empty: its run leaves the rule and empty sets
    banned_label = f"via gateway, {BANNED:,} IPv4 networks banned"
    labels = [*(label for label, *_ in SMTP_PATHS), "via gateway, bans on, 0 banned", banned_label]
    rates: dict[str, list[float]] = {label: [] for label in labels}
    reused: dict[str, list[float]] = {label: [] for label, *_ in SMTP_PATHS}
    ipv6: list[float] = []
    bulk: dict[str, list[float]] = {label: [] for label, *_ in BULK_PATHS}
    for _ in range(rounds):  # interleaved, so drift hits every path alike
        run(["nft", "delete", "table", "inet", NFT_TABLE], GATEWAY, check=False)
        for label, namespace, address, port in SMTP_PATHS:
            rates[label].append(smtp_rate(namespace, address, port, messages))
        ipv6.append(smtp_rate(IPV6_PATH[1], IPV6_PATH[2], IPV6_PATH[3], messages))
        for label, namespace, address, port in SMTP_PATHS:
            reused[label].append(smtp_rate(namespace, address, port, messages, PER_CONNECTION))
        for label, namespace, address, port in BULK_PATHS:
            bulk[label].append(bulk_rate(namespace, address, port))
        ran = fetcher.run_once()
        if ran.returncode != 0 or bans.gateway_set() != []:
            raise LabError(f"banlist.py did not load an empty set: {ran.said}")
        rates[labels[-2]].append(smtp_rate(INET, PUBLIC_IP, 25, messages))
        run(["nft", "-f", "-"], GATEWAY, stdin=ipv4_set(BANNED))
        rates[banned_label].append(smtp_rate(INET, PUBLIC_IP, 25, messages))
    # Latency medians are steadier than rates on shared cores: the same pair, interleaved.
    ban_latency: dict[str, list[float]] = {label: [] for label in labels[-2:]}
    for _ in range(rounds):
        for count, label in ((0, labels[-2]), (BANNED, banned_label)):
            run(["nft", "-f", "-"], GATEWAY, stdin=ipv4_set(count))
            result = probe(INET, "latency", PUBLIC_IP, 143, samples)
            if "samples" not in result:
                raise LabError(f"latency probe failed: {result}")
            ban_latency[label] += result["samples"]
    run(["nft", "delete", "table", "inet", NFT_TABLE], GATEWAY)
    latency: dict[str, list[float]] = {}
    for label, namespace, address, port in BANNER_PATHS:
        result = probe(namespace, "latency", address, port, samples)
        if "samples" not in result:
            raise LabError(f"latency probe failed: {result}")
        latency[label] = sorted(result["samples"])
    held = hold_idle(idle, 5)

    gateway, tunnel, direct = (statistics.median(rates[label]) for label, *_ in SMTP_PATHS)
    lines = [
        f"SMTP, smtp-source -s 10 -m {messages} -l 1024, one connection per message, "
        f"{rounds} rounds, median msg/s:",
        "| path | msg/s | vs direct | vs tunnel only |",
        "|---|---|---|---|",
    ]
    for label, *_ in SMTP_PATHS:
        value = statistics.median(rates[label])
        lines.append(f"| {label} | {value:.0f} | {value / direct:.2f} | {value / tunnel:.2f} |")
    lines += ["", f"The same, {PER_CONNECTION} messages per connection (smtp-source -d, 10 sessions), "
              "median msg/s:", "| path | msg/s | vs direct | vs tunnel only |", "|---|---|---|---|"]
    r_gateway, r_tunnel, r_direct = (statistics.median(reused[label]) for label, *_ in SMTP_PATHS)
    for label, *_ in SMTP_PATHS:
        value = statistics.median(reused[label])
        lines.append(f"| {label} | {value:.0f} | {value / r_direct:.2f} | {value / r_tunnel:.2f} |")
    v6 = statistics.median(ipv6)
    lines += ["", f"IPv6 client via the gateway (nginx's IPv6 listener, PROXY TCP6, the same IPv4 tunnel), "
              f"one connection per message: {v6:.0f} msg/s, {v6 / gateway:.2f} of the IPv4 client's "
              f"{gateway:.0f} (same rounds)."]
    b_tunnel, b_direct = (statistics.median(bulk[label]) for label, *_ in BULK_PATHS[1:])
    lines += ["", f"Bulk: one {bulk_mb} MB message fetched over IMAPS (FETCH BODY.PEEK[], timed from the "
              f"command to the last byte), {rounds} rounds, median MB/s:",
              "| path | MB/s | vs direct | vs tunnel only |", "|---|---|---|---|"]
    for label, *_ in BULK_PATHS:
        value = statistics.median(bulk[label])
        lines.append(f"| {label} | {value:.1f} | {value / b_direct:.2f} | {value / b_tunnel:.2f} |")
    without, with_bans = (statistics.median(rates[label]) for label in labels[-2:])
    lines += ["", f"The gateway's ban set (nft, table inet {NFT_TABLE}): msg/s via the gateway (same rounds), "
              f"and connect + IMAP banner via the gateway ({rounds} x {samples} connections, interleaved):",
              "| ban set | msg/s | vs no table | median ms | p99 ms |", "|---|---|---|---|---|",
              f"| no table (first row above) | {gateway:.0f} | 1.00 | | |"]
    for label in labels[-2:]:
        value, samples_ms = statistics.median(rates[label]), sorted(ban_latency[label])
        p99 = samples_ms[min(len(samples_ms) - 1, int(len(samples_ms) * 0.99))]
        lines.append(f"| {label} | {value:.0f} | {value / gateway:.2f} | "
                     f"{statistics.median(samples_ms) * 1000:.2f} | {p99 * 1000:.2f} |")
    lines.append(f"With {BANNED:,} banned vs 0 banned: {with_bans / without:.2f} of the rate, "
                 f"{statistics.median(ban_latency[banned_label]) / statistics.median(ban_latency[labels[-2]]):.2f} "
                 "of the median latency.")
    lines += ["", f"banlist.py loading a {BANNED:,}-entry list from home (fetch over the tunnel, checks, "
              f"one nft transaction; the whole run): {loaded['first']:.2f} s into an empty set, "
              f"{statistics.median(loaded['again']):.2f} s median over {len(loaded['again'])} reloads; "
              f"{loaded['networks']:,} networks in the set. It said: {loaded['said']}"]
    lines += ["", f"Connect + IMAP banner, {samples} connections each:",
              "| path | median ms | p99 ms |", "|---|---|---|"]
    for label, values in latency.items():
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        lines.append(f"| {label} | {statistics.median(values) * 1000:.2f} | {p99 * 1000:.2f} |")
    per_connection = (held["rss_during_kb"] - held["rss_before_kb"]) / max(held["opened"], 1)
    lines += ["", f"Idle IMAP sessions through the gateway: {held['opened']} opened, "
              f"{held['still_open']} still open after 5 s idle; nginx RSS {held['rss_before_kb']} kB "
              f"-> {held['rss_during_kb']} kB, about {per_connection:.1f} kB per session; wireguard-go "
              f"(tailscaled's stand-in) {held['tunnel_before_kb']} kB -> {held['tunnel_during_kb']} kB; "
              f"the two together {held['rss_during_kb'] + held['tunnel_during_kb']} kB while holding them."]
    return lines
