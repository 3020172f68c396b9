"""The shell that remote steps run on the gateway and the home server, and the file
bundle they read from stdin.

Scripts are POSIX sh, idempotent (a file is replaced only when its bytes differ, and only
the containers whose inputs changed are recreated or restarted) and roll back on a failed
check.
Host programs are parameters (HostCommands) so the tests can run the same text against
a temporary root, a network namespace and a recording `docker`.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from mailgate.layout import (
    ACME_DNS_CONF,
    BLOCK,
    COMPOSE,
    HOME,
    COMPOSE_OVERRIDE,
    DOVECOT_EXTRA,
    GATEWAY_FIREWALL_V4,
    GATEWAY_FIREWALL_V6,
    MAILCOW_CONF,
    NGINX_PACKAGED_CONF,
    NGINX_HTTP,
    NGINX_STREAM,
    POSTFIX_EXTRA,
    POSTFIX_RELAY_MAP,
    RenderedFile,
    Secrets,
    home_files,
    home_path,
)
from mailgate.deployment import Deployment
from mailgate.renderers import render_template
from mailgate.renderers.cloud_init import GATEWAY_INPUT_CHAIN
from mailgate.managed_block import BLOCK_AWK, COMPOSE_AWK, MARKERS_AWK, awk_variables
from mailgate.renderers.compose import compose_entries
from mailgate.renderers.mailcow import POSTFIX_CONTAINER_CONF, RELAY_PASSWORD_MAP, block_keys, relay_host_key
from mailgate.renderers.sysctl import NONLOCAL_BIND_KEYS
from mailgate.renderers.bans import NFT, NFT_TABLE
from mailgate.renderers.watch import PYTHON
from mailgate.settings import Settings

POSTFIX, DOVECOT, ACME = "postfix-mailcow", "dovecot-mailcow", "acme-mailcow"
REDIS = "redis-mailcow"
DOVECOT_CONTAINER_CONF = "/etc/dovecot"

RECREATE, RESTART = "recreate", "restart"

# What a home run says where ip6tables has no raw table (a host booted without IPv6).
IPV6_FILTER_SKIPPED = ("this host has no IPv6 raw table (ip6tables -t raw; booted without IPv6?): "
                       "the IPv6 twin-port filter is skipped, the IPv4 one is loaded")

# What a changed file needs: (containers, action). The override and mailcow.conf (Mailcow's
# .env) are the containers' definition, applied by `compose up -d`, which recreates a
# container only when that changed; the others are bind mounts that a container reads
# only when it starts (Postfix builds main.cf from extra.cf then), so they need a restart.
# The acme container's environment holds mailcow.conf's ACME lines (SKIP_IP_CHECK,
# ADDITIONAL_SAN, ACME_DNS_*): Compose recreates it only when one of those changed.
HOME_EFFECTS: dict[str, tuple[str, str]] = {
    COMPOSE_OVERRIDE: (f"{POSTFIX} {DOVECOT}", RECREATE),
    MAILCOW_CONF: (f"{POSTFIX} {DOVECOT} {ACME}", RECREATE),
    ACME_DNS_CONF: (ACME, RESTART),
    DOVECOT_EXTRA: (DOVECOT, RESTART),
    POSTFIX_EXTRA: (POSTFIX, RESTART),
    POSTFIX_RELAY_MAP: (POSTFIX, RESTART),
}

# Checks of the STAGED files, run inside the containers that will read them, which get
# them as a tar on stdin (no single quote: each runs inside sh -c '...'). Postfix: main.cf
# as Mailcow's entrypoint builds it (the part above '# Overrides #' plus extra.cf), once
# with the live extra.cf and once with the new one; a warning only the new one gets is a
# failure (`postconf -n` exits 0 for an unknown parameter), and so are a map type this
# Postfix lacks (postmap's message), `postfix check`, a relay key the new map lacks, and
# a TLS level Postfix does not know (the SMTP client would only log it at every delivery;
# posttls-finger, given that level, says it at once).
POSTFIX_CHECK = (
    f"c={POSTFIX_CONTAINER_CONF}; d=$(mktemp -d) || exit 1; trap \"rm -rf $d\" EXIT; bad=0; "
    "mkdir $d/live $d/new $d/in && tar -x -C $d/in || exit 1; "
    "for v in live new; do "
    "sed \"/^# Overrides #/q\" $c/main.cf > $d/$v/main.cf && cp $c/master.cf $d/$v/ || exit 1; done; "
    "if [ -f $c/extra.cf ]; then cat $c/extra.cf >> $d/live/main.cf; fi; "
    "cat $d/in/extra.cf >> $d/new/main.cf || exit 1; "
    "for v in live new; do "
    "postconf -c $d/$v -n 2>&1 >/dev/null | grep \"warning:\" "
    "| sed \"s|$d/$v/main.cf|main.cf with the new extra.cf|\" | sort -u > $d/$v.warnings; done; "
    "if comm -13 $d/live.warnings $d/new.warnings | grep .; then bad=1; fi; "
    "types=\" $(postconf -c $d/new -m | tr \"\\n\" \" \") \"; "
    "for p in $(sed -n \"s/^[[:space:]]*\\([a-z0-9_]*_maps\\)[[:space:]]*=.*/\\1/p\" $d/in/extra.cf); do "
    "for spec in $(postconf -c $d/new -xh $p | tr \",\" \" \"); do "
    "type=${spec#proxy:}; type=${type%%:*}; "
    "case \"$types\" in *\" $type \"*) ;; *) postmap -c $d/new -q mailgate-probe \"$spec\" 2>&1; bad=1 ;; esac; "
    "done; done; "
    "level=$(postconf -c $d/new -h smtp_tls_security_level); "
    "case \"$level\" in \"\"|none|may|encrypt|dane|dane-only|fingerprint|verify|secure) ;; "
    "*) MAIL_CONFIG=$d/new posttls-finger -l \"$level\" \"[127.0.0.1]:1\" 2>&1 | grep \"fatal:\" "
    "|| echo \"smtp_tls_security_level = $level: not a TLS security level of Postfix\"; bad=1 ;; esac; "
    "postfix -c $d/new check 2>&1 || bad=1; "
    "if ! postmap -c $d/new -q \"@RELAY_KEY@\" texthash:$d/in/@RELAY_MAP@ >/dev/null; then "
    "echo \"the new relay password map has no entry for @RELAY_KEY@\"; bad=1; fi; "
    "exit $bad"
)
# Dovecot: its dovecot.conf with the include of extra.conf pointed at the staged copy.
DOVECOT_CHECK = (
    "d=$(mktemp -d) || exit 1; trap \"rm -rf $d\" EXIT; tar -x -C $d || exit 1; "
    f"sed \"s|{DOVECOT_CONTAINER_CONF}/extra.conf|$d/extra.conf|\" {DOVECOT_CONTAINER_CONF}/dovecot.conf > $d/dovecot.conf "
    "|| exit 1; "
    f"grep -q \"$d/extra.conf\" $d/dovecot.conf || {{ echo \"{DOVECOT_CONTAINER_CONF}/dovecot.conf does not include "
    f"{DOVECOT_CONTAINER_CONF}/extra.conf\"; exit 1; }}; "
    "doveconf -c $d/dovecot.conf -n >/dev/null"
)


@dataclass(frozen=True)
class HostCommands:
    """How the scripts call the host's programs; production values by default."""

    root: str = ""
    docker: str = "docker"
    docker_compose: str = "docker-compose"
    """Home: standalone Compose v2, used when `docker compose` is missing (as Mailcow does)."""
    iptables: str = "iptables"
    ip6tables: str = "ip6tables"
    systemctl: str = "systemctl"
    sysctl: str = "sysctl"
    """Home: reads and sets the kernel's non-local bind keys (tests: `ip netns exec NS sysctl`)."""
    nginx_check: str = "nginx -t"
    """Gateway: the script adds `-c <a copy of nginx.conf that loads the staged stream file>`."""
    nginx_reload: str = "systemctl reload nginx"
    persist_firewall: str = "netfilter-persistent save >/dev/null"
    wait_for_cloud_init: bool = True
    """Gateway: wait for `cloud-init status --wait` first (a fresh VM is still booting)."""
    nginx_start: str = "systemctl start nginx"
    nginx_active: str = "systemctl is-active --quiet nginx"
    listening_tcp: str = "ss -ltnpH"
    """Gateway: the listening TCP sockets with their processes, as `ss -ltnpH` prints them."""
    lock_wait_seconds: int = 120
    """Both hosts: how long a run waits for another one holding the host lock."""
    listen_wait_seconds: int = 30
    """Gateway: how long nginx may take after a start or reload to listen on every port."""
    python: str = PYTHON
    """Both hosts: the Python 3 the watcher's unit runs (alerts need it)."""
    nft: str = NFT
    """Gateway: nft, to take the ban table away when bans are turned off."""

    def iptables_restore(self, ip_version: int) -> str:
        tool = self.iptables if ip_version == 4 else self.ip6tables
        return f"{tool}-restore --noflush"

    def iptables_save(self, ip_version: int) -> str:
        tool = self.iptables if ip_version == 4 else self.ip6tables
        return f"{tool}-save"


@dataclass(frozen=True)
class ScriptFile:
    path: str
    mode: int
    services: str = ""
    action: str = ""
    """RECREATE or RESTART `services` when the file changes."""
    kind: str = ""
    ip_version: int = 4
    splice: str = ""
    """BLOCK or COMPOSE: the payload holds mailgate's block, spliced into the live file."""
    keys: str = ""
    """BLOCK: the keys the block sets (space-separated), which no later line may set."""
    private: bool = False
    """A shared file whose block holds a secret: made readable by its owner only."""


# The hosts the components' scripts act on: production programs at the real paths. Only
# the lifecycle tests (tests/lifecycle) replace these, to aim the very scripts a deployment
# runs at throwaway hosts; nothing else may change them.
DEPLOY_TARGETS: dict[str, HostCommands] = {"gateway": HostCommands(), "home": HostCommands()}


def pack(files: list[RenderedFile]) -> str:
    """The files as a base64 tar (fixed metadata, so equal content gives equal text)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for rendered in sorted(files, key=lambda f: f.path):
            data = rendered.text.encode()
            info = tarfile.TarInfo(rendered.path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), rendered.mode, 0
            archive.addfile(info, io.BytesIO(data))
    return base64.b64encode(buffer.getvalue()).decode() + "\n"


def unpack(bundle: str) -> dict[str, str]:
    """A base64 tar (as `pack` writes it) -> absolute path -> text."""
    files = {}
    raw = base64.b64decode("".join(bundle.split()))
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        for member in archive.getmembers():
            if member.isfile():
                files["/" + member.name.removeprefix("./").lstrip("/")] = archive.extractfile(member).read().decode()
    return files


AS_ROOT_DELIMITER = "MAILGATE_STEP_AS_ROOT"
# The gateway's host lock (a run at a time), and the marker a run keeps from its first
# change to its last, so the next run finishes one that was killed outright (on disk: it
# must outlive a power loss).
GATEWAY_LOCK = "/run/mailgate/gateway.lock"
GATEWAY_PENDING = "/var/lib/mailgate/gateway.pending"
LISTEN_PORT = re.compile(r"^\s*listen\s+(?:\S*:)?(\d+)[\s;]", re.M)


def as_root(script: str) -> str:
    """`script` run as root: directly when logged in as root, else through `sudo -n`,
    else stopped at the top with one line saying what is missing."""
    if any(line == AS_ROOT_DELIMITER for line in script.splitlines()):
        raise ValueError(f"a step may not contain the line {AS_ROOT_DELIMITER}")
    return render_template("scripts/as-root.sh.j2", script=script.rstrip("\n"),
                           delimiter=AS_ROOT_DELIMITER)


def render_gateway_apply(files: list[RenderedFile], commands: HostCommands = HostCommands(),
                         wait_for_cloud_init: bool | None = None, instance_id: str = "",
                         timers: list[dict] | None = None) -> str:
    """`instance_id`, the VM the script is for, is part of the text so that a new VM makes
    it a new script, which pulumi-command runs again (an update) on that VM. `timers`
    (gateway_timers'): `files` hold their programs, each turned on or off by its config."""
    if wait_for_cloud_init is None:
        wait_for_cloud_init = commands.wait_for_cloud_init
    script_files = [ScriptFile(f.path, f.mode) for f in files]
    firewall = [ScriptFile(p, 0o640, ip_version=v)
                for p, v in ((GATEWAY_FIREWALL_V4, 4), (GATEWAY_FIREWALL_V6, 6))
                if any(f.path == p for f in files)]
    nginx_files = [f for f in files if f.path in (NGINX_STREAM, NGINX_HTTP)]
    # What nginx must listen on once it serves: every port its files list.
    ports = sorted({int(port) for f in nginx_files for port in LISTEN_PORT.findall(f.text)})
    # Where each file is included from: its directory, matched by its last part (the
    # packaged nginx.conf may name it relative to the prefix).
    includes = [{"dir": str(PurePosixPath(f.path).parent), "name": PurePosixPath(f.path).name,
                 "path": f.path, "pattern": PurePosixPath(f.path).parent.name.replace(".", "\\."),
                 # A file of comments alone (port 80 closed) needs no include to take effect.
                 "required": any(line.strip() and not line.lstrip().startswith("#") for line in f.text.splitlines())}
                for f in nginx_files]
    return as_root(render_template(
        "scripts/gateway-apply.sh.j2", root=commands.root, commands=commands, files=script_files,
        firewall_files=firewall, wait_for_cloud_init=wait_for_cloud_init, instance_id=instance_id,
        packaged_conf=NGINX_PACKAGED_CONF, stream=NGINX_STREAM, nginx_includes=includes,
        http_dir=str(PurePosixPath(NGINX_HTTP).parent),
        ports=ports, chain=GATEWAY_INPUT_CHAIN, lock=GATEWAY_LOCK, pending=GATEWAY_PENDING, timers=timers or []))


# Where the payload carries what goes into a shared file: BLOCKS_DIR + its path (and,
# for the override, the entries beside it).
BLOCKS_DIR = "/.mailgate-blocks"
ENTRIES_SUFFIX = ".entries"

# Mailcow's fail2ban (the netfilter container) bans by packet source, and behind the
# gateway every client arrives from the gateway's tailnet address, which it does not
# count as private (`get_ip`: Python's is_private, false for 100.64.0.0/10): a burst of
# failed logins would ban the gateway and all mail with it. So mailgate keeps that
# address in its allowlist, the Redis hash F2B_WHITELIST ({entry: 1}) that Mailcow's UI
# edits (data/web/inc/functions.fail2ban.inc.php, action "whitelist": hSet, plus
# F2B_QUEUE_UNBAN to lift a ban in force) and that netfilter re-reads every 60 s
# (data/Dockerfiles/netfilter/main.py, whitelistUpdate; ban() skips an address any entry
# overlaps), so no restart is needed. Checked in mailcow-dockerized 0642467 (2026-08).
# The payload carries the entry; the state keeps it with "added" (mailgate put it there:
# destroy takes it out) or "found" (it was there before mailgate: it stays).
WHITELIST_ENTRY = BLOCKS_DIR + "/F2B_WHITELIST"
WHITELIST_RECORD = "fail2ban-whitelist"
# redis-cli inside redis-mailcow, with the password the container has in its environment
# (docker-compose.yml: REDISPASS=${REDISPASS}, data/conf/redis/redis-conf.sh: requirepass;
# an older Mailcow has none): in REDISCLI_AUTH, never on a command line (no single quote:
# it runs inside sh -c '...').
REDIS_CLI = '[ -z "${REDISPASS:-}" ] || export REDISCLI_AUTH="$REDISPASS"; exec redis-cli --raw "$@"'


def whitelist_entry(deployment: Deployment) -> str:
    """The gateway as an entry of Mailcow's fail2ban allowlist."""
    return f"{deployment.gateway_tailnet_ip}/32"


def home_bundle(settings: Settings, files: list[RenderedFile], deployment: Deployment) -> str:
    """The home step's stdin: whole files at their paths, blocks under BLOCKS_DIR, the
    gateway's fail2ban allowlist entry at WHITELIST_ENTRY."""
    payload = [RenderedFile(HOME, WHITELIST_ENTRY, whitelist_entry(deployment) + "\n")]
    for rendered in files:
        if not rendered.splice:
            payload.append(rendered)
            continue
        payload.append(dataclasses.replace(rendered, path=BLOCKS_DIR + rendered.path))
        if rendered.splice == COMPOSE:
            payload.append(RenderedFile(rendered.host, BLOCKS_DIR + rendered.path + ENTRIES_SUFFIX,
                                        compose_entries(settings)))
    return pack(payload)


def _home_script_file(settings: Settings, rendered: RenderedFile) -> ScriptFile:
    for relative, (services, action) in HOME_EFFECTS.items():
        if rendered.path == home_path(settings, relative):
            keys = " ".join(block_keys(rendered.text)) if rendered.splice == BLOCK else ""
            return ScriptFile(rendered.path, rendered.mode, services=services, action=action,
                              splice=rendered.splice, keys=keys, private=rendered.secret and bool(rendered.splice))
    kind = {settings.names.home_firewall_path: "firewall", settings.names.home_firewall_v6_path: "firewall",
            settings.names.home_nonlocal_bind_sysctl: "sysctl"}.get(rendered.path, "systemd")
    return ScriptFile(rendered.path, rendered.mode, kind=kind)


def home_timers(settings: Settings, commands: HostCommands = HostCommands()) -> list[dict]:
    """mailgate's timers on the Mini PC: the watcher."""
    return [_watch_timer(settings, commands)]


def _watch_timer(settings: Settings, commands: HostCommands) -> dict:
    names = settings.names
    return {"unit": names.watch_unit, "config": names.watch_config, "off": "", "why": "alerts (mailgate:alerts.to)",
            "needs": [{"command": commands.python, "package": "python3-minimal"}]}


def gateway_timers(settings: Settings, commands: HostCommands = HostCommands()) -> list[dict]:
    """mailgate's timers on the gateway: the watcher, and the ban loader, whose nft table
    goes when bans are turned off."""
    names = settings.names
    return [_watch_timer(settings, commands),
            {"unit": names.bans_unit, "config": names.bans_config,
             "off": f"{commands.nft} delete table inet {NFT_TABLE}", "why": "bans (mailgate:banlistId)",
             "needs": [{"command": commands.python, "package": "python3-minimal"},
                       {"command": commands.nft, "package": "nftables"}]}]


def whitelist_context() -> dict:
    """What the scripts need to keep the gateway in Mailcow's fail2ban allowlist."""
    return {"redis": REDIS, "redis_cli": REDIS_CLI, "whitelist_entry": WHITELIST_ENTRY,
            "whitelist_record": WHITELIST_RECORD}


def splice_context(stack: str) -> dict:
    """What the scripts need to splice the stack's blocks on the host."""
    markers = MARKERS_AWK.read_text()
    programs = {"block_awk": markers + BLOCK_AWK.read_text(), "compose_awk": markers + COMPOSE_AWK.read_text()}
    for name, program in programs.items():
        if "'" in program:
            raise ValueError(f"{name}: the script quotes it in single quotes, so it may hold none")
    return {**programs, "awk": awk_variables(stack), "blocks_dir": BLOCKS_DIR, "entries_suffix": ENTRIES_SUFFIX}


def render_home_apply(settings: Settings, files: list[RenderedFile],
                      commands: HostCommands = HostCommands()) -> str:
    return as_root(render_template(
        "scripts/home-apply.sh.j2", root=commands.root, commands=commands, state_dir=settings.names.home_state_dir,
        mailcow_dir=settings.home.mailcow_dir, files=[_home_script_file(settings, f) for f in files],
        **splice_context(settings.names.stack), **whitelist_context(),
        firewall_path=settings.names.home_firewall_path, firewall_v6_path=settings.names.home_firewall_v6_path,
        chain=settings.names.home_twin_chain, ipv6_skipped=IPV6_FILTER_SKIPPED,
        postfix_check=POSTFIX_CHECK.replace("@RELAY_KEY@", relay_host_key(settings)).replace("@RELAY_MAP@", RELAY_PASSWORD_MAP),
        dovecot_check=DOVECOT_CHECK, postfix_dir=str(PurePosixPath(home_path(settings, POSTFIX_EXTRA)).parent),
        dovecot_dir=str(PurePosixPath(home_path(settings, DOVECOT_EXTRA)).parent),
        postfix_staged=[PurePosixPath(POSTFIX_EXTRA).name, RELAY_PASSWORD_MAP],
        sysctl_keys=NONLOCAL_BIND_KEYS, lock_wait=commands.lock_wait_seconds, timers=home_timers(settings, commands),
    ))


def render_home_restore(settings: Settings, commands: HostCommands = HostCommands()) -> str:
    """The files it handles are the ones the apply lays down (their paths and kinds only)."""
    files = home_files(settings, Deployment(), Secrets())
    return as_root(render_template(
        "scripts/home-restore.sh.j2", root=commands.root, commands=commands, state_dir=settings.names.home_state_dir,
        **whitelist_context(),
        mailcow_dir=settings.home.mailcow_dir, chain=settings.names.home_twin_chain, sysctl_keys=NONLOCAL_BIND_KEYS,
        lock_wait=commands.lock_wait_seconds, files=[_home_script_file(settings, f) for f in files],
        **splice_context(settings.names.stack), timers=home_timers(settings, commands),
    ))
