"""`lab check`, bans: Mailcow's bans bite at the gateway (how the lab runs fail2ban, the
ban-list endpoint and banlist.py is in bans.py).

An attacker (mglab-attack, 203.0.113.50) fails logins through the gateway until fail2ban
bans it at home; the gateway must then drop its SYNs on every public port within one
interval (plus the run that fetches the list), while the first outside client still gets
every banner. A failure to get the list (home unreachable, garbage, a wrong id) keeps
the last good set; a list naming what must never be banned bans none of it.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from mailgate.lab import ATTACK, ATTACKER_IP, CLIENT_IP, GATEWAY, GATEWAY_TAILNET, INET, MAIL_USER, PUBLIC_IP
from mailgate.lab import bans, topology
from mailgate.lab.bans import INTERVAL, JAILS, MAX_RETRY, Fetcher, banned_at_home, covers, gateway_set
from mailgate.lab.checks import probe
from mailgate.lab.daemons import GATEWAY_DIR
from mailgate.lab.result import Result
from mailgate import catalogue
from mailgate.settings import Settings

ACCESS_LOG = GATEWAY_DIR / "access.log"
# From the ban at home to the gateway's set: the next run starts within INTERVAL and
# takes a fraction of a second; RUN_ALLOWANCE bounds that run on a busy machine.
RUN_ALLOWANCE = 2.0
BAN_WAIT = INTERVAL + RUN_ALLOWANCE
F2B_WAIT = 15  # fail2ban polls the logs each second; Dovecot and Postfix delay a failure 2 s
READY_WAIT = 15
FAILED_RUNS = 2  # runs that must meet a failure, and keep the set, before it is lifted
FAILURE_WAIT = FAILED_RUNS * (bans.FETCH_TIMEOUT + INTERVAL) + 10
ATTACKS = {"imap": ("imap_fail", "IMAP login"), "smtp": ("smtp_auth_fail", "SMTP AUTH")}
# Greetings of the public services: Postfix, Dovecot's IMAP, Dovecot's ManageSieve.
GREETINGS = ("220", "* OK", '"IMPLEMENTATION"')
SANE_ENTRY = "203.0.113.77"  # a blacklist entry as an admin types it (no prefix); must be banned


def _ports(settings: Settings, greeting: bool = False) -> list[str]:
    """Every public port (a ban covers them all), or those whose daemon greets first."""
    return [str(s.public_port) for s in settings.enabled_services
            if not greeting or s.group == catalogue.MAIL]


def _wait(condition, seconds: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _nginx_sessions_from(address: str, offset: int) -> list[str]:
    text = ACCESS_LOG.read_bytes()[offset:].decode(errors="replace") if ACCESS_LOG.exists() else ""
    return [line for line in text.splitlines() if line.startswith(f"{address}:")]


def bystander_gets_every_banner(settings: Settings) -> Result:
    answers = probe(INET, "banners", PUBLIC_IP, ",".join(_ports(settings, greeting=True)))
    ok = "error" not in answers and all(str(a).startswith(GREETINGS) for a in answers.values())
    return Result(f"meanwhile a second outside client ({CLIENT_IP}) gets every banner", ok, f"{answers}")


def _ready(fetcher: Fetcher) -> bool:
    return _wait(lambda: any(run.returncode == 0 and "networks banned" in run.said for run in fetcher.runs),
                 READY_WAIT)


def attacker_is_banned(settings: Settings, fetcher: Fetcher | None, kind: str) -> list[Result]:
    """The attacker fails MAX_RETRY logins of `kind` through the gateway: banned at home,
    then dropped at the gateway (no nginx session, connects time out) within BAN_WAIT."""
    action, what = ATTACKS[kind]
    jail = JAILS[kind]
    attack = probe(ATTACK, action, PUBLIC_IP, MAIL_USER, MAX_RETRY)
    at_home = _wait(lambda: jail in banned_at_home().get(ATTACKER_IP, set()), F2B_WAIT)
    banned = time.monotonic()
    in_set = _wait(lambda: covers(gateway_set(), ATTACKER_IP), BAN_WAIT, interval=0.05)
    lag = time.monotonic() - banned
    offset = _size(ACCESS_LOG)
    reach = probe(ATTACK, "reach", PUBLIC_IP, ",".join(_ports(settings)))
    time.sleep(0.3)  # nginx logs a session when it ends
    sessions = _nginx_sessions_from(ATTACKER_IP, offset)
    dropped = "error" not in reach and all(answer == "TimeoutError" for answer in reach.values())
    said = fetcher.said() if fetcher else "no fetcher running"
    return [
        Result(f"{MAX_RETRY} failed {what}s from an attacker ({ATTACKER_IP}) through the gateway: "
               f"fail2ban bans it at home ({jail})",
               at_home, f"attack {attack}; ban file {banned_at_home()}"),
        Result(f"then the gateway drops its SYNs to every public port within one interval ({INTERVAL:g} s) "
               f"plus a run ({RUN_ALLOWANCE:g} s); nginx logs no session from it",
               at_home and in_set and lag <= BAN_WAIT and dropped and not sessions,
               f"in the gateway's set after {lag:.2f} s: {in_set}; connects {reach}; "
               f"nginx sessions from it {sessions[:2]}; banlist.py said: {said}"),
        bystander_gets_every_banner(settings),
    ]


def unban_lets_the_attacker_in(settings: Settings, fetcher: Fetcher) -> Result:
    bans.fail2ban("unban", ATTACKER_IP)
    lifted = time.monotonic()
    out_of_set = _wait(lambda: not covers(gateway_set(), ATTACKER_IP), BAN_WAIT, interval=0.05)
    lag = time.monotonic() - lifted
    reach = probe(ATTACK, "reach", PUBLIC_IP, ",".join(_ports(settings)))
    opened = "error" not in reach and all(answer == "open" for answer in reach.values())
    return Result("`fail2ban-client unban` at home lets the attacker in again within one interval plus a run",
                  out_of_set and lag <= BAN_WAIT and opened,
                  f"out of the gateway's set after {lag:.2f} s: {out_of_set}; connects {reach}; "
                  f"banlist.py said: {fetcher.said()}")


def _failure_keeps_the_set(fetcher: Fetcher, what: str, break_it, repair) -> Result:
    before = gateway_set()
    began = time.monotonic()
    break_it()
    try:
        _wait(lambda: len(fetcher.ended_since(began)) >= FAILED_RUNS, FAILURE_WAIT, interval=0.2)
        runs = fetcher.ended_since(began)
        during = gateway_set()
    finally:
        repair()
    kept = (before is not None and during is not None and set(before) == set(during) and covers(during, ATTACKER_IP)
            and len(runs) >= FAILED_RUNS and not any("networks banned" in run.said for run in runs))
    said = runs[-1].said if runs else "nothing"
    return Result(f"{what}: the gateway keeps its last good set ({len(before or [])} networks, the attacker's "
                  f"among them) over {len(runs)} runs",
                  kept, f"before {sorted(map(str, before or []))}, after {sorted(map(str, during or []))}; "
                  f"banlist.py said: {said}")


def last_good_set_stays(fetcher: Fetcher) -> list[Result]:
    """Each way the list can fail, while the attacker is banned; after each, a good run
    again before the next."""
    results = []
    old_id = (bans.LIST_DIR / "id").read_text()

    def tunnel_back() -> None:
        topology.set_home_tunnel(True)
        _wait(lambda: topology.handshake(GATEWAY), 15)

    for what, break_it, repair in (
        ("home unreachable (tunnel down)", lambda: topology.set_home_tunnel(False), tunnel_back),
        ("the endpoint answers garbage (200, not a list)", lambda: bans.set_mode("garbage"),
         lambda: bans.set_mode("serve")),
        ("the list id is wrong (404, empty body)", bans.rotate_id, lambda: (bans.LIST_DIR / "id").write_text(old_id)),
    ):
        results.append(_failure_keeps_the_set(fetcher, what, break_it, repair))
        repaired = time.monotonic()
        _wait(lambda: any(run.returncode == 0 and "networks banned" in run.said
                          for run in fetcher.ended_since(repaired)), FAILURE_WAIT)
    return results


def never_banned_stays_unbanned(settings: Settings, fetcher: Fetcher) -> Result:
    """A list naming everything, the admin networks, the gateway's own addresses and an
    ordinary address: only the ordinary one is banned."""
    dangerous = ["0.0.0.0/0", "::/0", *settings.gateway.admin_cidrs, PUBLIC_IP, f"{GATEWAY_TAILNET}/32"]
    bans.set_blacklist([*dangerous, SANE_ENTRY])
    began = time.monotonic()
    try:
        _wait(lambda: any(run.returncode == 0 for run in fetcher.ended_since(began)), BAN_WAIT + 5)
        networks = gateway_set() or []
        bystander = bystander_gets_every_banner(settings)
    finally:
        bans.set_blacklist([])
    widest = {4: settings.bans.max_prefix_v4, 6: settings.bans.max_prefix_v6}
    too_wide = [str(n) for n in networks if n.prefixlen < widest[n.version]]
    protected = [ipaddress.ip_network(entry, strict=False) for entry in dangerous[2:]]
    touching = [str(n) for n in networks for p in protected if n.version == p.version and n.overlaps(p)]
    passed = covers(networks, SANE_ENTRY) and not too_wide and not touching and bystander.passed
    return Result(f"a list with {', '.join(dangerous)} bans none of them (and {SANE_ENTRY}, listed "
                  "too, is banned)", passed,
                  f"gateway's set {sorted(map(str, networks))}; banlist.py said: {fetcher.said()}; "
                  f"{CLIENT_IP}'s banners: {bystander.detail}")


def bans_bite(settings: Settings, config_edit=None) -> list[Result]:
    with bans.fetching(config_edit) as fetcher:
        if not _ready(fetcher):
            return [Result("banlist.py loads home's ban list on the gateway", False,
                           f"no successful run in {READY_WAIT} s; it said: {fetcher.said()}")]
        results = attacker_is_banned(settings, fetcher, "imap")
        results += last_good_set_stays(fetcher)
        results.append(unban_lets_the_attacker_in(settings, fetcher))
        results += attacker_is_banned(settings, fetcher, "smtp")[:2]
        results.append(unban_lets_the_attacker_in(settings, fetcher))
        results.append(never_banned_stays_unbanned(settings, fetcher))
    return results
