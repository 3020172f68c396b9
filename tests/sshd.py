"""A throwaway sshd on loopback, started and stopped by the tests (by PID)."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import need_program, need_root


@dataclass
class Sshd:
    port: int
    key: Path
    log: Path
    process: subprocess.Popen

    def run(self, command: str, stdin: str = "", timeout: int = 120) -> subprocess.CompletedProcess:
        """Run `command` the way pulumi-command does: as the remote command, payload on stdin."""
        argv = [
            "ssh", "-i", str(self.key), "-p", str(self.port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "root@127.0.0.1", command,
        ]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_sshd(directory: Path, env: dict[str, str] | None = None) -> Sshd:
    """`env`: environment for every session it starts (sshd's SetEnv)."""
    need_root()
    sshd = need_program("sshd")
    need_program("ssh")
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)],
                       check=True)
    (directory / "authorized_keys").write_text((directory / "client.pub").read_text())
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host'}\n"
        f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel VERBOSE\n"
        # One SetEnv line: sshd keeps the first of repeated keywords.
        + ("SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()) + "\n" if env else "")
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    log = directory / "sshd.log"
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=log.open("w"))
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return Sshd(port, directory / "client", log, process)
