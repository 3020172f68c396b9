"""Where the CPU goes: perf samples every CPU while a workload runs in the lab, and the
samples are added up by part of the mail path.

perf counts the kernel's work for the program it interrupts (softirqs included), so the
split between neighbouring parts is approximate; the sum is not. The lab runs two more
Postfix instances (the relay and the outside sender) and the relay's Dovecot; they carry no
mail during the bench's runs, so the mail server's row is home's.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

from mailgate.lab import GATEWAY, HOME, SPOOF, STATE
from mailgate.lab.system import LabError, recorded_pids, run

PERF_HZ = 1000
MAIL_SERVER = frozenset({
    # Postfix's programs
    "master", "smtpd", "postscreen", "cleanup", "qmgr", "discard", "trivial-rewrite", "anvil", "postlogd",
    "tlsmgr", "proxymap", "scache", "bounce", "pickup", "showq", "dnsblog", "tlsproxy", "error", "smtp",
    # Dovecot's
    "dovecot", "imap", "imap-login", "auth", "config", "log", "stats",
})
CLIENTS = ("smtp-source", "python")  # smtp-source, and the bench's probe (python3.x)
Result = TypeVar("Result")


def _part(comm: str, pid: int, tunnel_ends: dict[int, str]) -> str:
    if pid in tunnel_ends:
        return tunnel_ends[pid]
    if comm == "nginx":
        return "nginx"
    if comm in MAIL_SERVER:
        return "the mail server at home (Postfix, Dovecot)"
    if comm.startswith(CLIENTS):
        return "the client"
    return "everything else"


def cpu_account(workload: Callable[[], Result]) -> tuple[Result, dict[str, float]]:
    """`workload`'s result, and the CPU seconds each part of the path spent while it ran."""
    if shutil.which("perf") is None:
        raise LabError("perf is missing: install linux-perf (bash scripts/setup.sh --dev does)")
    pids = recorded_pids()
    tunnel_ends = {pids[f"wireguard-{name}"]: f"wireguard-go, {end}"
                   for name, end in ((GATEWAY, "the gateway's end"), (HOME, "home's end"), (SPOOF, "the peer's end"))}
    data = STATE / "bench-perf.data"
    recorder = subprocess.Popen(["perf", "record", "-a", "-e", "cpu-clock", "-F", str(PERF_HZ), "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # perf is sampling once its own start-up is behind it
        if recorder.poll() is not None:
            raise LabError(f"perf record stopped at once: {recorder.stderr.read().strip()}")
        result = workload()
        recorder.send_signal(signal.SIGINT)
        _, said = recorder.communicate(timeout=60)
        if recorder.returncode not in (0, 128 + signal.SIGINT, -signal.SIGINT):
            raise LabError(f"perf record failed (exit {recorder.returncode}): {said.strip()}")
        script = run(["perf", "script", "-i", str(data), "-F", "comm,pid"], timeout=120)
    finally:
        if recorder.poll() is None:  # the workload failed, or perf did not stop
            recorder.kill()
            recorder.wait()
        data.unlink(missing_ok=True)
    samples: dict[str, int] = {}
    for line in script.stdout.splitlines():
        comm, _, pid = line.strip().rpartition(" ")
        comm = comm.strip()
        if comm in ("swapper", "perf") or not pid.isdigit():
            continue  # idle, and perf's own sampling
        part = _part(comm, int(pid), tunnel_ends)
        samples[part] = samples.get(part, 0) + 1
    if not samples:
        raise LabError("perf recorded no sample")
    return result, {part: count / PERF_HZ for part, count in samples.items()}
