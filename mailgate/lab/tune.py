"""`lab tune`: the gateway's nginx settings that plausibly matter, each tried against the
rendered config on the running lab, in interleaved rounds, so drift hits every variant alike.

A variant is one edit of the lab gateway's nginx.conf (the rendered text, so what a
deployment gets plus the lab's own listen addresses and limits). Each round restarts nginx
with every variant in turn and measures what the setting could change: SMTP with one
connection per message via the gateway, and a bulk IMAPS fetch (each over the tunnel alone,
run back to back), nginx's CPU time for that fetch, and nginx's resident memory per idle
session. The rendered config is back in force at the end, even when a measurement fails.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailgate.lab import GATEWAY
from mailgate.lab.bench import (
    BULK_PATHS, SMTP_PATHS, bulk_rate, hold_idle, paired, put_bulk_message, require_lab, smtp_rate, warm_up,
)
from mailgate.lab.daemons import LAB_WORKER_CONNECTIONS, NGINX_CONF, nginx_workers, restart_nginx
from mailgate.lab.system import LabError, run

LISTEN = re.compile(r"^(\s*listen \S+) so_keepalive=on;$", re.M)
STREAM_OPEN = "stream {\n"


def _listen(parameters: str) -> Callable[[str], str]:
    """Every listen line's parameters (rendered: so_keepalive=on) replaced by `parameters`."""
    def edit(text: str) -> str:
        edited, count = LISTEN.subn(rf"\1 {parameters};", text)
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
    """The setting, for the table."""
    edit: Callable[[str], str] | None


BASELINE = Variant("as rendered (IMAP class: proxy_buffer_size 2k)", None)
VARIANTS = (
    BASELINE,
    Variant("proxy_buffer_size 16k everywhere (the module's default)", _buffer_everywhere("16k")),
    Variant("proxy_buffer_size 1k everywhere", _buffer_everywhere("1k")),
    Variant("proxy_buffer_size 4k everywhere", _buffer_everywhere("4k")),
    Variant("proxy_buffer_size 64k everywhere", _buffer_everywhere("64k")),
    Variant("worker_processes 1 (Ubuntu's nginx.conf and the lab's: auto, one per CPU)",
            _main_directive("worker_processes auto;", "worker_processes 1;")),
    Variant("listen ... reuseport", _listen("so_keepalive=on reuseport")),
    Variant("tcp_nodelay off (default on)", _stream_directive("tcp_nodelay off;")),
    Variant("listen ... rcvbuf=256k sndbuf=256k", _listen("so_keepalive=on rcvbuf=256k sndbuf=256k")),
    Variant("so_keepalive off, proxy_socket_keepalive off",
            lambda text: _main_directive("proxy_socket_keepalive on;", "proxy_socket_keepalive off;")(
                _listen("so_keepalive=off")(text))),
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


def _fetch_via_gateway(cpu_ms: list[float]) -> float:
    """The bulk fetch via the gateway, MB/s; nginx's CPU time for it appended to `cpu_ms`."""
    used = _nginx_cpu_ms()
    rate = bulk_rate(*BULK_PATHS[0][1:])
    cpu_ms.append(_nginx_cpu_ms() - used)
    return rate


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "n/a"


def apply(rendered: str, variant: Variant) -> None:
    """Start the gateway's nginx afresh with `variant`: a restart, not a reload, because a
    reload keeps the listening sockets and their options (a `rcvbuf` tried once would stay
    for every later setting)."""
    NGINX_CONF.write_text(variant.edit(rendered) if variant.edit else rendered)
    checked = run(["nginx", "-t", "-c", str(NGINX_CONF)], GATEWAY, check=False)
    if checked.returncode != 0:
        NGINX_CONF.write_text(rendered)
        raise LabError(f"nginx refuses '{variant.name}': {checked.stderr.strip()}")
    restart_nginx()


# Idle sessions held per setting: fewer than one worker holds in the lab (two connections
# per session), so `worker_processes 1` is measured like the others.
IDLE_SESSIONS = LAB_WORKER_CONNECTIONS // 2 - 1000


def tune(rounds: int = 5, messages: int = 400, idle: int = IDLE_SESSIONS, bulk_mb: int = 50,
         variants: tuple[Variant, ...] = VARIANTS) -> list[str]:
    require_lab()
    rendered = NGINX_CONF.read_text()
    gateway, tunnel = SMTP_PATHS[0], SMTP_PATHS[1]
    warm_up((gateway, tunnel))
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
                smtp[variant.name].append(paired(lambda: smtp_rate(*gateway[1:], messages),
                                                 lambda: smtp_rate(*tunnel[1:], messages), round_))
                bulk[variant.name].append(paired(lambda: _fetch_via_gateway(bulk_cpu[variant.name]),
                                                 lambda: bulk_rate(*BULK_PATHS[1][1:]), round_))
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
        f"starting one setting later, nginx restarted for each). SMTP: smtp-source -s 10 -m {messages}, one "
        f"connection per message, via the gateway over the tunnel alone, the two back to back (which one "
        f"first alternates by round); bulk: one {bulk_mb} MB message over IMAPS, the same pairing; the median "
        "of the pairs' ratios, and their range. nginx CPU: the time "
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
