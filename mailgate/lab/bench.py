"""`lab bench`: what the gateway costs, measured side by side in one run.

Two shared cores run every namespace, so absolute numbers are noisy; the table reports
medians over rounds and ratios between paths measured in the same run. Every loop is
bounded by a message or connection count.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mailgate.lab import GATEWAY, HOME_TAILNET, HOME_UNDERLAY, INET, PUBLIC_IP, SPOOF
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
BANNER_PATHS = (
    ("via gateway", INET, PUBLIC_IP, 143),
    ("tunnel only", SPOOF, HOME_TAILNET, 143),
    ("direct", GATEWAY, HOME_UNDERLAY, 143),
)


def smtp_rate(namespace: str, address: str, port: int, messages: int) -> float:
    start = time.perf_counter()
    run(["smtp-source", "-s", "10", "-m", str(messages), "-l", "1024", "-f", "bench@example.net",
         "-t", "sink@discard.example", f"{address}:{port}"], namespace, timeout=300)
    return messages / (time.perf_counter() - start)


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


def hold_idle(count: int, seconds: float) -> dict:
    before = nginx_rss_kb()
    argv = ["ip", "netns", "exec", INET, sys.executable, "-m", "mailgate.lab.probe", "hold",
            PUBLIC_IP, "143", str(count), str(seconds)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        opened = json.loads(process.stdout.readline())
        during = nginx_rss_kb()
        final = json.loads(process.stdout.readline())
    finally:
        process.wait(timeout=seconds + 120)
    return {**final, "opened": opened["opened"], "rss_before_kb": before, "rss_during_kb": during}


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


def bench(rounds: int = 3, messages: int = 200, samples: int = 200, idle: int = 1000) -> list[str]:
    for _, namespace, address, port in SMTP_PATHS:  # postscreen remembers a client after one pass
        smtp_rate(namespace, address, port, 5)
    loaded = load_times(rounds)
    fetcher = bans.Fetcher()  # the list served now is empty: its run leaves the rule and empty sets
    banned_label = f"via gateway, {BANNED:,} IPv4 networks banned"
    labels = [*(label for label, *_ in SMTP_PATHS), "via gateway, bans on, 0 banned", banned_label]
    rates: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(rounds):  # interleaved, so drift hits every path alike
        run(["nft", "delete", "table", "inet", NFT_TABLE], GATEWAY, check=False)
        for label, namespace, address, port in SMTP_PATHS:
            rates[label].append(smtp_rate(namespace, address, port, messages))
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
              f"-> {held['rss_during_kb']} kB, about {per_connection:.1f} kB per session."]
    return lines
