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
from mailgate.lab.checks import probe
from mailgate.lab.system import LabError, recorded_pids, run

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


def bench(rounds: int = 3, messages: int = 200, samples: int = 200, idle: int = 1000) -> list[str]:
    for _, namespace, address, port in SMTP_PATHS:  # postscreen remembers a client after one pass
        smtp_rate(namespace, address, port, 5)
    rates: dict[str, list[float]] = {label: [] for label, *_ in SMTP_PATHS}
    for _ in range(rounds):  # interleaved, so drift hits every path alike
        for label, namespace, address, port in SMTP_PATHS:
            rates[label].append(smtp_rate(namespace, address, port, messages))
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
