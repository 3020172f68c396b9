#!/usr/bin/python3
"""mailgate's ban loader on the gateway: Mailcow's bans, enforced where the packets arrive.

Behind the gateway every packet reaching home comes from the gateway's tailnet address,
so Mailcow's own bans never bite. Mailcow publishes its decisions for an external
firewall (GET https://<MAILCOW_HOSTNAME>/f2b-banlist?id=<banlist_id>: one address or
network per line). A systemd timer runs this program every few seconds; each run fetches
that list over the tailnet (TCP to home's tailnet address, TLS and certificate checked
for the mail host name, as `curl --resolve` would), keeps the entries it may enforce, and
loads them with ONE `nft -f` transaction into sets that drop those sources on every
public mail port before nginx accepts them.

Safe by construction: a list that cannot be fetched or read keeps the last good set (it
is never flushed for a failure); lines that are not addresses are skipped and counted;
networks wider than the configured prefixes, and anything touching an address that must
never be banned (the tailnet, the admin networks, the gateway's own), are refused; the set
has a size cap. Python 3 standard library only. The ban-list id is a secret: it is read
from the config (a systemd credential) and never printed.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse

CONFIG_NAME = "bans.json"
STATE_NAME = "state.json"
MAX_BYTES = 16 * 1024 * 1024
HOST_NAME = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?$")


class Unusable(Exception):
    """The list could not be fetched or read: the last good set stays."""


def fetch(config: dict, ca_file: str | None) -> str:
    timeout = float(config.get("timeout_seconds", 10))
    context = ssl.create_default_context(cafile=ca_file)
    connection = http.client.HTTPSConnection(config["host"], config["port"], timeout=timeout, context=context)
    try:
        # To home's tailnet address, as the mail host name (SNI, certificate, Host).
        raw = socket.create_connection((config["address"], config["port"]), timeout=timeout)
        connection.sock = context.wrap_socket(raw, server_hostname=config["host"])
        connection.request("GET", f"{config['path']}?id={urllib.parse.quote(config['id'], safe='')}",
                           headers={"Host": config["host"], "Accept": "text/plain"})
        response = connection.getresponse()
        body = response.read(MAX_BYTES + 1)
    except (OSError, http.client.HTTPException) as error:
        raise Unusable(f"home's ban list could not be fetched: {getattr(error, 'strerror', None) or error}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise Unusable(f"home answered HTTP {response.status} (a 404 means a wrong mailgate:banlistId)")
    if len(body) > MAX_BYTES:
        raise Unusable(f"the ban list is larger than {MAX_BYTES} bytes")
    if "html" in (response.getheader("Content-Type") or ""):
        raise Unusable("home answered with a web page, not a ban list")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Unusable("the ban list is not text") from None


def select(text: str, config: dict) -> tuple[list[str], dict[str, int]]:
    """The networks to ban (collapsed, both families) and what was left out, by reason."""
    never = [ipaddress.ip_network(network) for network in config["never"]]
    widest = {4: int(config["max_prefix"]["4"]), 6: int(config["max_prefix"]["6"])}
    counts = {"lines": 0, "host name": 0, "not an address": 0, "too wide": 0, "never banned": 0,
              "over the cap": 0}
    chosen: dict[int, list] = {4: [], 6: []}
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        counts["lines"] += 1
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            # Mailcow's blacklist may hold host names as the admin typed them: not enforced
            # here (resolving them is the admin's business), but a sign of a real list.
            counts["host name" if HOST_NAME.match(entry) else "not an address"] += 1
            continue
        if network.prefixlen < widest[network.version]:
            counts["too wide"] += 1
        elif any(network.version == kept.version and network.overlaps(kept) for kept in never):
            counts["never banned"] += 1
        else:
            chosen[network.version].append(network)
    if counts["lines"] and counts["not an address"] * 2 > counts["lines"]:
        # Mostly neither addresses nor names: an error page or a proxy's answer, not
        # Mailcow's list.
        raise Unusable(f"{counts['not an address']} of {counts['lines']} lines are not addresses")
    merged = [str(network) for version in (4, 6) for network in ipaddress.collapse_addresses(chosen[version])]
    cap = int(config["max_entries"])
    if len(merged) > cap:
        counts["over the cap"] = len(merged) - cap
        merged = merged[:cap]
    return merged, counts


def nft_script(config: dict, networks: list[str]) -> str:
    table, ports = config["table"], ", ".join(str(port) for port in config["ports"])
    v4 = [n for n in networks if ":" not in n]
    v6 = [n for n in networks if ":" in n]
    lines = [
        f"table inet {table} {{",
        "  set banned4 { type ipv4_addr; flags interval; }",
        "  set banned6 { type ipv6_addr; flags interval; }",
        # Ahead of the iptables filter (priority 0): nginx never sees a banned source.
        "  chain input { type filter hook input priority -5; policy accept; }",
        "}",
        f"flush chain inet {table} input",
        f"add rule inet {table} input tcp dport {{ {ports} }} ip saddr @banned4 drop",
        f"add rule inet {table} input tcp dport {{ {ports} }} ip6 saddr @banned6 drop",
        f"flush set inet {table} banned4",
        f"flush set inet {table} banned6",
    ]
    for name, members in (("banned4", v4), ("banned6", v6)):
        if members:
            lines.append(f"add element inet {table} {name} {{ {', '.join(members)} }}")
    return "\n".join(lines) + "\n"


def load(config: dict, networks: list[str]) -> None:
    result = subprocess.run([config["nft"], "-f", "-"], input=nft_script(config, networks),
                            capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"nft refused the set: {result.stderr.strip()}")


def read_state(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (FileNotFoundError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(path: str, state: dict) -> None:
    partial = f"{path}.new"
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def run_once(config: dict, state: dict, ca_file: str | None = None) -> dict:
    previous = state.get("networks", [])
    try:
        networks, counts = select(fetch(config, ca_file), config)
    except Unusable as problem:
        # The last good set again: after a reboot the table is gone until it is loaded.
        load(config, previous)
        print(f"{problem}; keeping the last good set ({len(previous)} networks)")
        return state
    load(config, networks)
    added, removed = len(set(networks) - set(previous)), len(set(previous) - set(networks))
    left_out = ", ".join(f"{count} {why}" for why, count in counts.items() if why != "lines" and count)
    print(f"{len(networks)} networks banned (+{added} -{removed}) from {counts['lines']} lines"
          + (f"; left out: {left_out}" if left_out else ""))
    if counts["over the cap"]:
        print(f"the set is capped at {config['max_entries']} networks (mailgate:bans.maxEntries): "
              f"{counts['over the cap']} more are not banned")
    return {"networks": networks, "at": time.time()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="the JSON config (default: the systemd credential bans.json)")
    parser.add_argument("--state", help="the state file (default: state.json in the unit's state directory)")
    parser.add_argument("--ca-file", help="CA certificates for home's web server (default: the system's)")
    args = parser.parse_args(argv)
    config_path = args.config or os.path.join(os.environ.get("CREDENTIALS_DIRECTORY", "."), CONFIG_NAME)
    state_path = args.state or os.path.join(os.environ.get("STATE_DIRECTORY", "."), STATE_NAME)
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    if not config.get("enabled"):
        print("bans are off (no mailgate:banlistId); nothing to load")
        return 0
    state = read_state(state_path)
    try:
        new_state = run_once(config, state, args.ca_file)
    except RuntimeError as error:
        print(error)
        return 1
    if new_state is not state:
        write_state(state_path, new_state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
