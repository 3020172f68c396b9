"""The lab's stand-in for Mailcow's ban-list endpoint (standard library only; run by path).

    GET /f2b-banlist?id=<id>  200 text/plain: the blacklist entries as typed, then the
                              active bans as CIDRs, IPv4 before IPv6, one a line, no
                              trailing newline (Mailcow's format, see mailcow-facts.md)
    anything else             404, empty body (a wrong id included)

Everything is read from DIR on each request, so the checks steer it by writing files:
`id` (the current list id; rotating it makes the gateway's id wrong), `mode` (`serve`, or
`garbage`: a 200 whose text is not a ban list), `blacklist` (entries as typed) and
`bans` (written by fail2ban's action: "<address> <jail>" a line).
"""

from __future__ import annotations

import argparse
import ipaddress
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

PATH = "/f2b-banlist"
# What a broken PHP behind a working nginx might send with a 200: text, not addresses.
GARBAGE = ("Warning: Redis::hGetAll(): connection lost in /web/inc/functions.fail2ban.inc.php\n"
           "Fatal error: Uncaught RedisException: read error on connection\n"
           "Stack trace:\n#0 {main}\n  thrown in /web/inc/functions.fail2ban.inc.php on line 12")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def ban_list(directory: Path) -> str:
    blacklist = [line.strip() for line in _read(directory / "blacklist").splitlines() if line.strip()]
    banned = {ipaddress.ip_network(line.split()[0]) for line in _read(directory / "bans").splitlines()
              if line.strip()}
    active = sorted(banned, key=lambda network: (network.version, network))
    return "\n".join([*blacklist, *map(str, active)])


class Handler(BaseHTTPRequestHandler):
    server_version = "nginx"
    sys_version = ""
    timeout = 10

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        directory: Path = self.server.directory  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        if url.path != PATH or parse_qs(url.query).get("id") != [_read(directory / "id").strip()]:
            self._answer(404, "")
        elif _read(directory / "mode").strip() == "garbage":
            self._answer(200, GARBAGE)
        else:
            self._answer(200, ban_list(directory))

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        # Never the id: the request line is logged without its query.
        sys.stdout.write(f"{self.address_string()} {self.command} {urlsplit(self.path).path} "
                         f"{args[1] if len(args) > 1 else ''}\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=443)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    server.daemon_threads = True
    server.directory = args.dir  # type: ignore[attr-defined]
    # The handshake happens in the handler's thread, so a stalled client holds up no one.
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(f"serving {PATH} on port {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
