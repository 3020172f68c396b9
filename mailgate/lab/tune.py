"""`lab tune`: the gateway's nginx settings that plausibly matter, each tried against the
rendered config on the running lab, in interleaved rounds, so drift hits every variant alike.

A variant is one edit of the lab gateway's nginx.conf (the rendered text, so what a
deployment gets plus the lab's own listen addresses and limits). Each round reloads nginx
with every variant in turn, waits until no worker of the previous config is left, and
measures what the setting could change: SMTP with one connection per message via the
gateway, and a bulk IMAPS fetch (each over the tunnel alone, run right before it), nginx's
CPU time for that fetch, and nginx's resident memory per idle session. The rendered config
is back in force at the end, even when a measurement fails.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailgate.lab import GATEWAY
from mailgate.lab.bench import (
    BULK_PATHS, SMTP_PATHS, bulk_rate, hold_idle, nginx_workers, put_bulk_message, require_lab, smtp_rate,
)
from mailgate.lab.daemons import NGINX_CONF
from mailgate.lab.system import LabError, run

LISTEN = re.compile(r"^(\s*listen \S+) so_keepalive=on;$", re.M)
STREAM_OPEN = "stream {\n"


def _listen_option(option: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        edited, count = LISTEN.subn(rf"\1 so_keepalive=on {option};", text)
        if not count:
            raise LabError("the rendered stream config has no listen line to edit")
        return edited
    return edit


def _stream_directive(directive: str) -> Callable[[str], str]:
    """`directive` in the stream block (every server inherits it)."""
    def edit(text: str) -> str:
        if STREAM_OPEN not in text:
            raise LabError("the rendered config has no stream block")
        return text.replace(STREAM_OPEN, f"{STREAM_OPEN}    {directive}\n", 1)
    return edit


def _buffer_everywhere(size: str) -> Callable[[str], str]:
    """One proxy_buffer_size for every server, in place of the rendered ones."""
    def edit(text: str) -> str:
        return _stream_directive(f"proxy_buffer_size {size};")(
            re.sub(r"^\s*proxy_buffer_size \S+;\n", "", text, flags=re.M))
    return edit


def _main_directive(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        if old not in text:
            raise LabError(f"the rendered config has no '{old}'")
        return text.replace(old, new, 1)
    return edit


def _access_log_buffered(text: str) -> str:
    edited, count = re.subn(r"(access_log \S+ mailgate);", r"\1 buffer=64k flush=5s;", text)
    if count != 1:
        raise LabError("the rendered stream config has no access_log line to edit")
    return edited


@dataclass(frozen=True)
class Variant:
    name: str
    """The setting as nginx.conf spells it."""
    edit: Callable[[str], str] | None


BASELINE = Variant("as rendered (IMAP class: proxy_buffer_size 2k)", None)
VARIANTS = (
    BASELINE,
    Variant("proxy_buffer_size 16k everywhere (the module's default)", _buffer_everywhere("16k")),
    Variant("proxy_buffer_size 1k everywhere", _buffer_everywhere("1k")),
    Variant("proxy_buffer_size 4k everywhere", _buffer_everywhere("4k")),
    Variant("proxy_buffer_size 64k everywhere", _buffer_everywhere("64k")),
    Variant("worker_processes 1 (rendered: auto, 2 here)",
            _main_directive("worker_processes auto;", "worker_processes 1;")),
    Variant("listen ... reuseport", _listen_option("reuseport")),
    Variant("tcp_nodelay off (default on)", _stream_directive("tcp_nodelay off;")),
    Variant("listen ... rcvbuf=256k sndbuf=256k", _listen_option("rcvbuf=256k sndbuf=256k")),
    Variant("so_keepalive off, proxy_socket_keepalive off",
            lambda text: _main_directive("proxy_socket_keepalive on;", "proxy_socket_keepalive off;")(
                text.replace(" so_keepalive=on;", ";"))),
    Variant("access_log ... buffer=64k flush=5s", _access_log_buffered),
)


def _nginx_cpu_ms() -> float:
    """Time nginx's workers have run on a CPU so far, in ms (the master does no proxying)."""
    nanoseconds = 0
    for worker in nginx_workers():
        try:
            nanoseconds += int(Path(f"/proc/{worker}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a worker that has just left
    return nanoseconds / 1e6


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "n/a"


def apply(rendered: str, variant: Variant) -> None:
    """Load `variant` into the running nginx and wait until only its workers are left."""
    NGINX_CONF.write_text(variant.edit(rendered) if variant.edit else rendered)
    checked = run(["nginx", "-t", "-c", str(NGINX_CONF)], GATEWAY, check=False)
    if checked.returncode != 0:
        NGINX_CONF.write_text(rendered)
        raise LabError(f"nginx refuses '{variant.name}': {checked.stderr.strip()}")
    old = set(nginx_workers())
    run(["nginx", "-c", str(NGINX_CONF), "-s", "reload"], GATEWAY)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = set(nginx_workers())
        if now and not now & old:
            return
        time.sleep(0.1)
    raise LabError(f"nginx's old workers did not leave within 30 s after loading '{variant.name}'")


# Idle sessions held per setting: fewer than one worker holds in the lab (12,000
# connections, two per session: 6,000), so `worker_processes 1` is measured like the others.
IDLE_SESSIONS = 5000


def tune(rounds: int = 5, messages: int = 400, idle: int = IDLE_SESSIONS, bulk_mb: int = 50,
         variants: tuple[Variant, ...] = VARIANTS) -> list[str]:
    require_lab()
    rendered = NGINX_CONF.read_text()
    gateway, tunnel = SMTP_PATHS[0], SMTP_PATHS[1]
    bulk_gateway, bulk_tunnel = BULK_PATHS[0], BULK_PATHS[1]
    for _, namespace, address, port in (gateway, tunnel):  # postscreen remembers a client after one pass
        smtp_rate(namespace, address, port, 5)
    put_bulk_message(bulk_mb)
    smtp: dict[str, list[float]] = {v.name: [] for v in variants}  # via gateway / tunnel alone, paired
    bulk: dict[str, list[float]] = {v.name: [] for v in variants}  # the same for the bulk fetch
    bulk_cpu: dict[str, list[float]] = {v.name: [] for v in variants}  # nginx's CPU ms for one fetch
    per_session: dict[str, float] = {}
    try:
        for round_ in range(rounds):
            # Each round starts one variant later, so no setting always follows the same one.
            for variant in variants[round_ % len(variants):] + variants[:round_ % len(variants)]:
                apply(rendered, variant)
                # The tunnel alone right before the gateway: each ratio pairs two runs a second apart.
                alone = smtp_rate(*tunnel[1:], messages)
                smtp[variant.name].append(smtp_rate(*gateway[1:], messages) / alone)
                alone = bulk_rate(*bulk_tunnel[1:])
                used = _nginx_cpu_ms()
                bulk[variant.name].append(bulk_rate(*bulk_gateway[1:]) / alone)
                bulk_cpu[variant.name].append(_nginx_cpu_ms() - used)
                if round_ == rounds - 1:  # memory hardly moves between rounds: once is enough
                    held = hold_idle(idle, 1)
                    if held["still_open"] != idle:
                        raise LabError(f"'{variant.name}': {held['still_open']} of {idle} idle sessions held")
                    per_session[variant.name] = (held["rss_during_kb"] - held["rss_before_kb"]) / idle
    finally:
        apply(rendered, BASELINE)
    base = BASELINE.name
    s0, b0, c0, m0 = (statistics.median(smtp[base]), statistics.median(bulk[base]),
                      statistics.median(bulk_cpu[base]), per_session[base])
    lines = [
        f"Each setting loaded into the lab gateway's nginx in turn, {rounds} interleaved rounds (each "
        f"starting one setting later). SMTP: smtp-source -s 10 -m {messages}, one connection per message, "
        f"via the gateway over the tunnel alone run right before it; bulk: one {bulk_mb} MB message over "
        "IMAPS, the same pairing; the median of the pairs' ratios, and their range. nginx CPU: the time "
        "its workers ran during one bulk fetch (/proc schedstat). Memory: nginx's RSS per idle IMAP "
        f"session, {idle:,} sessions held (last round).",
        "| setting | SMTP gateway/tunnel (range) | vs rendered | bulk gateway/tunnel (range) | vs rendered "
        "| nginx CPU ms per bulk fetch | vs rendered | kB per session | vs rendered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        name = variant.name
        s, b, c, m = (statistics.median(smtp[name]), statistics.median(bulk[name]),
                      statistics.median(bulk_cpu[name]), per_session[name])
        lines.append(f"| {name} | {s:.2f} ({min(smtp[name]):.2f}-{max(smtp[name]):.2f}) | {_ratio(s, s0)} "
                     f"| {b:.2f} ({min(bulk[name]):.2f}-{max(bulk[name]):.2f}) | {_ratio(b, b0)} "
                     f"| {c:.0f} | {_ratio(c, c0)} | {m:.1f} | {_ratio(m, m0)} |")
    return lines
