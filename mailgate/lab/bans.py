"""Bans in the lab: Mailcow's netfilter and its ban list at home, the real banlist.py on
the gateway.

What the lab substitutes, and why (nothing else):
- Mailcow's netfilter container: Debian's fail2ban on home, with its own config dir,
  socket, pid file and log under STATE (fail2ban.conf, jail.conf and filters in
  mailgate/templates/lab/fail2ban/). Its jails use Mailcow's default regexes for Postfix
  SASL and Dovecot login failures on the Mailcow namespace's real logs, where the client
  address is the one the PROXY header carried. It bans after MAX_RETRY failures
  (Mailcow: 10, which would only make the checks slower). Its action writes each ban to a
  file, where Mailcow writes it to Redis (F2B_ACTIVE_BANS).
- Mailcow's nginx and PHP answering /f2b-banlist: banlist_server.py in the Mailcow
  namespace on the HTTPS port, published like Mailcow's nginx (docker_rules.py), with a
  certificate for mailHostname from the lab CA. It serves the ban file and a blacklist
  file in Mailcow's format; the checks switch it to garbage, or rotate its id (the
  gateway's id then gets 404, as after a rotation in Mailcow's UI).
- No systemd timer: a bounded loop runs banlist.py in the gateway namespace every
  INTERVAL s (a deployment: bans.intervalSeconds, at least 10), as root (a deployment:
  an unprivileged user with CAP_NET_ADMIN), with the rendered config (the lab's list id
  for the secret mailgate:banlistId) and --config/--state paths under STATE, and the lab
  CA as --ca-file (a deployment: the system's CA store, which trusts Mailcow's Let's
  Encrypt certificate), and a fetch timeout of FETCH_TIMEOUT s instead of the rendered 10.
  nft acts on the gateway namespace's own ruleset.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mailgate.deployment import Deployment
from mailgate.lab import GATEWAY, GATEWAY_TAILNET, HOME, MAILCOW, PUBLIC_IP, STATE
from mailgate.lab.daemons import DOVECOT_LOG, HOME_DIR, POSTFIX_LOG, RELAY_CA, issue_certificate
from mailgate.lab.system import LabError, run, spawn, wait_for
from mailgate.renderers import render_template
from mailgate.renderers.bans import BANLIST_PROGRAM, NFT_TABLE, render_banlist_config
from mailgate.renderers.watch import PYTHON
from mailgate.settings import Settings

BANS_DIR = HOME_DIR / "bans"
F2B_DIR = BANS_DIR / "fail2ban"
F2B_SOCKET, F2B_PIDFILE = F2B_DIR / "fail2ban.sock", F2B_DIR / "fail2ban.pid"
LIST_DIR = BANS_DIR / "list"  # what the endpoint serves: id, mode, blacklist, bans
BAN_FILE = LIST_DIR / "bans"
LIST_TLS = BANS_DIR / "tls"
SERVER = Path(__file__).resolve().parent / "banlist_server.py"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "lab" / "fail2ban"
MAX_RETRY = 3
JAILS = {"imap": "mailgate-lab-dovecot", "smtp": "mailgate-lab-postfix"}

FETCH_DIR = STATE / "gw-bans"  # 0700: the config holds the list id
RENDERED_CONFIG = FETCH_DIR / "rendered.json"
INTERVAL = 1
FETCH_TIMEOUT = 2  # the rendered timeout_seconds (10) cut, so a dead tunnel costs each run 2 s
LOOP_LIMIT = 300  # seconds a fetcher loop runs at most, whatever its check does
RUN_TIMEOUT = 60


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def start_fail2ban() -> None:
    _write(F2B_DIR / "fail2ban.conf", render_template(
        "lab/fail2ban/fail2ban.conf.j2", dir=F2B_DIR, socket=F2B_SOCKET, pidfile=F2B_PIDFILE))
    _write(F2B_DIR / "jail.conf", render_template(
        "lab/fail2ban/jail.conf.j2", max_retry=MAX_RETRY, dovecot_log=DOVECOT_LOG, postfix_log=POSTFIX_LOG))
    for jail in JAILS.values():
        _write(F2B_DIR / "filter.d" / f"{jail}.conf", (TEMPLATES / f"{jail}.conf").read_text())
    _write(F2B_DIR / "action.d" / "mailgate-lab-banfile.conf",
           render_template("lab/fail2ban/mailgate-lab-banfile.conf.j2", banfile=BAN_FILE))
    for log in (DOVECOT_LOG, POSTFIX_LOG):  # fail2ban will not start a jail on a missing log
        log.touch()
    spawn("fail2ban", ["fail2ban-server", "-f", "-x", "-c", str(F2B_DIR), "-s", str(F2B_SOCKET),
                       "-p", str(F2B_PIDFILE), "start"], HOME)
    wait_for(lambda: all(jail in fail2ban("status", check=False).stdout for jail in JAILS.values()),
             "fail2ban's jails", timeout=20, interval=0.3)


def fail2ban(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["fail2ban-client", "-c", str(F2B_DIR), "-s", str(F2B_SOCKET), *args], HOME, check=check)


def start_banlist_server(settings: Settings) -> None:
    issue_certificate(settings.mail_hostname, LIST_TLS)
    _write(LIST_DIR / "id", str(uuid.uuid4()))
    _write(LIST_DIR / "mode", "serve")
    _write(LIST_DIR / "blacklist", "")
    BAN_FILE.touch()
    spawn("banlist-server", [PYTHON, str(SERVER), "--dir", str(LIST_DIR), "--cert", str(LIST_TLS / "cert.pem"),
                             "--key", str(LIST_TLS / "key.pem"), "--port", str(settings.bans.home_https_port)],
          MAILCOW)
    log = STATE / "banlist-server.out"
    wait_for(lambda: log.exists() and "serving" in log.read_text(), "the ban-list endpoint", timeout=15)


def write_gateway_config(settings: Settings) -> None:
    """The config a deployment lays down on the gateway, with the lab's list id."""
    deployment = Deployment(gateway_tailnet_ip=GATEWAY_TAILNET, public_ipv4=PUBLIC_IP)
    text = render_banlist_config(settings, (LIST_DIR / "id").read_text().strip(), deployment,
                                 interval_seconds=INTERVAL)
    if not json.loads(text).get("enabled"):
        raise LabError("the rendered ban-list config says bans are off")
    FETCH_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    RENDERED_CONFIG.touch(mode=0o600)
    RENDERED_CONFIG.write_text(text)


def start(settings: Settings) -> None:
    start_fail2ban()
    start_banlist_server(settings)
    write_gateway_config(settings)


# The checks' switches on the endpoint.
def set_mode(mode: str) -> None:
    _write(LIST_DIR / "mode", mode)


def set_blacklist(entries: list[str]) -> None:
    _write(LIST_DIR / "blacklist", "\n".join(entries))


def rotate_id() -> str:
    new = str(uuid.uuid4())
    _write(LIST_DIR / "id", new)
    return new


def banned_at_home() -> dict[str, set[str]]:
    """Address -> the jails that ban it, as fail2ban's action wrote them."""
    bans: dict[str, set[str]] = {}
    for line in BAN_FILE.read_text().splitlines() if BAN_FILE.exists() else []:
        address, _, jail = line.partition(" ")
        bans.setdefault(address, set()).add(jail)
    return bans


def gateway_set() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """Every network in the gateway's two ban sets; None while the table does not exist."""
    result = run(["nft", "-j", "list", "table", "inet", NFT_TABLE], GATEWAY, check=False)
    if result.returncode != 0:
        return None
    networks = []
    for item in json.loads(result.stdout)["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            element = element["elem"]["val"] if isinstance(element, dict) and "elem" in element else element
            if isinstance(element, str):
                networks.append(ipaddress.ip_network(element))
            elif "prefix" in element:
                networks.append(ipaddress.ip_network(f"{element['prefix']['addr']}/{element['prefix']['len']}"))
            elif "range" in element:
                low, high = map(ipaddress.ip_address, element["range"])
                networks += ipaddress.summarize_address_range(low, high)
    return networks


def covers(networks, address: str) -> bool:
    return any(ipaddress.ip_address(address) in network for network in networks or [])


@dataclass
class Run:
    started: float
    ended: float
    returncode: int | None
    said: str


class Fetcher:
    """banlist.py in the gateway namespace, started every INTERVAL s (as a timer would)
    until stopped, with the rendered config. `config_edit` (dict -> dict) changes that
    config: the tests use it to break the gateway's side on purpose."""

    def __init__(self, config_edit=None):
        self.config, self.state = FETCH_DIR / "bans.json", FETCH_DIR / "state.json"
        self.state.unlink(missing_ok=True)  # each check starts with nothing remembered
        config = json.loads(RENDERED_CONFIG.read_text())
        config["timeout_seconds"] = FETCH_TIMEOUT
        self.config.touch(mode=0o600)
        self.config.write_text(json.dumps(config_edit(config) if config_edit else config, indent=2) + "\n")
        self.runs: list[Run] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="banlist", daemon=True)

    def run_once(self) -> Run:
        argv = [PYTHON, str(BANLIST_PROGRAM), "--config", str(self.config), "--state", str(self.state),
                "--ca-file", str(RELAY_CA)]
        started = time.monotonic()
        try:
            result = run(argv, GATEWAY, check=False, timeout=RUN_TIMEOUT)
            return Run(started, time.monotonic(), result.returncode, (result.stdout + result.stderr).strip())
        except subprocess.TimeoutExpired:
            return Run(started, time.monotonic(), None, f"the run did not end within {RUN_TIMEOUT} s")

    def _loop(self) -> None:
        deadline = time.monotonic() + LOOP_LIMIT
        while not self._stop.is_set() and time.monotonic() < deadline:
            ran = self.run_once()
            self.runs.append(ran)
            self._stop.wait(max(0.0, ran.started + INTERVAL - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=RUN_TIMEOUT + 10)

    def ended_since(self, moment: float) -> list[Run]:
        return [ran for ran in list(self.runs) if ran.started >= moment]

    def said(self) -> str:
        return self.runs[-1].said.splitlines()[-1][:200] if self.runs and self.runs[-1].said else "nothing"


@contextlib.contextmanager
def fetching(config_edit=None):
    fetcher = Fetcher(config_edit)
    fetcher.start()
    try:
        yield fetcher
    finally:
        fetcher.stop()
