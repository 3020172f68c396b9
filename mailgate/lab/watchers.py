"""The watcher pair in the lab: the real watch.py on the gateway and on home, with the
configs render_watch_config makes, sending through the lab's relay; and the checks that
one outage brings one alert and one recovery from each end, and a flapping tunnel none.

What the lab substitutes for a deployment (nothing else):
- no systemd timer: a bounded loop in the check runs the program again RUN_GAP s after
  each run ends (a deployment: once a minute), in the end's namespace, with the lab's
  hosts file bind-mounted over /etc/hosts for the relay's name (there is no DNS);
- the threshold is AFTER_SECONDS (render_watch_config's `after_seconds`; a deployment:
  alerts.afterMinutes) and a probe waits PROBE_TIMEOUT s instead of 10 (`timeout_seconds`
  in the rendered JSON), so an outage is seen and alerted within seconds;
- the relay's certificate is verified against the lab's CA (`--ca-file`, see daemons.py)
  instead of the host's CA store;
- alerts go to ALERT_TO when the stack sets no mailgate:alerts.to (the relay discards
  every message; its log, which names each Subject and client, is what is counted).
Each end's config (it holds a relay key) and state file lie in STATE/watch/<end>/, 0600.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from mailgate.deployment import Deployment
from mailgate.lab import GATEWAY, GATEWAY_RELAY_UNDERLAY, GATEWAY_TAILNET, HOME, HOME_RELAY_UNDERLAY, PUBLIC_IP, STATE
from mailgate.lab import topology
from mailgate.lab.daemons import HOSTS, LAB_ALERTS_RELAY_PASSWORD, LAB_RELAY_PASSWORD, RELAY_CA, RELAY_LOG
from mailgate.lab.result import Result
from mailgate.lab.system import run
from mailgate.renderers.watch import GATEWAY_END, HOME_END, PYTHON, WATCH_PROGRAM, render_watch_config
from mailgate.settings import Settings

WATCH_DIR = STATE / "watch"
AFTER_SECONDS = 5
PROBE_TIMEOUT = 1.5
RUN_GAP = 0.5
ALERT_TO = "oncall@example.org"
ENDS = (GATEWAY_END, HOME_END)
NAMESPACE = {GATEWAY_END: GATEWAY, HOME_END: HOME}
WHOSE = {GATEWAY_END: "the gateway's", HOME_END: "home's"}
# The address each end's mail reaches the relay from, which the relay logs.
RELAY_CLIENT = {GATEWAY_END: GATEWAY_RELAY_UNDERLAY, HOME_END: HOME_RELAY_UNDERLAY}
LOOP_LIMIT = 120  # seconds a watcher loop runs at most, whatever its check does

# Bounds of the checks' waits, in seconds. A failing run and the pause after it last a CYCLE.
CYCLE = PROBE_TIMEOUT + RUN_GAP
READY_WAIT = 15  # both watchers' first run that finds everything answering
ALERT_WAIT = AFTER_SECONDS + 3 * CYCLE  # the alert normally comes one CYCLE after the threshold
RECOVERY_WAIT = 20
HOLD_DOWN = CYCLE + 1  # at least one more failing run each after its alert: none may send again
HOLD_UP = 2  # several healthy runs after the recovery: none may send again
# A flap keeps the tunnel down until each watcher has ended two failing runs for it, then
# brings it back at once: the watcher has measured an outage of one CYCLE (so its
# threshold was consulted), well under AFTER_SECONDS. A fixed duration would not do: a
# probe rides out a blip shorter than its timeout (TCP resends the SYN after 1 s), and
# how many runs a given duration spans depends on the machine's speed.
FLAPS, FLAP_RUNS = 3, 2
FLAP_WAIT = (FLAP_RUNS + 1) * CYCLE + 2

ALERT, RECOVERY = "alert", "recovery"
# cleanup's WARN line for a Subject header, e.g. "warning: header Subject: mailgate dev:
# home's mail ports over the tunnel unreachable for 5 s from unknown[192.0.2.13]; ...".
# Python folds a Subject longer than 78 characters; Postfix logs each fold's line break
# as "?" before the folding space ("Subject:? mailgate dev: the gateway's ...").
SUBJECT_LINE = re.compile(r"warning: header Subject:(?P<subject>.*?) from [^\s\[]*\[(?P<client>[\d.]+)\];")
FOLD = re.compile(r"\?(?=[ \t])")


def watch_settings(settings: Settings) -> Settings:
    if settings.alerts.enabled:
        return settings
    return settings.model_copy(update={"alerts": settings.alerts.model_copy(update={"to": ALERT_TO})})


def watch_config(settings: Settings, end: str, relay_password: str) -> str:
    deployment = Deployment(gateway_tailnet_ip=GATEWAY_TAILNET, public_ipv4=PUBLIC_IP)
    config = json.loads(render_watch_config(watch_settings(settings), end, deployment, relay_password,
                                            after_seconds=AFTER_SECONDS))
    config["timeout_seconds"] = PROBE_TIMEOUT
    return json.dumps(config, indent=2) + "\n"


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Watcher:
    """One end's watch.py, run again RUN_GAP s after each run ends, until stopped."""

    def __init__(self, end: str, config: str):
        self.end = end
        directory = WATCH_DIR / end
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config, self.state = directory / "watch.json", directory / "state.json"
        self.output = directory / "watch.out"
        self.state.unlink(missing_ok=True)  # each check starts with nothing remembered
        self.config.touch(mode=0o600)
        self.config.chmod(0o600)
        self.config.write_text(config)
        self.subjects = _subjects(json.loads(config)["stack"], end)
        # (start and end on the monotonic clock, start on the wall clock as watch.py reads
        # it, state after the run)
        self.runs: list[tuple[float, float, float, dict | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{end}", daemon=True)

    def _loop(self) -> None:
        program = shlex.join([PYTHON, str(WATCH_PROGRAM), "--config", str(self.config),
                              "--state", str(self.state), "--ca-file", str(RELAY_CA)])
        command = f"umask 077 && mount --bind {shlex.quote(str(HOSTS))} /etc/hosts && exec {program}"
        deadline = time.monotonic() + LOOP_LIMIT
        with self.output.open("a") as output:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started, wall = time.monotonic(), time.time()
                try:
                    result = run(["sh", "-c", command], NAMESPACE[self.end], check=False, timeout=60)
                    output.write(result.stdout + result.stderr)
                except subprocess.TimeoutExpired:
                    output.write("the run did not end within 60 s\n")
                output.flush()
                self.runs.append((started, time.monotonic(), wall, _read_state(self.state)))
                self._stop.wait(RUN_GAP)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=70)

    def answered_since(self, moment: float) -> bool:
        """A run started at or after `moment` found every target answering."""
        return any(start >= moment and state == {} for start, _, _, state in list(self.runs))

    def failed_runs_ended_since(self, moment: float) -> int:
        return sum(1 for _, end, _, state in list(self.runs) if end >= moment and state and "down_since" in state)

    def outages_seen(self, since: float) -> dict[float, list[float]]:
        """Each outage that runs started at or after `since` saw (by its down_since),
        with how long it had lasted at each of its failing runs."""
        outages: dict[float, list[float]] = {}
        for start, _, wall, state in list(self.runs):
            if start >= since and state and "down_since" in state:
                outages.setdefault(state["down_since"], []).append(wall - state["down_since"])
        return outages

    def said(self) -> str:
        """Its last failure to send, else its last line: what explains a failed check."""
        lines = self.output.read_text(errors="replace").splitlines() if self.output.exists() else []
        failures = [line for line in lines if line.startswith("could not send")]
        return (failures or lines or ["nothing"])[-1][:160]


def _subjects(stack: str, end: str) -> dict[str, str]:
    """The start of each kind of Subject this end sends (watch.py's wording)."""
    watched = ("home's mail ports over the tunnel" if end == GATEWAY_END
               else f"the gateway's public address {PUBLIC_IP}")
    return {ALERT: f"mailgate {stack}: {watched} unreachable for ",
            RECOVERY: f"mailgate {stack}: {watched} answers again"}


@contextmanager
def watching(settings: Settings, gateway_key: str = LAB_ALERTS_RELAY_PASSWORD):
    """Both watchers running, each with the key it has in a deployment: the gateway its
    own alert key, home the relay password."""
    keys = {GATEWAY_END: gateway_key, HOME_END: LAB_RELAY_PASSWORD}
    watchers = {end: Watcher(end, watch_config(settings, end, keys[end])) for end in ENDS}
    for watcher in watchers.values():
        watcher.start()
    try:
        yield watchers
    finally:
        for watcher in watchers.values():
            watcher.stop()


def relay_messages(offset: int, watchers: dict[str, Watcher]) -> tuple[Counter, list[str]]:
    """The watchers' messages the relay logged after `offset`: counts by (end, kind),
    where the end is known by its address AND its wording, and every Subject seen."""
    counts: Counter = Counter()
    seen = []
    text = RELAY_LOG.read_bytes()[offset:].decode(errors="replace") if RELAY_LOG.exists() else ""
    for match in SUBJECT_LINE.finditer(text):
        subject, client = FOLD.sub("", match["subject"]).strip(), match["client"]
        seen.append(f"{subject} [{client}]")
        for end, watcher in watchers.items():
            for kind, start in watcher.subjects.items():
                if client == RELAY_CLIENT[end] and subject.startswith(start):
                    counts[end, kind] += 1
    return counts, seen


def _log_size() -> int:
    return RELAY_LOG.stat().st_size if RELAY_LOG.exists() else 0


def _wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())


def _ready(watchers: dict[str, Watcher]) -> bool:
    return _wait(lambda: all(w.answered_since(0) for w in watchers.values()), READY_WAIT)


def outage_alerts_once_then_recovers(settings: Settings,
                                     gateway_key: str = LAB_ALERTS_RELAY_PASSWORD) -> list[Result]:
    """The tunnel down until both alerts are in and one more run each, then up: each end
    sends exactly one alert, then exactly one recovery (`gateway_key`: the key the
    gateway's watcher sends with; a wrong one shows the check failing)."""
    with watching(settings, gateway_key) as watchers:
        ready = _ready(watchers)
        offset = _log_size()

        def count() -> Counter:
            return relay_messages(offset, watchers)[0]

        went_down = time.monotonic()
        topology.set_home_tunnel(False)
        try:
            _wait(lambda: all(count()[end, ALERT] for end in ENDS), ALERT_WAIT)
            time.sleep(HOLD_DOWN)
        finally:
            topology.set_home_tunnel(True)
        down_for = time.monotonic() - went_down
        alerted = [end for end in ENDS if count()[end, ALERT]]
        _wait(lambda: all(count()[end, RECOVERY] for end in alerted), RECOVERY_WAIT)
        time.sleep(HOLD_UP)
        counts, seen = relay_messages(offset, watchers)
    results = []
    for end, watcher in watchers.items():
        alerts, recoveries = counts[end, ALERT], counts[end, RECOVERY]
        results.append(Result(
            f"tunnel down {down_for:.0f} s (threshold {AFTER_SECONDS} s): {WHOSE[end]} watcher sends "
            "one alert, then one recovery, through the relay",
            ready and alerts == 1 and recoveries == 1,
            f"relay saw {alerts} alert(s), {recoveries} recovery(ies) from {RELAY_CLIENT[end]}"
            + ("" if ready else "; never saw every target answer before the outage")
            + f"; subjects {seen}; it said: {watcher.said()}"))
    return results


def flapping_sends_nothing(settings: Settings, flaps: int = FLAPS) -> list[Result]:
    """The tunnel down and up again, `flaps` times, each outage seen by both watchers at
    FLAP_RUNS runs and so measured at about one CYCLE, under the threshold: no message."""
    downs = []
    with watching(settings) as watchers:
        ready = _ready(watchers)
        offset, began = _log_size(), time.monotonic()
        settled = True
        for _ in range(flaps):
            went_down = time.monotonic()
            topology.set_home_tunnel(False)
            try:
                _wait(lambda: all(w.failed_runs_ended_since(went_down) >= FLAP_RUNS for w in watchers.values()),
                      FLAP_WAIT)
            finally:
                topology.set_home_tunnel(True)
            back = time.monotonic()
            downs.append(back - went_down)
            settled = _wait(lambda: all(w.answered_since(back) for w in watchers.values()), RECOVERY_WAIT) and settled
        time.sleep(0.5)  # a message sent by the last run would be logged by now
        counts, seen = relay_messages(offset, watchers)
    results = []
    for end, watcher in watchers.items():
        outages, messages = watcher.outages_seen(began), counts[end, ALERT] + counts[end, RECOVERY]
        # Each outage seen by two runs at least, so the watcher weighed it against its threshold.
        weighed = len(outages) >= flaps and all(len(lasted) >= FLAP_RUNS for lasted in outages.values())
        longest = max((max(lasted) for lasted in outages.values()), default=0)
        results.append(Result(
            f"tunnel flapping ({flaps} outages, each seen at {FLAP_RUNS} runs, threshold {AFTER_SECONDS} s): "
            f"{WHOSE[end]} watcher sends nothing",
            ready and settled and weighed and messages == 0,
            f"tunnel down {', '.join(f'{d:.1f}' for d in downs)} s; it saw {len(outages)} outage(s) over "
            f"{sum(map(len, outages.values()))} failing runs, the longest {longest:.1f} s; "
            f"the relay {messages} message(s) from it; subjects {seen}; "
            f"it said: {watcher.said()}"))
    return results
