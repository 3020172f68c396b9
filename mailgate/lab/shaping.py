"""The lab shaped more like a deployment, for a measurement: home on a CPU of its own (on a
deployment the gateway is another machine), and home's upload limited as a home line
limits it. Both are undone afterwards, also when the measurement fails."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mailgate.lab import GATEWAY, HOME, INET, MAILCOW, SPOOF
from mailgate.lab.system import LabError, run

# Home's links to the gateway and to the other tunnel peer (home's side of each veth).
HOME_UPLINKS = ("home-gw", "home-spoof")
UPLINK_MBIT = 100  # a fast home fibre upload; most are slower


def _tasks(namespaces: tuple[str, ...]) -> list[int]:
    """Every thread of every process in `namespaces`."""
    tasks = []
    for namespace in namespaces:
        for pid in run(["ip", "netns", "pids", namespace]).stdout.split():
            tasks += [int(task.name) for task in Path(f"/proc/{pid}/task").glob("[0-9]*")]
    return tasks


def _pin(tasks: list[int], cpus: set[int]) -> None:
    for task in tasks:
        try:
            os.sched_setaffinity(task, cpus)
        except ProcessLookupError:
            continue  # a thread that has just ended
        except OSError as error:
            raise LabError(f"cannot move thread {task} to CPUs {sorted(cpus)}: {error}") from error


@contextlib.contextmanager
def home_on_its_own_core():
    """The home side (the Mini PC's and Mailcow's namespaces) on one CPU, everything else
    (the gateway, the tunnel's other peer, the client, and the bench, whose children are
    the clients) on another. Children started meanwhile inherit their parent's CPU
    (Postfix's master starts smtpd and cleanup as mail comes). Afterwards every thread gets
    back the CPUs it had, and one started meanwhile the bench's own."""
    home, rest = (MAILCOW, HOME), (GATEWAY, SPOOF, INET)
    ours = os.sched_getaffinity(0)
    if len(ours) < 2:
        raise LabError("home on a core of its own needs two CPUs; the bench may use one")
    first, second = sorted(ours)[:2]
    saved = {}
    for task in _tasks(home + rest):
        with contextlib.suppress(ProcessLookupError):
            saved[task] = os.sched_getaffinity(task)
    try:
        _pin(_tasks(home), {first})
        _pin(_tasks(rest), {second})
        os.sched_setaffinity(0, {second})
        yield
    finally:
        os.sched_setaffinity(0, ours)
        for namespace in home + rest:
            with contextlib.suppress(LabError):  # restore what can be restored, then go on
                for task in _tasks((namespace,)):
                    with contextlib.suppress(ProcessLookupError):
                        os.sched_setaffinity(task, saved.get(task, ours))


@contextlib.contextmanager
def home_uplink(mbit: int = UPLINK_MBIT):
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
