#!/usr/bin/python3
"""mailgate's watcher: is the other end of the tunnel answering? One alert when not.

Installed by mailgate on the gateway (watching home's twin ports over the tunnel) and on
the Mini PC (watching the gateway's public address), run once a minute by a systemd
timer. Python 3 standard library only: it runs on the hosts as they come.

Each run probes every target at once (a target answers when its daemon sends its
greeting; twin ports first get a PROXY header, implicit-TLS ports a TLS handshake).
When any target has failed at every run for `after_seconds`, it sends ONE alert through
each channel (the relay, a webhook); once every target answers again, ONE "recovered"
message. A target that comes back within the threshold sends nothing. What it
remembers between runs is a small JSON state file.

The config file (JSON, root-only on disk; systemd hands it over as a credential) holds
the channels' secrets; nothing secret is ever printed or passed on a command line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import smtplib
import socket
import ssl
import sys
import time
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

CONFIG_NAME = "watch.json"
STATE_NAME = "state.json"


def probe(target: dict, timeout: float) -> str | None:
    """None when the target's daemon greets us, else what went wrong."""
    where = f"{target['name']} ({target['host']}:{target['port']})"
    try:
        with socket.create_connection((target["host"], target["port"]), timeout=timeout) as raw:
            raw.settimeout(timeout)
            if target.get("proxy"):
                # The twin listeners expect a PROXY v1 header before anything else.
                family = "TCP6" if raw.family == socket.AF_INET6 else "TCP4"
                source, destination = raw.getsockname()[:2], raw.getpeername()[:2]
                raw.sendall(f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode())
            stream = raw
            if target.get("tls"):
                # Only whether the daemon answers matters here, not whose certificate it has.
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                stream = context.wrap_socket(raw, server_hostname=target["host"])
            greeting = stream.recv(512)
            if not greeting:
                return f"{where}: closed without a greeting"
            return None
    except OSError as error:  # refused, timed out, unreachable, a TLS failure
        return f"{where}: {error.strerror or error}"


def failures(config: dict) -> list[str]:
    targets = config["targets"]
    timeout = float(config.get("timeout_seconds", 10))
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
        results = list(pool.map(lambda target: probe(target, timeout), targets))
    return [result for result in results if result is not None]


def send_mail(channel: dict, subject: str, body: str, ca_file: str | None) -> None:
    message = EmailMessage()
    message["From"] = channel["from"]
    message["To"] = channel["to"]
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=channel["from"].rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    context = ssl.create_default_context(cafile=ca_file)
    timeout = 30
    # The mail host's name in EHLO: the host's own may be a bare label or unresolvable.
    helo = channel.get("helo")
    if channel["tls"] == "implicit":
        client = smtplib.SMTP_SSL(channel["host"], channel["port"], local_hostname=helo, timeout=timeout,
                                  context=context)
    else:
        client = smtplib.SMTP(channel["host"], channel["port"], local_hostname=helo, timeout=timeout)
    with client:
        if channel["tls"] != "implicit":
            client.starttls(context=context)
        client.login(channel["username"], channel["password"])
        client.send_message(message)


def post_webhook(channel: dict, subject: str, body: str, status: str, config: dict, ca_file: str | None) -> None:
    payload = {"text": f"{subject}\n\n{body}", "title": subject, "status": status,
               "stack": config["stack"], "end": config["end"]}
    request = urllib.request.Request(channel["url"], data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(request, timeout=30, context=context) as answer:  # noqa: S310 (URL from config)
        if not 200 <= answer.status < 300:
            raise OSError(f"the webhook answered {answer.status}")


def notify(config: dict, status: str, subject: str, body: str, ca_file: str | None) -> bool:
    """Send through every channel; True when at least one took the message."""
    sent = False
    for channel in config["channels"]:
        try:
            if channel["kind"] == "smtp":
                send_mail(channel, subject, body, ca_file)
            else:
                post_webhook(channel, subject, body, status, config, ca_file)
        except (OSError, smtplib.SMTPException, ssl.SSLError, ValueError) as error:
            # The error text never holds the password: smtplib reports codes and replies.
            print(f"could not send the {status} message through the {channel['kind']} channel: {error}")
            continue
        print(f"{status} message sent through the {channel['kind']} channel")
        sent = True
    return sent


def moment(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_once(config: dict, state: dict, now: float, ca_file: str | None = None) -> dict:
    """One check; returns the new state."""
    failed = failures(config)
    watched, stack, end = config["watched"], config["stack"], config["end"]
    if not failed:
        if state.get("alerted"):
            down_for = now - state["down_since"]
            subject = f"mailgate {stack}: {watched} answers again"
            body = (f"The {end} reaches {watched} again, after {minutes(down_for)} "
                    f"(unreachable since {moment(state['down_since'])}).\n")
            if not notify(config, "recovered", subject, body, ca_file):
                return state  # tried again at the next run
        elif state.get("down_since"):
            print(f"{watched} answers again after {minutes(now - state['down_since'])}; below the alert threshold")
        return {}
    down_since = state.get("down_since") or now
    new_state = {**state, "down_since": down_since, "last_failures": failed}
    down_for = now - down_since
    print(f"{watched} not answering for {minutes(down_for)}: " + "; ".join(failed))
    if state.get("alerted") or down_for < config["after_seconds"]:
        return new_state
    subject = f"mailgate {stack}: {watched} unreachable for {minutes(down_for)}"
    body = (f"The {end} has not reached {watched} since {moment(down_since)}.\n\n"
            + "\n".join(f"- {line}" for line in failed) + "\n\n"
            + config["advice"] + "\n\n"
            "One more message follows when it answers again; none before.\n")
    if notify(config, "alert", subject, body, ca_file):
        new_state["alerted"] = True
    return new_state


def read_state(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return {}
    except ValueError:
        print(f"{path} is not valid JSON; starting afresh")
        return {}
    return state if isinstance(state, dict) else {}


def write_state(path: str, state: dict) -> None:
    partial = f"{path}.new"
    # Its own only: it names the addresses that failed and when.
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="the JSON config (default: the systemd credential watch.json)")
    parser.add_argument("--state", help="the state file (default: state.json in the unit's state directory)")
    parser.add_argument("--ca-file", help="CA certificates for the relay and the webhook (default: the system's)")
    args = parser.parse_args(argv)
    config_path = args.config or os.path.join(os.environ.get("CREDENTIALS_DIRECTORY", "."), CONFIG_NAME)
    state_path = args.state or os.path.join(os.environ.get("STATE_DIRECTORY", "."), STATE_NAME)
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    if not config.get("enabled"):
        print("alerts are off (mailgate:alerts.to is not set); nothing to watch")
        return 0
    state = run_once(config, read_state(state_path), time.time(), args.ca_file)
    write_state(state_path, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
