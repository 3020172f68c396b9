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
from collections.abc import Callable
from pathlib import Path

from mailgate.lab import (
    GATEWAY, HOME_TAILNET, HOME_UNDERLAY, INET, MAIL_PASSWORD, MAIL_UID, MAIL_USER, PUBLIC_IP, PUBLIC_IP6, SPOOF,
)
from mailgate.lab import bans
from mailgate.lab.checks import probe
from mailgate.lab.daemons import nginx_workers
from mailgate.lab.perf import PERF_HZ, cpu_account
from mailgate.lab.shaping import UPLINK_MBIT, home_on_its_own_core, home_uplink
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
    """msg/s from 10 parallel sessions. `per_connection` > 1: each session sends that many
    messages over one connection (smtp-source -d, which sends all of a run's messages over
    its sessions), in runs of 10 x per_connection messages: as many as fit in `messages`,
    at least one."""
    batch = 10 * per_connection if per_connection > 1 else messages
    runs = max(1, messages // batch)
    reuse = ["-d"] if per_connection > 1 else []
    start = time.perf_counter()
    for _ in range(runs):
        run(["smtp-source", "-s", "10", *reuse, "-m", str(batch), "-l", "1024", "-f", "bench@example.net",
             "-t", "sink@discard.example", f"{address}:{port}"], namespace, timeout=300)
    return runs * batch / (time.perf_counter() - start)


def warm_up(paths) -> None:
    """One message from each path's client first: postscreen remembers a client after one pass."""
    for _, namespace, address, port in paths:
        smtp_rate(namespace, address, port, 5)


def put_bulk_message(megabytes: int) -> None:
    """A message of `megabytes` MB straight into the lab mailbox (Maildir new/), as if delivered."""
    from mailgate.lab.daemons import MAIL_DIR

    local, domain = MAIL_USER.split("@")
    new = MAIL_DIR / domain / local / "new"
    new.mkdir(parents=True, exist_ok=True)
    for earlier in new.parent.glob("*/*.bench.lab*"):  # one bench message, or the fetch may pick another
        earlier.unlink()
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


def require_lab() -> None:
    if "nginx" not in recorded_pids() or not nginx_workers():
        raise LabError("the lab is not up: run `python -m mailgate lab up` first")


def nginx_rss_kb() -> int:
    """Master and workers together."""
    workers = nginx_workers().values()
    return rss_kb(recorded_pids()["nginx"]) + sum(int(w.get("VmRSS", "0 kB").split()[0]) for w in workers)


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


def paired(measured: Callable[[], float], reference: Callable[[], float], round_: int) -> float:
    """measured / reference from two runs back to back; which goes first alternates by
    round, so neither always runs on the heels of the other."""
    if round_ % 2:
        value = measured()
        return value / reference()
    below = reference()
    return measured() / below


def _account_table(title: str, unit: str, runs: dict[str, list[dict[str, float]]]) -> list[str]:
    """Each part's median over the rounds (0 where it spent nothing), by path, and the sums."""
    labels = list(runs)
    parts = sorted({part for label in labels for spent in runs[label] for part in spent},
                   key=lambda part: -statistics.median(spent.get(part, 0.0) for spent in runs[labels[0]]))
    lines = [title, f"| part of the path ({unit}) | {' | '.join(labels)} |", "|---|" + "---|" * len(labels)]
    for part in parts:
        cells = " | ".join(f"{statistics.median(spent.get(part, 0.0) for spent in runs[label]):.0f}"
                           for label in labels)
        lines.append(f"| {part} | {cells} |")
    sums = " | ".join(f"{statistics.median(sum(spent.values()) for spent in runs[label]):.0f}" for label in labels)
    return lines + [f"| all (median of the rounds' sums) | {sums} |"]


def where_the_time_goes(rounds: int, messages: int) -> list[str]:
    """The CPU each part of the path spends (perf, every CPU) per SMTP message with one
    connection per message and per MB of the bulk fetch, via the gateway and through the
    tunnel alone. Every hop of the lab shares the machine's cores, so whatever the gateway
    spends is taken from the mail server; on a deployment the gateway is another machine."""
    gateway, tunnel = SMTP_PATHS[0], SMTP_PATHS[1]
    smtp: dict[str, list[dict[str, float]]] = {"via gateway": [], "tunnel only": []}
    rates: dict[str, list[float]] = {"via gateway": [], "tunnel only": []}
    bulk: dict[str, list[dict[str, float]]] = {"via gateway": [], "tunnel only": []}
    for round_ in range(rounds):
        order = ((gateway, BULK_PATHS[0], "via gateway"), (tunnel, BULK_PATHS[1], "tunnel only"))
        for path, bulk_path, label in order if round_ % 2 else order[::-1]:
            rate, spent = cpu_account(lambda: smtp_rate(*path[1:], messages))
            rates[label].append(rate)
            smtp[label].append({part: seconds * 1e6 / messages for part, seconds in spent.items()})
            fetched, spent = cpu_account(lambda: probe(bulk_path[1], "bulk", *bulk_path[2:], MAIL_USER,
                                                       MAIL_PASSWORD, BULK_SUBJECT))
            if not fetched.get("bytes"):
                raise LabError(f"bulk fetch failed: {fetched}")
            bulk[label].append({part: seconds * 1e3 / (fetched["bytes"] / 1e6) for part, seconds in spent.items()})
    g_cpu, t_cpu = (statistics.median(sum(spent.values()) for spent in smtp[label]) for label in smtp)
    g_rate, t_rate = (statistics.median(rates[label]) for label in rates)
    return [
        *_account_table(f"Where the time goes: CPU per SMTP message (perf record -a at {PERF_HZ} Hz, smtp-source "
                        f"-s 10 -m {messages}, one connection per message, {rounds} rounds, medians):",
                        "microseconds per message", smtp),
        f"CPU per message, tunnel only over via gateway: {t_cpu / g_cpu:.2f}; msg/s in the same runs: "
        f"{g_rate:.0f} vs {t_rate:.0f}, {g_rate / t_rate:.2f}.",
        "",
        *_account_table(f"The same for the bulk fetch (the client decrypts TLS in Python), {rounds} rounds:",
                        "ms per MB", bulk),
        "",
        *own_core(rounds, messages),
    ]


def own_core(rounds: int, messages: int) -> list[str]:
    """The targets' ratios again with home on a core of its own (each pair run back to
    back), and the bulk fetch behind a home line's upload."""
    gateway, tunnel = SMTP_PATHS[0], SMTP_PATHS[1]
    pairs: dict[str, tuple[Callable[[], float], Callable[[], float], int]] = {
        "SMTP, one connection per message: via gateway / tunnel only": (
            lambda: smtp_rate(*gateway[1:], messages), lambda: smtp_rate(*tunnel[1:], messages), rounds),
        f"SMTP, {PER_CONNECTION} messages per connection: via gateway / tunnel only": (
            lambda: smtp_rate(*gateway[1:], messages, PER_CONNECTION),
            lambda: smtp_rate(*tunnel[1:], messages, PER_CONNECTION), rounds),
        "bulk IMAPS fetch: via gateway / tunnel only": (
            lambda: bulk_rate(*BULK_PATHS[0][1:]), lambda: bulk_rate(*BULK_PATHS[1][1:]), rounds),
        # Cheap and the noisiest: three times the pairs.
        "SMTP via the gateway, one connection per message: IPv6 client / IPv4 client": (
            lambda: smtp_rate(*IPV6_PATH[1:], messages), lambda: smtp_rate(*gateway[1:], messages), 3 * rounds),
    }
    ratios: dict[str, list[float]] = {label: [] for label in pairs}
    lines = ["Home on a core of its own (Postfix, Dovecot and home's tunnel end on one CPU; the gateway, the "
             "other peer and the clients on another), as on a deployment, where the gateway is another "
             "machine; each pair run back to back, median of the ratios:",
             "| comparison | pairs | ratio | range |", "|---|---|---|---|"]
    if len(os.sched_getaffinity(0)) < 2:
        lines = ["Home on a core of its own: not measured, the bench may use one CPU only.", *lines[1:3]]
    else:
        with home_on_its_own_core():
            for measured, reference, _ in pairs.values():  # once each first: processes settle on their CPUs
                measured(), reference()
            for round_ in range(3 * rounds):
                for label, (measured, reference, count) in pairs.items():
                    if round_ < count:
                        ratios[label].append(paired(measured, reference, round_))
        for label, values in ratios.items():
            lines.append(f"| {label} | {len(values)} | {statistics.median(values):.2f} "
                         f"| {min(values):.2f}-{max(values):.2f} |")
    shaped, rates = [], []

    def via_gateway() -> float:
        rates.append(bulk_rate(*BULK_PATHS[0][1:]))
        return rates[-1]
    with home_uplink(UPLINK_MBIT):
        for round_ in range(rounds):
            shaped.append(paired(via_gateway, lambda: bulk_rate(*BULK_PATHS[1][1:]), round_))
    return lines + [f"| bulk IMAPS fetch, home's upload shaped to {UPLINK_MBIT} Mbit/s (cores shared; via gateway "
                    f"{statistics.median(rates):.1f} MB/s): via gateway / tunnel only | {rounds} "
                    f"| {statistics.median(shaped):.2f} | {min(shaped):.2f}-{max(shaped):.2f} |"]


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


def bench(rounds: int = 5, messages: int = 400, samples: int = 200, idle: int = 10_000,
          bulk_mb: int = BULK_MB) -> list[str]:
    require_lab()
    warm_up((*SMTP_PATHS, IPV6_PATH))
    put_bulk_message(bulk_mb)
    loaded = load_times(rounds)
    fetcher = bans.Fetcher()  # the list served now is empty: its run leaves the rule and empty sets
    banned_label = f"via gateway, {BANNED:,} IPv4 networks banned"
    labels = [*(label for label, *_ in SMTP_PATHS), "via gateway, bans on, 0 banned", banned_label]
    rates: dict[str, list[float]] = {label: [] for label in labels}
    reused: dict[str, list[float]] = {label: [] for label, *_ in SMTP_PATHS}
    ipv6: list[float] = []
    bulk: dict[str, list[float]] = {label: [] for label, *_ in BULK_PATHS}
    for round_ in range(rounds):  # interleaved, so drift hits every path alike
        run(["nft", "delete", "table", "inet", NFT_TABLE], GATEWAY, check=False)
        first = round_ % len(SMTP_PATHS)  # and each round starts each row's paths with another
        for label, namespace, address, port in SMTP_PATHS[first:] + SMTP_PATHS[:first]:
            rates[label].append(smtp_rate(namespace, address, port, messages))
        ipv6.append(smtp_rate(IPV6_PATH[1], IPV6_PATH[2], IPV6_PATH[3], messages))
        for label, namespace, address, port in SMTP_PATHS[first:] + SMTP_PATHS[:first]:
            reused[label].append(smtp_rate(namespace, address, port, messages, PER_CONNECTION))
        for label, namespace, address, port in BULK_PATHS[first:] + BULK_PATHS[:first]:
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
    spent = where_the_time_goes(rounds, messages)

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
    return lines + [""] + spent
