"""`lab bench`: what the gateway costs, measured side by side in one run.

Two shared cores run every namespace, so absolute numbers are noisy; the table reports
medians over rounds and ratios between paths measured in the same run. Every loop is
bounded by a message or connection count.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mailgate.lab import (
    GATEWAY, HOME, HOME_TAILNET, HOME_UNDERLAY, INET, MAIL_PASSWORD, MAIL_UID, MAIL_USER, MAILCOW, PUBLIC_IP,
    PUBLIC_IP6, SPOOF, STATE,
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


def nginx_workers() -> dict[int, dict[str, str]]:
    """The gateway nginx's workers (the master's children): pid -> /proc status fields."""
    master = str(recorded_pids()["nginx"])
    workers = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == master:
            workers[int(status.parent.name)] = fields
    return workers


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


POSTFIX_PROGRAMS = frozenset({
    "master", "smtpd", "postscreen", "cleanup", "qmgr", "discard", "trivial-rewrite", "anvil", "postlogd",
    "tlsmgr", "proxymap", "scache", "bounce", "pickup", "showq", "dnsblog", "tlsproxy", "error", "smtp",
})
PERF_HZ = 1000


def cpu_per_message(namespace: str, address: str, port: int, messages: int) -> tuple[float, dict[str, float]]:
    """Send `messages` (one connection each) while perf samples every CPU; msg/s, and the
    CPU microseconds per message each part of the path spent, the kernel's work included
    (softirqs count for the program they interrupt)."""
    if shutil.which("perf") is None:
        raise LabError("perf is missing: install linux-perf (bash scripts/setup.sh --dev does)")
    pids = recorded_pids()
    tunnel_ends = {pids[f"wireguard-{name}"]: f"wireguard-go, {end}"
                   for name, end in ((GATEWAY, "the gateway's end"), (HOME, "home's end"), (SPOOF, "the peer's end"))}
    data = STATE / "bench-perf.data"
    recorder = subprocess.Popen(["perf", "record", "-a", "-e", "cpu-clock", "-F", str(PERF_HZ), "-o", str(data),
                                 "--", "sleep", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # perf is sampling once its own start-up is behind it
        rate = smtp_rate(namespace, address, port, messages)
    finally:
        recorder.send_signal(signal.SIGINT)
        _, said = recorder.communicate(timeout=60)
    script = run(["perf", "script", "-i", str(data), "-F", "comm,pid"], timeout=120)
    data.unlink()
    samples: dict[str, int] = {}
    for line in script.stdout.splitlines():
        comm, _, pid = line.strip().rpartition(" ")
        comm = comm.strip()
        if comm in ("swapper", "perf") or not pid.isdigit():
            continue  # idle, and perf's own sampling
        part = (tunnel_ends.get(int(pid)) or ("nginx" if comm == "nginx" else None)
                or ("Postfix at home" if comm in POSTFIX_PROGRAMS else None)
                or ("the client (smtp-source)" if comm == "smtp-source" else "everything else"))
        samples[part] = samples.get(part, 0) + 1
    if not samples:
        raise LabError(f"perf recorded nothing: {said.strip()}")
    return rate, {part: count / PERF_HZ * 1e6 / messages for part, count in samples.items()}


def _set_affinity(namespaces: tuple[str, ...], cpus: set[int]) -> None:
    """Every thread of every process in `namespaces` on `cpus`; children they start later
    inherit it (Postfix's master starts smtpd and cleanup as mail comes)."""
    for namespace in namespaces:
        for pid in run(["ip", "netns", "pids", namespace]).stdout.split():
            for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
                try:
                    os.sched_setaffinity(int(task.name), cpus)
                except OSError:
                    pass  # a thread that has just ended


@contextlib.contextmanager
def home_on_its_own_core():
    """The home side (the Mini PC and Mailcow's namespace) on one CPU, everything else (the
    gateway, the tunnel's other peer, the client, and the bench, whose children are the
    clients) on another: home no longer pays for the gateway's work, as on a deployment,
    where the gateway is another machine. Every CPU again for all of them afterwards."""
    home, rest = (MAILCOW, HOME), (GATEWAY, SPOOF, INET)
    everything = os.sched_getaffinity(0)
    first, second = sorted(everything)[:2]
    try:
        _set_affinity(home, {first})
        _set_affinity(rest, {second})
        os.sched_setaffinity(0, {second})
        yield
    finally:
        os.sched_setaffinity(0, everything)
        _set_affinity(home + rest, everything)


def where_the_time_goes(rounds: int, messages: int) -> list[str]:
    """SMTP with one connection per message, via the gateway against the tunnel alone:
    the CPU each part of the path spends per message (perf), then own_core()'s ratios.
    Every hop of the lab shares the machine's cores, so whatever the gateway spends is taken
    from Postfix; on a deployment the gateway is another machine."""
    gateway, tunnel = SMTP_PATHS[0], SMTP_PATHS[1]
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {gateway[0]: [], tunnel[0]: []}
    for _ in range(rounds):
        for label, namespace, address, port in (tunnel, gateway):
            runs[label].append(cpu_per_message(namespace, address, port, messages))

    def median(label: str, part: str | None = None) -> float:
        """A part's median over the rounds (0 where it spent nothing); all parts with None."""
        return statistics.median(sum(parts.values()) if part is None else parts.get(part, 0.0)
                                 for _, parts in runs[label])

    lines = [f"Where the time goes: CPU microseconds per message (perf record -a at {PERF_HZ} Hz, "
             f"smtp-source -s 10 -m {messages}, one connection per message, {rounds} rounds, medians):",
             "| part of the path | via gateway | tunnel only |", "|---|---|---|"]
    parts = sorted({part for label in runs for _, spent in runs[label] for part in spent},
                   key=lambda part: -median(gateway[0], part))
    for part in parts:
        lines.append(f"| {part} | {median(gateway[0], part):.0f} | {median(tunnel[0], part):.0f} |")
    totals = {label: median(label) for label in runs}
    g_rate, t_rate = (statistics.median(rate for rate, _ in runs[label]) for label in (gateway[0], tunnel[0]))
    g_cpu, t_cpu = totals[gateway[0]], totals[tunnel[0]]
    lines += [f"| all (median of the rounds' sums) | {g_cpu:.0f} | {t_cpu:.0f} |",
              f"CPU per message, tunnel only over via gateway: {t_cpu / g_cpu:.2f}; msg/s in the same runs: "
              f"{g_rate:.0f} vs {t_rate:.0f}, {g_rate / t_rate:.2f}."]
    return lines + [""] + own_core(rounds, messages)


# Home's links to the gateway and to the other tunnel peer (home's side of each veth).
HOME_UPLINKS = ("home-gw", "home-spoof")
UPLINK_MBIT = 100  # a fast home fibre upload; most are slower


@contextlib.contextmanager
def home_uplink(mbit: int):
    """Home's upload shaped to `mbit` Mbit/s towards the gateway and the other peer alike
    (tc tbf), as a home line limits what leaves home on a deployment."""
    try:
        for link in HOME_UPLINKS:
            run(["tc", "qdisc", "replace", "dev", link, "root", "tbf", "rate", f"{mbit}mbit",
                 "burst", "256kb", "latency", "50ms"], HOME)
        yield
    finally:
        for link in HOME_UPLINKS:
            run(["tc", "qdisc", "del", "dev", link, "root"], HOME, check=False)


def bulk_uplink(rounds: int) -> list[str]:
    """The bulk fetch on both paths with home's upload shaped to UPLINK_MBIT, pairs back to back."""
    ratios, rates = [], []
    with home_uplink(UPLINK_MBIT):
        for _ in range(rounds):
            alone = bulk_rate(*BULK_PATHS[1][1:])
            rates.append(bulk_rate(*BULK_PATHS[0][1:]))
            ratios.append(rates[-1] / alone)
    return [f"| bulk IMAPS fetch, home's upload shaped to {UPLINK_MBIT} Mbit/s (cores shared; via gateway "
            f"{statistics.median(rates):.1f} MB/s): via gateway / tunnel only | {statistics.median(ratios):.2f} "
            f"| {min(ratios):.2f}-{max(ratios):.2f} |"]


def own_core(rounds: int, messages: int) -> list[str]:
    """The targets' ratios again with home on a core of its own (each pair run back to back),
    and the bulk fetch behind a home line's upload speed."""
    if len(os.sched_getaffinity(0)) < 2:
        return ["Home on a core of its own: not measured, the bench may use one CPU only.",
                "| comparison | ratio | range |", "|---|---|---|", *bulk_uplink(rounds)]
    gateway, tunnel = SMTP_PATHS[0], SMTP_PATHS[1]
    pairs: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {
        "SMTP, one connection per message: via gateway / tunnel only": (
            lambda: smtp_rate(*gateway[1:], messages), lambda: smtp_rate(*tunnel[1:], messages)),
        f"SMTP, {PER_CONNECTION} messages per connection: via gateway / tunnel only": (
            lambda: smtp_rate(*gateway[1:], messages, PER_CONNECTION),
            lambda: smtp_rate(*tunnel[1:], messages, PER_CONNECTION)),
        "bulk IMAPS fetch: via gateway / tunnel only": (
            lambda: bulk_rate(*BULK_PATHS[0][1:]), lambda: bulk_rate(*BULK_PATHS[1][1:])),
        "SMTP via the gateway, one connection per message: IPv6 client / IPv4 client": (
            lambda: smtp_rate(*IPV6_PATH[1:], messages), lambda: smtp_rate(*gateway[1:], messages)),
    }
    ratios: dict[str, list[float]] = {label: [] for label in pairs}
    with home_on_its_own_core():
        for measured, reference in pairs.values():  # once each first: processes settle on their new CPUs
            measured(), reference()
        for _ in range(rounds):
            for label, (measured, reference) in pairs.items():
                below = reference()
                ratios[label].append(measured() / below)
    lines = [f"Home on a core of its own (Postfix, Dovecot and home's tunnel end on one CPU; the gateway, the "
             f"other peer and the clients on another), as on a deployment, where the gateway is another "
             f"machine; {rounds} rounds, each pair run back to back, median of the ratios:",
             "| comparison | ratio | range |", "|---|---|---|"]
    for label, values in ratios.items():
        lines.append(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |")
    return lines + bulk_uplink(rounds)


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
