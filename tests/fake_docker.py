#!/usr/bin/python3
"""A stand-in for `docker compose` that keeps Compose's contract on when a container
reads its configuration. It is not Docker: nothing runs, no image exists.

The contract it keeps (docker/compose `cmd/compose/create.go` recreateStrategy and
`pkg/compose/restart.go`), per Mailcow directory (the working directory of the call):
- A container is created with a *definition*: the service definition and environment,
  here the bytes of docker-compose.yml, docker-compose.override.yml and mailcow.conf
  (Mailcow's .env) as they were at create. It reads its bind-mounted files
  (MOUNTED_FILES) when it starts, and never again while it runs.
- `compose up -d [--force-recreate] [S...]` creates S if it does not exist and
  recreates it only if its definition differs from the files now (always with
  --force-recreate). Creating reads the mounted files; an unchanged S is left alone,
  even if its mounted files changed. Without S: every service it knows.
- `compose restart [S...]` restarts existing containers: they read the mounted files
  again, keep their definition. A container that was never created is not started.
- `compose config -q` and `compose exec ...` succeed (exec does not check that the
  container runs). Anything else is refused, so a misspelt command fails loudly.
- Installed with `real_config=PROGRAM` (a real `docker-compose`, here Debian's v1, which
  reads the same files, `.env` and `${VAR:?}` the same way for what mailgate writes),
  `compose [-f F]... [--env-file E] config -q` runs PROGRAM with those options in the
  Mailcow directory: a file Compose cannot read is refused with Compose's own message.
  Global options before the command (`-f`, `--env-file`, ...) are accepted and ignored.
- `compose version --short` prints a v2 version; `docker compose` with no command prints
  help and succeeds, as the plugin does. Installed with `plugin=False`, `docker compose`
  fails as a docker without the plugin does; `standalone()` adds a `docker-compose`
  (same state) that takes the same commands, as Compose v2's standalone binary does.
- Installed with `exec_locally=True`, `compose exec [-T] S CMD...` runs CMD here, as
  root, in a private mount namespace where S's bind mounts of Mailcow's configuration
  (EXEC_MOUNTS) are mounted, with stdin passed on: the host's own postconf, postmap and
  doveconf then check the files the way the container would.
- `compose exec [-T] [-e K=V] redis-mailcow CMD...` runs CMD here in the environment
  redis-mailcow has (REDISPASS, Mailcow's docker-compose.yml; not the caller's), with a
  stand-in `redis-cli` first on PATH. That one keeps Redis's hashes per Mailcow directory
  in a file beside this script (HSET, HDEL, HEXISTS, HGETALL, with --raw's replies), and
  asks for the password as Redis with `requirepass` does (REDISCLI_AUTH or -a; empty:
  none). Its calls go to a log of their own.
- Coarser than Compose: Compose compares each service's resolved definition, so a
  mailcow.conf change that no variable of S uses leaves S alone; here it recreates S.

Every call is logged, and a call whose arguments contain the text in `<script>.fail`
fails before it changes anything; one that contains the text in `<script>.kill` does its
work, then sends SIGTERM to its whole process group (the script that called it: an
interrupted run, as an SSH drop or a timeout leaves it). State lives next to the script, never in the
Mailcow tree (tests compare that tree byte for byte).

Use it from tests through FakeDocker; the sshd runs the installed copy as a program.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFINITION_FILES = ("docker-compose.yml", "docker-compose.override.yml", "mailcow.conf")
MOUNTED_FILES = {
    "postfix-mailcow": ("data/conf/postfix/extra.cf", "data/conf/postfix/mailgate_relay_passwd"),
    "dovecot-mailcow": ("data/conf/dovecot/extra.conf",),
    "acme-mailcow": ("data/conf/acme/dns-01.conf",),
}


# The container paths Mailcow's docker-compose.yml bind-mounts from its tree.
EXEC_MOUNTS = {
    "postfix-mailcow": (("data/conf/postfix", "/opt/postfix/conf"),),
    "dovecot-mailcow": (("data/conf/dovecot", "/etc/dovecot"),),
}
GLOBAL_OPTIONS_WITH_VALUE = ("-f", "--file", "--env-file", "--project-directory", "-p", "--project-name",
                             "--profile", "--ansi", "--progress")
VERSION = "2.29.7"
REDIS = "redis-mailcow"
REDIS_PASSWORD = "fake-REDISPASS-0f9c1d3e"
REDIS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXEC_OPTIONS_WITH_VALUE = ("-e", "--env", "-u", "--user", "-w", "--workdir", "--index")

# Mounts EXEC_MOUNTS' pairs (given as arguments: SOURCE TARGET ..., then --, then the
# command) in the private namespace of `unshare -m`; a target whose top directory holds no
# such path gets an empty tmpfs over that top directory first (as /opt on a host without
# /opt/postfix), visible only inside.
_MOUNT_AND_RUN = """set -e
while [ "$1" != -- ]; do
  if [ ! -d "$2" ]; then
    top=/$(printf '%s' "$2" | cut -d/ -f2)
    mount -t tmpfs mgh10-fake-docker "$top"
    mkdir -p "$2"
  fi
  mount --bind "$1" "$2"
  shift 2
done
shift
exec "$@"
"""


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _definition(mailcow_dir: Path) -> str:
    parts = [f"{name}:{_digest(mailcow_dir / name)}" for name in DEFINITION_FILES]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _mounts(mailcow_dir: Path, name: str) -> dict[str, str | None]:
    return {relative: _digest(mailcow_dir / relative) for relative in MOUNTED_FILES.get(name, ())}


@contextmanager
def _state(script: Path):
    """The state of every Mailcow directory, {cwd: {container: record}}, under a lock."""
    state_file = Path(f"{script}.state.json")
    with open(f"{script}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        yield state
        temporary = Path(f"{state_file}.new")
        temporary.write_text(json.dumps(state, indent=1, sort_keys=True))
        temporary.replace(state_file)


def _start(record: dict, mailcow_dir: Path, name: str) -> None:
    record["mounts"] = _mounts(mailcow_dir, name)


def _services(args: list[str]) -> list[str]:
    """The service names among `up`/`restart` arguments (skipping -t/--timeout's value)."""
    names, skip = [], False
    for arg in args:
        if not skip and not arg.startswith("-"):
            names.append(arg)
        skip = arg in ("-t", "--timeout")
    return names


def _up(containers: dict, mailcow_dir: Path, args: list[str]) -> None:
    force = "--force-recreate" in args
    services = _services(args) or sorted(set(containers) | set(MOUNTED_FILES))
    definition = _definition(mailcow_dir)
    for name in services:
        record = containers.get(name)
        if record is None:
            record = containers[name] = {"recreations": 0, "restarts": 0}
        elif force or record["definition"] != definition:
            record["recreations"] += 1
        else:
            continue
        record["definition"] = definition
        _start(record, mailcow_dir, name)


def _restart(containers: dict, mailcow_dir: Path, args: list[str]) -> None:
    for name in _services(args) or sorted(containers):
        if name in containers:
            containers[name]["restarts"] += 1
            _start(containers[name], mailcow_dir, name)


def _exec_locally(mailcow_dir: Path, args: list[str]) -> int:
    args = [a for a in args if a not in ("-T", "--no-TTY", "-i", "--interactive")]
    service, command = args[0], args[1:]
    mounts = [part for source, target in EXEC_MOUNTS.get(service, ())
              for part in (str(mailcow_dir / source), target)]
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT_AND_RUN,
                           "mount-and-run", *mounts, "--", *command], check=False).returncode


@contextmanager
def _redis_store(script: Path):
    """Redis's keys of every Mailcow directory, {cwd: {key: {field: value}}}, under a lock."""
    store = Path(f"{script}.redis.json")
    with open(f"{script}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(store.read_text()) if store.exists() else {}
        yield data
        temporary = Path(f"{store}.new")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
        temporary.replace(store)


def _exec_redis(script: Path, cwd: str, args: list[str]) -> int:
    """`compose exec` in redis-mailcow: CMD with the container's environment (and -e's)."""
    env = {"PATH": f"{script}.bin:{REDIS_PATH}", "HOME": "/data", "REDISPASS": Path(f"{script}.redispass").read_text(),
           "MAILGATE_FAKE_REDIS_DIR": cwd}
    command, skip = [], False
    for index, arg in enumerate(args):
        if skip:
            skip = False
            if args[index - 1] in ("-e", "--env"):
                key, _, value = arg.partition("=")
                env[key] = value if "=" in arg else os.environ.get(key, "")
        elif arg in EXEC_OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            command = args[index + 1:]
            break
    return subprocess.run(command, env=env, check=False).returncode


def redis_cli(argv: list[str]) -> int:
    """The stand-in redis-cli inside redis-mailcow (see the module's docstring)."""
    script = Path(__file__).resolve()
    with open(f"{script}.redis-cli.log", "a") as log:
        log.write(json.dumps({"args": argv, "auth_env": "REDISCLI_AUTH" in os.environ}) + "\n")
    password, auth, raw = os.environ.get("REDISPASS", ""), os.environ.get("REDISCLI_AUTH"), False
    while argv and argv[0].startswith("-"):
        if argv[0] == "-a":
            auth, argv = argv[1], argv[2:]
            continue
        raw = raw or argv[0] == "--raw"
        argv = argv[1:]
    if auth is not None and not password:
        print("AUTH failed: ERR AUTH <password> called without any password configured for the default user. "
              "Are you sure your configuration is correct?", file=sys.stderr)
    elif password and auth != password:
        if auth is not None:
            print("AUTH failed: WRONGPASS invalid username-password pair or user is disabled.", file=sys.stderr)
        print("NOAUTH Authentication required." if raw else "(error) NOAUTH Authentication required.")
        return 1
    if not argv:
        print("fake redis-cli: no command (interactive mode is not modelled)", file=sys.stderr)
        return 2
    command, args = argv[0].upper(), argv[1:]
    with _redis_store(script) as data:
        keys = data.setdefault(os.environ["MAILGATE_FAKE_REDIS_DIR"], {})
        if command == "HSET" and len(args) >= 3 and len(args) % 2 == 1:
            table = keys.setdefault(args[0], {})
            pairs = list(zip(args[1::2], args[2::2]))
            reply = sum(field not in table for field, _ in pairs)
            table.update(pairs)
        elif command == "HDEL" and len(args) >= 2:
            table = keys.get(args[0], {})
            reply = sum(table.pop(field, None) is not None for field in args[1:])
            if not table:
                keys.pop(args[0], None)
        elif command == "HEXISTS" and len(args) == 2:
            reply = int(args[1] in keys.get(args[0], {}))
        elif command == "HGETALL" and len(args) == 1:
            table = keys.get(args[0], {})
            if raw:
                print("\n".join(part for pair in sorted(table.items()) for part in pair))
            else:
                print("\n".join(f'{n}) "{part}"' for n, part in enumerate(
                    (p for pair in sorted(table.items()) for p in pair), 1)) or "(empty array)")
            return 0
        else:
            print(f"ERR unknown command or wrong number of arguments for '{argv[0]}'" if raw else
                  f"(error) ERR unknown command or wrong number of arguments for '{argv[0]}'")
            return 1
    print(reply if raw else f"(integer) {reply}")
    return 0


def main(argv: list[str]) -> int:
    script = Path(__file__).resolve()
    program = Path(sys.argv[0]).name
    if program == "redis-cli":
        return redis_cli(argv)
    if program == "docker-compose":
        argv = ["compose", *argv]
    cwd = os.path.realpath(os.getcwd())
    with open(f"{script}.log", "a") as log:
        log.write(json.dumps({"cwd": cwd, "args": argv, "program": program}) + "\n")
    fail_file = Path(f"{script}.fail")
    if fail_file.exists() and fail_file.read_text() in " ".join(argv):
        print("fake docker: failing as told", file=sys.stderr)
        return 1
    if argv[:1] == ["compose"] and program != "docker-compose" and Path(f"{script}.no-plugin").exists():
        print("docker: 'compose' is not a docker command.", file=sys.stderr)
        return 1
    if argv == ["compose"]:
        print("Usage:  docker compose [OPTIONS] COMMAND")
        return 0
    if argv[:1] != ["compose"]:
        print(f"fake docker: unsupported call: {' '.join(argv)}", file=sys.stderr)
        return 2
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in GLOBAL_OPTIONS_WITH_VALUE else rest[1:]
    if not rest:
        print("fake docker: no compose command", file=sys.stderr)
        return 2
    command, args = rest[0], rest[1:]
    if command == "version":
        print(VERSION if "--short" in args else f"Docker Compose version v{VERSION}")
        return 0
    if command == "exec" and REDIS in args:
        return _exec_redis(script, cwd, args)
    if command == "exec" and Path(f"{script}.exec-locally").exists():
        return _exec_locally(Path(cwd), args)
    real_config = Path(f"{script}.real-config")
    if command == "config" and real_config.exists():
        options = argv[1:len(argv) - len(rest)]
        return subprocess.run([real_config.read_text(), *options, "config", "-q"], check=False).returncode
    if command in ("config", "exec"):
        return 0
    if command not in ("up", "restart"):
        print(f"fake docker: unsupported compose command: {command}", file=sys.stderr)
        return 2
    if command == "up" and "-d" not in args and "--detach" not in args:
        print("fake docker: `up` without -d would attach and never return", file=sys.stderr)
        return 2
    with _state(script) as state:
        containers = state.setdefault(cwd, {})
        (_up if command == "up" else _restart)(containers, Path(cwd), args)
    kill_file = Path(f"{script}.kill")
    if kill_file.exists() and kill_file.read_text() in " ".join(argv):
        kill_file.unlink()
        os.killpg(os.getpgrp(), signal.SIGTERM)
    return 0


@dataclass(frozen=True)
class Container:
    created: bool
    recreations: int
    restarts: int


class FakeDocker:
    """The stand-in installed as an executable at `path` (pass str(path) as `docker`)."""

    def __init__(self, path: Path | str, plugin: bool = True, exec_locally: bool = False,
                 real_config: str | None = None, redis_password: str = REDIS_PASSWORD):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(__file__, self.path)
        self.path.chmod(0o755)
        # redis-mailcow's REDISPASS ("": an older Mailcow's Redis, without a password).
        Path(f"{self.path}.redispass").write_text(redis_password)
        cli = Path(f"{self.path.resolve()}.bin/redis-cli")
        cli.parent.mkdir(exist_ok=True)
        if not cli.is_symlink():
            cli.symlink_to(self.path.resolve())
        for flag, wanted in (("no-plugin", not plugin), ("exec-locally", exec_locally)):
            marker = Path(f"{self.path}.{flag}")
            if wanted:
                marker.touch()
            else:
                marker.unlink(missing_ok=True)
        marker = Path(f"{self.path}.real-config")
        if real_config:
            marker.write_text(real_config)
        else:
            marker.unlink(missing_ok=True)

    def standalone(self, path: Path | str) -> Path:
        """A standalone `docker-compose` at `path` (its name must be docker-compose),
        sharing this one's containers and log."""
        path = Path(path)
        path.symlink_to(self.path.resolve())
        return path

    def programs(self) -> list[str]:
        """The program name of each call, oldest first (docker or docker-compose)."""
        log = Path(f"{self.path.resolve()}.log")
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line).get("program", "docker") for line in lines]

    def _records(self, mailcow_dir: Path | str) -> dict:
        state_file = Path(f"{self.path.resolve()}.state.json")
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        return state.get(os.path.realpath(mailcow_dir), {})

    def calls(self, mailcow_dir: Path | str | None = None) -> list[str]:
        """Each call's arguments joined by spaces ("compose up -d postfix-mailcow"),
        oldest first; only those made in mailcow_dir if given."""
        log = Path(f"{self.path.resolve()}.log")
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        wanted = os.path.realpath(mailcow_dir) if mailcow_dir is not None else None
        return [" ".join(e["args"]) for e in entries if wanted is None or e["cwd"] == wanted]

    def redis_hash(self, mailcow_dir: Path | str, key: str) -> dict[str, str]:
        """A hash in redis-mailcow of that Mailcow (HGETALL), {} when it has none."""
        store = Path(f"{self.path.resolve()}.redis.json")
        data = json.loads(store.read_text()) if store.exists() else {}
        return data.get(os.path.realpath(mailcow_dir), {}).get(key, {})

    def redis_cli(self, mailcow_dir: Path | str, *args: str) -> subprocess.CompletedProcess:
        """`redis-cli ARGS` in that Mailcow's redis-mailcow, authenticated as its containers are."""
        return subprocess.run(
            [str(self.path), "compose", "exec", "-T", REDIS, "sh", "-c",
             'REDISCLI_AUTH="$REDISPASS" exec redis-cli --raw "$@"', "redis-cli", *args],
            cwd=mailcow_dir, capture_output=True, text=True, check=False)

    def redis_calls(self) -> list[dict]:
        """Each redis-cli call: {"args": [...], "auth_env": whether REDISCLI_AUTH was set}."""
        log = Path(f"{self.path.resolve()}.redis-cli.log")
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def container(self, mailcow_dir: Path | str, name: str) -> Container:
        record = self._records(mailcow_dir).get(name)
        if record is None:
            return Container(created=False, recreations=0, restarts=0)
        return Container(created=True, recreations=record["recreations"], restarts=record["restarts"])

    def serves(self, mailcow_dir: Path | str, name: str) -> bool:
        """True when the container runs with the definition and mounted files on disk now."""
        record = self._records(mailcow_dir).get(name)
        directory = Path(os.path.realpath(mailcow_dir))
        return (record is not None and record["definition"] == _definition(directory)
                and record["mounts"] == _mounts(directory, name))

    def fail_on(self, text: str | None) -> None:
        """Fail every later call whose arguments contain `text`; None: fail nothing."""
        fail_file = Path(f"{self.path}.fail")
        if text is None:
            fail_file.unlink(missing_ok=True)
        else:
            fail_file.write_text(text)

    def kill_on(self, text: str | None) -> None:
        """The next call whose arguments contain `text` does its work, then terminates the
        script that made it (SIGTERM to its process group); None: kill nothing."""
        kill_file = Path(f"{self.path}.kill")
        if text is None:
            kill_file.unlink(missing_ok=True)
        else:
            kill_file.write_text(text)

    def compose(self, mailcow_dir: Path | str, *args: str) -> subprocess.CompletedProcess:
        """Run `docker compose ARGS` in mailcow_dir, as the scripts do (e.g. to start a
        Mailcow that was running before mailgate)."""
        return subprocess.run([str(self.path), "compose", *args], cwd=mailcow_dir,
                              capture_output=True, text=True, check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
