"""Running programs in the lab's namespaces, and ending only what the lab started."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

from mailgate.lab import STATE


# Outside STATE, which `down` removes. The namespaces and STATE have fixed names, so two
# runs at once (two engineers' test runs on one machine) would tear down each other's lab.
LOCK = Path("/run/mailgate-lab.lock")
_LOCK_HELD = "MAILGATE_LAB_LOCK_HELD"


class LabError(Exception):
    pass


def _ancestors() -> set[int]:
    """This process and every process above it (read from /proc)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


@contextlib.contextmanager
def exclusive(timeout: float = 900):
    """Hold the lab for one command or one test module; a second run waits its turn.

    A process started below the holder (the tests call the CLI) is let through, since a
    second flock from below would wait for its own parent: the holder's pid travels in the
    environment and must be an ancestor. sudo drops the environment, so a run started
    through sudo waits like any other."""
    holder = os.environ.get(_LOCK_HELD, "")
    if holder.isdigit() and int(holder) in _ancestors():
        yield
        return
    try:
        handle = LOCK.open("a")
    except OSError as error:
        raise LabError(f"cannot open the lab lock {LOCK}: {error.strerror} (the lab needs root)") from None
    with handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"another lab run has held {LOCK} for {timeout:g} s") from None
                time.sleep(0.5)
        os.environ[_LOCK_HELD] = str(os.getpid())
        try:
            yield
        finally:
            os.environ.pop(_LOCK_HELD, None)
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(argv: list[str], namespace: str | None = None, check: bool = True,
        stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    if namespace:
        argv = ["ip", "netns", "exec", namespace, *argv]
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def spawn(name: str, argv: list[str], namespace: str) -> int:
    """Start a long-running program in the background and record its PID."""
    log = (STATE / f"{name}.out").open("w")
    process = subprocess.Popen(["ip", "netns", "exec", namespace, *argv], stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    record_pid(name, process.pid)
    return process.pid


def record_pid(name: str, pid: int) -> None:
    pids = STATE / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / name).write_text(str(pid))


def recorded_pids() -> dict[str, int]:
    pids = STATE / "pids"
    if not pids.is_dir():
        return {}
    return {p.name: int(p.read_text()) for p in pids.iterdir() if p.read_text().strip().isdigit()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def stop(pid: int, timeout: float = 5) -> None:
    if not alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def wait_for(condition, what: str, timeout: float = 10, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:g} s waiting for {what}")
