"""`docker` at the lab's home: the one stand-in `lab doctor` uses, for the few commands the
doctor runs on the Mini PC. It keeps Docker Compose's contract for exactly these, answered
from the lab's own daemons and files, and refuses anything else (exit 1, a message on
stderr), so a command the doctor starts to use cannot pass unmodelled:

- `docker compose --project-directory DIR logs --no-color --no-log-prefix --since TIME
  SERVICE...`: the containers' output lines since TIME (RFC 3339, as Docker takes it),
  judged by each line's own timestamp (Docker's is when the line was written, the same
  second), oldest first; postfix-mailcow is the lab Postfix's maillog, dovecot-mailcow
  Dovecot's log.
- `... exec -T postfix-mailcow postqueue -j`: the lab Postfix's queue (postqueue -c DIR).
- `... exec -T postfix-mailcow cat /opt/postfix/conf/NAME`: NAME from the lab Postfix's
  config dir, which stands for the container's /opt/postfix/conf.
- `... exec -T redis-mailcow sh -c SCRIPT [ARG...]`: SCRIPT runs with redis-mailcow's
  environment (REDISPASS) and a `redis-cli` that answers HGET on the hashes Mailcow keeps
  (DKIM_PUB_KEYS, DKIM_SELECTORS) from the lab's DKIM key, asking for the password as
  Redis with requirepass does (REDISCLI_AUTH or -a).
DIR must be home.mailcowDir, as Compose finds no project elsewhere.

Run as `docker_shim.py CONFIG docker ARGS...` or `docker_shim.py CONFIG redis-cli ARGS...`
(the lab's wrappers named `docker` and `redis-cli` do that); CONFIG is the lab's JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

CONTAINER_CONF = PurePosixPath("/opt/postfix/conf")
SYSLOG_TIME = re.compile(r"^([A-Z][a-z]{2}) +(\d{1,2}) (\d\d:\d\d:\d\d)")


class Refused(Exception):
    pass


def _since(text: str) -> datetime:
    relative = re.fullmatch(r"(\d+)([smh])", text)
    if relative:  # Docker also takes a duration before now: 120s, 2m, 1h
        unit = {"s": 1, "m": 60, "h": 3600}[relative.group(2)]
        return datetime.now(timezone.utc) - timedelta(seconds=int(relative.group(1)) * unit)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(f"--since {text!r}: expected an RFC 3339 time or a duration like 120s") from None
    if moment.tzinfo is None:
        raise Refused(f"--since {text!r}: no time zone")
    return moment


def _line_time(line: str, now: datetime) -> datetime | None:
    """A syslog-style stamp (`Nov 27 05:01:02`, local time, no year), as Postfix's
    maillog_file and Dovecot's log_path write it; the year is the one that puts it in the past."""
    match = SYSLOG_TIME.match(line)
    if not match:
        return None
    month, day, clock = match.groups()
    stamp = datetime.strptime(f"{now.year} {month} {day} {clock}", "%Y %b %d %H:%M:%S").astimezone()
    if stamp > now + timedelta(days=1):
        stamp = stamp.replace(year=now.year - 1)
    return stamp


def logs(config: dict, args: list[str]) -> int:
    since, services, options = None, [], iter(args)
    for arg in options:
        if arg == "--since":
            since = _since(next(options, ""))
        elif arg.startswith("--since="):
            since = _since(arg.split("=", 1)[1])
        elif arg in ("--no-color", "--no-log-prefix"):
            continue
        elif arg.startswith("-"):
            raise Refused(f"logs {arg}: not modelled")
        else:
            services.append(arg)
    if since is None or not services:
        raise Refused("logs: modelled only with --since and service names")
    now = datetime.now(timezone.utc)
    lines: list[tuple[datetime, str]] = []
    for service in services:
        path = config["logs"].get(service)
        if path is None:
            raise Refused(f"no such service: {service}")
        stamp = None
        text = Path(path).read_text(errors="replace") if Path(path).exists() else ""
        for line in text.splitlines():
            stamp = _line_time(line, now) or stamp  # a line without one continues the last
            if stamp is not None and stamp >= since.replace(microsecond=0):
                lines.append((stamp, line))
    for _, line in sorted(lines, key=lambda pair: pair[0]):
        print(line)
    return 0


def exec_postfix(config: dict, command: list[str]) -> int:
    if command == ["postqueue", "-j"]:
        return subprocess.run(["postqueue", "-c", config["postfix_dir"], "-j"], check=False).returncode
    if len(command) == 2 and command[0] == "cat":
        path = PurePosixPath(command[1])
        if path.parent != CONTAINER_CONF or path.name in ("", ".", ".."):
            raise Refused(f"cat {command[1]}: only files in {CONTAINER_CONF} are modelled")
        local = Path(config["postfix_dir"], path.name)
        if not local.is_file():
            print(f"cat: {path}: No such file or directory", file=sys.stderr)
            return 1
        sys.stdout.write(local.read_text())
        return 0
    raise Refused(f"exec postfix-mailcow {' '.join(command)}: not modelled")


def exec_redis(config: dict, command: list[str]) -> int:
    if len(command) < 3 or command[:2] != ["sh", "-c"]:
        raise Refused(f"exec redis-mailcow {' '.join(command)}: only `sh -c SCRIPT` is modelled")
    env = {"PATH": f"{config['redis_bin']}:/usr/bin:/bin", "HOME": "/data",
           "REDISPASS": config["redis_password"]}
    return subprocess.run(command, env=env, check=False).returncode


def compose(config: dict, args: list[str]) -> int:
    project = None
    while args and args[0].startswith("--project-directory"):
        if "=" in args[0]:
            project, args = args[0].split("=", 1)[1], args[1:]
        else:
            project, args = (args[1] if len(args) > 1 else ""), args[2:]
    if project != config["mailcow_dir"]:
        raise Refused(f"--project-directory {project}: the lab's Mailcow is {config['mailcow_dir']}")
    if args[:1] == ["logs"]:
        return logs(config, args[1:])
    if args[:2] == ["exec", "-T"] and len(args) > 3:
        service, command = args[2], args[3:]
        if service == "postfix-mailcow":
            return exec_postfix(config, command)
        if service == "redis-mailcow":
            return exec_redis(config, command)
    raise Refused(f"compose {' '.join(args)}: not modelled")


def redis_cli(config: dict, argv: list[str]) -> int:
    auth, raw = os.environ.get("REDISCLI_AUTH"), False
    while argv and argv[0].startswith("-"):
        if argv[0] == "-a" and len(argv) > 1:
            auth, argv = argv[1], argv[2:]
            continue
        if argv[0] not in ("--raw", "--no-auth-warning"):
            raise Refused(f"redis-cli {argv[0]}: not modelled")
        raw = raw or argv[0] == "--raw"
        argv = argv[1:]
    if auth != os.environ.get("REDISPASS"):
        print("NOAUTH Authentication required." if raw else "(error) NOAUTH Authentication required.")
        return 1
    if len(argv) != 3 or argv[0].upper() != "HGET":
        raise Refused(f"redis-cli {' '.join(argv)}: only HGET KEY FIELD is modelled")
    value = config["redis"].get(argv[1], {}).get(argv[2])
    print(value if value is not None else ("" if raw else "(nil)"))
    return 0


def main(argv: list[str]) -> int:
    config_path, program, args = argv[0], argv[1], argv[2:]
    config = json.loads(Path(config_path).read_text())
    try:
        if program == "redis-cli":
            return redis_cli(config, args)
        if args[:1] != ["compose"]:
            raise Refused(f"docker {' '.join(args)}: only `docker compose` is modelled")
        return compose(config, args[1:])
    except Refused as refusal:
        print(f"{program} (mailgate lab stand-in): {refusal}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
