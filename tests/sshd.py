"""A throwaway sshd on loopback, started and stopped by the tests (by PID), and the logins
the remote steps meet on real hosts: root, a user with passwordless sudo (Oracle's
`ubuntu`), and a user without it."""

from __future__ import annotations

import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
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
    user: str = "root"
    keys_dir: Path | None = None
    host_key_file: Path | None = None

    def run(self, command: str, stdin: str = "", timeout: int = 120,
            host_key: str | None = None) -> subprocess.CompletedProcess:
        """Run `command` the way pulumi-command does: as the remote command, payload on stdin.
        With `host_key` ('ssh-ed25519 AAAA...') only a server holding that key is accepted,
        and only that key type is asked for (pulumi-command remote/connection.go: FixedHostKey,
        HostKeyAlgorithms = the key's type)."""
        checking = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        known = None
        if host_key:
            known = tempfile.NamedTemporaryFile("w", prefix="mailgate-known-hosts-", delete=False)
            known.write(f"[127.0.0.1]:{self.port} {host_key.strip()}\n")
            known.close()
            checking = ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known.name}",
                        "-o", f"HostKeyAlgorithms={host_key.split()[0]}"]
        argv = [
            "ssh", "-i", str(self.key), "-p", str(self.port), "-o", "BatchMode=yes", *checking,
            "-o", "LogLevel=ERROR", f"{self.user}@127.0.0.1", command,
        ]
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        finally:
            if known:
                Path(known.name).unlink(missing_ok=True)

    def host_public_key(self) -> str:
        """The key this sshd presents ('ssh-ed25519 AAAA...')."""
        assert self.host_key_file is not None
        return " ".join(Path(f"{self.host_key_file}.pub").read_text().split()[:2])

    def replace_host_key(self, private_key: str) -> None:
        """Serve `private_key` (OpenSSH format) from now on, as a host whose key file was
        replaced and whose sshd was restarted (here: SIGHUP, sshd re-reads its keys)."""
        assert self.host_key_file is not None
        self.host_key_file.write_text(private_key)
        self.host_key_file.chmod(0o600)
        public = subprocess.run(["ssh-keygen", "-y", "-f", str(self.host_key_file)],
                                capture_output=True, text=True, check=True).stdout
        Path(f"{self.host_key_file}.pub").write_text(public)
        self.process.send_signal(signal.SIGHUP)
        for _ in range(50):
            scanned = subprocess.run(["ssh-keyscan", "-p", str(self.port), "-t", "ed25519", "127.0.0.1"],
                                     capture_output=True, text=True, check=False).stdout
            if public.split()[1] in scanned:
                return
            time.sleep(0.1)
        raise AssertionError("sshd did not take its new host key")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.keys_dir:
            shutil.rmtree(self.keys_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Test logins; created on first use, removed by `remove_logins` at the end of the session.
SUDO_LOGIN, PLAIN_LOGIN = "mailgate-t-sudo", "mailgate-t-plain"
SUDOERS = Path("/etc/sudoers.d/mailgate-tests")


def ensure_login(user: str) -> str:
    """A system user that can log in with a key; SUDO_LOGIN may run anything as root
    without a password, as Oracle's `ubuntu` can."""
    need_root()
    for program in ("useradd", "usermod", "sudo", "visudo"):
        need_program(program)
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/bin/sh", "--home-dir", "/",
                        "--no-create-home", user], check=True)
    # Not locked ('!'): sshd without PAM refuses a locked account even with a key. A home
    # that exists keeps sshd from printing a warning into the step's stderr.
    subprocess.run(["usermod", "-p", "*", "-d", "/", user], check=True)
    if user == SUDO_LOGIN and not SUDOERS.exists():
        rule = f"{SUDO_LOGIN} ALL=(root) NOPASSWD: ALL\n"
        staged = SUDOERS.with_name(".mailgate-tests")
        staged.write_text(rule)
        staged.chmod(0o440)
        subprocess.run(["visudo", "-cqf", str(staged)], check=True)
        staged.rename(SUDOERS)
    return user


def remove_logins() -> None:
    SUDOERS.unlink(missing_ok=True)
    for user in (SUDO_LOGIN, PLAIN_LOGIN):
        subprocess.run(["userdel", user], capture_output=True, check=False)


def start_sshd(directory: Path, env: dict[str, str] | None = None, user: str = "root") -> Sshd:
    """`env`: environment for every session it starts (sshd's SetEnv); `user`: who logs in."""
    need_root()
    sshd = need_program("sshd")
    need_program("ssh")
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)],
                       check=True)
    # sshd reads the key list as the user who logs in: keep it where that user can.
    keys_dir = Path(tempfile.mkdtemp(prefix="mailgate-sshd-keys-"))
    keys_dir.chmod(0o755)
    authorized = keys_dir / "authorized_keys"
    authorized.write_text((directory / "client.pub").read_text())
    authorized.chmod(0o644)
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host'}\n"
        f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
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
    return Sshd(port, directory / "client", log, process, user, keys_dir, directory / "host")
