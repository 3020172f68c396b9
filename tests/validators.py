"""Runs rendered files through the programs that will read them.

Each function raises AssertionError with the program's own message when it refuses the
file. Missing programs or root fail under CI and skip locally (see conftest.need).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import need_program, need_root

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAILCOW_OVERRIDES_MARKER = "# Overrides #"


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)


def _ok(result: subprocess.CompletedProcess, what: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{what} refused it (exit {result.returncode}):\n{output}"
    return output


def nginx_check(conf_text: str, tmp: Path) -> str:
    """`nginx -t` with the stream module loaded (the config includes modules-enabled)."""
    nginx = need_program("nginx")
    conf = tmp / "nginx.conf"
    conf.write_text(conf_text)
    return _ok(_run([nginx, "-t", "-c", str(conf)]), "nginx -t")


def cloud_init_check(user_data: str, tmp: Path) -> str:
    cloud_init = need_program("cloud-init")
    path = tmp / "user-data.yaml"
    path.write_text(user_data)
    output = _ok(_run([cloud_init, "schema", "--config-file", str(path)]), "cloud-init schema")
    assert "Valid cloud-config" in output, output
    return output


def postfix_config(extra_cf: str, tmp: Path) -> Path:
    """A Postfix config dir built the way Mailcow's entrypoint does it: main.cf cut after
    the '# Overrides #' line, then extra.cf appended."""
    need_program("postconf")
    conf = tmp / "postfix"
    conf.mkdir()
    base = (FIXTURES / "mailcow-like-main.cf").read_text()
    runtime = (
        f"queue_directory = {tmp / 'queue'}\n"
        f"data_directory = {tmp / 'data'}\n"
        f"{MAILCOW_OVERRIDES_MARKER}\n"
        "# lines below this marker are replaced on every start\n"
    )
    main_cf = (base + runtime).split(MAILCOW_OVERRIDES_MARKER)[0] + MAILCOW_OVERRIDES_MARKER + "\n"
    (conf / "main.cf").write_text(main_cf + extra_cf)
    shutil.copy("/usr/share/postfix/master.cf.dist", conf / "master.cf")
    return conf


# Warnings that Mailcow's own layout produces, so they say nothing about our file:
# extra.cf overrides main.cf by design, and Mailcow's SQL maps exist only in its container.
EXPECTED_POSTFIX_WARNINGS = ("overriding earlier entry", 'open "mysql" configuration "/opt/postfix/conf/sql/')


def _unexpected_warnings(output: str) -> list[str]:
    return [
        line for line in output.splitlines()
        if "warning" in line and not any(w in line for w in EXPECTED_POSTFIX_WARNINGS)
    ]


def postconf(conf: Path, *names: str) -> dict[str, str]:
    """Effective values, with postconf's warnings (unknown names, bad values) as failures."""
    result = _run([need_program("postconf"), "-c", str(conf), *names])
    output = _ok(result, "postconf")
    assert not _unexpected_warnings(result.stderr), result.stderr
    return dict(line.split(" = ", 1) for line in output.splitlines() if " = " in line)


def postfix_check(conf: Path) -> str:
    need_root()
    (conf.parent / "queue").mkdir(exist_ok=True)
    (conf.parent / "data").mkdir(exist_ok=True)
    shutil.chown(conf.parent / "data", "postfix")
    result = _run([need_program("postfix"), "-c", str(conf), "check"])
    output = _ok(result, "postfix check")
    assert not _unexpected_warnings(output), output
    return output


def postmap_query(map_text: str, key: str, tmp: Path) -> str:
    path = tmp / "password_map"
    path.write_text(map_text)
    (tmp / "main.cf").write_text("compatibility_level = 3.7\n")
    result = _run([need_program("postmap"), "-c", str(tmp), "-q", key, f"texthash:{path}"])
    _ok(result, "postmap -q")
    return result.stdout.strip()


def doveconf(extra_conf: str, tmp: Path, *names: str) -> str:
    """doveconf on a dovecot.conf that includes extra.conf the way Mailcow's does."""
    program = need_program("doveconf")
    (tmp / "extra.conf").write_text(extra_conf)
    (tmp / "dovecot.conf").write_text(
        f"base_dir = {tmp}/run\n"
        "protocols = imap sieve\n"
        "ssl = no\n"
        "service imap-login {\n"
        "  inet_listener imap_haproxy {\n    port = 10143\n    haproxy = yes\n  }\n"
        "}\n"
        f"!include_try {tmp}/extra.conf\n"
    )
    args = [program, "-c", str(tmp / "dovecot.conf")]
    args += ["-h", *names] if names else ["-n"]
    result = _run(args)
    output = _ok(result, "doveconf")
    assert "Warning" not in result.stderr and "Error" not in result.stderr, result.stderr
    return output


class Netns:
    """A throwaway network namespace for iptables checks, removed on exit."""

    def __init__(self, prefix: str = "mg3"):
        need_root()
        need_program("ip")
        self.name = f"{prefix}-{os.getpid()}-{id(self) % 10000}"

    def __enter__(self) -> "Netns":
        _ok(_run(["ip", "netns", "add", self.name]), "ip netns add")
        return self

    def __exit__(self, *exc) -> None:
        _run(["ip", "netns", "delete", self.name])

    def run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.name, *argv], input=stdin)


def iptables_restore(rules: str, netns: Netns, ip_version: int = 4) -> str:
    """Load rules the way the remote step does (--noflush), for real, in the namespace."""
    tool = need_program("iptables-restore" if ip_version == 4 else "ip6tables-restore")
    _ok(netns.run([tool, "--noflush"], stdin=rules), f"{Path(tool).name} --noflush")
    save = need_program("iptables-save" if ip_version == 4 else "ip6tables-save")
    return _ok(netns.run([save]), "iptables-save")


# The part of Mailcow's docker-compose.yml the override meets: the two services whose
# ports mailgate publishes, with Mailcow's own plain-port mappings. Written for the tests.
MAILCOW_LIKE_COMPOSE = """\
services:
  postfix-mailcow:
    image: example/postfix
    ports:
      - "${SMTP_PORT:-25}:25"
      - "${SUBMISSION_PORT:-587}:587"
  dovecot-mailcow:
    image: example/dovecot
    ports:
      - "${IMAP_PORT:-143}:143"
  rspamd-mailcow:
    image: example/rspamd
  nginx-mailcow:
    image: example/nginx
    ports:
      - "${HTTPS_PORT:-443}:${HTTPS_PORT:-443}"
"""


def compose_config(override: str, env_file: str, tmp: Path) -> dict:
    """`docker-compose config` (no engine needed) on Mailcow's file plus the override,
    with mailcow.conf as the .env file, as `docker compose` reads them in the checkout."""
    import yaml

    program = need_program("docker-compose")
    (tmp / "docker-compose.yml").write_text(MAILCOW_LIKE_COMPOSE)
    (tmp / "docker-compose.override.yml").write_text(override)
    (tmp / ".env").write_text(env_file)
    result = _run([program, "--project-directory", str(tmp), "config"], cwd=tmp)
    return yaml.safe_load(_ok(result, "docker-compose config"))
