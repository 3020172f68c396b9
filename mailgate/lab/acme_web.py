"""The lab's stand-in for nginx-mailcow on port 80 (standard library only; run by path).

    GET /.well-known/acme-challenge/<token>   200 and the file DIR/.well-known/acme-challenge/<token>
                                              (written there by the acme client), else 404
    anything else                             404, empty body

Every request is logged to LOG as one line, `<client address> <method> <path> <status>
<user agent>`, so a check can tell who reached home, through which address, and for what.
"""

from __future__ import annotations

import argparse
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

CHALLENGE = re.compile(r"^/\.well-known/acme-challenge/(?P<token>[A-Za-z0-9_-]+)$")


class Handler(BaseHTTPRequestHandler):
    server_version = "nginx"
    sys_version = ""
    timeout = 10

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        match = CHALLENGE.match(urlsplit(self.path).path)
        body = b""
        if match:
            path = self.server.directory / ".well-known" / "acme-challenge" / match["token"]  # type: ignore[attr-defined]
            try:
                body = path.read_bytes()
            except OSError:
                match = None
        self.send_response(200 if match else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # A request line that could not be read leaves command, path and headers unset.
        headers = getattr(self, "headers", None)
        agent = headers.get("User-Agent", "-") if headers else "-"
        command, path = getattr(self, "command", None) or "-", getattr(self, "path", "-")
        line = f"{self.client_address[0]} {command} {path} {code} {agent}\n"
        with self.server.log.open("a") as log:  # type: ignore[attr-defined]
            log.write(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    server.daemon_threads = True
    server.directory = args.dir  # type: ignore[attr-defined]
    server.log = args.log  # type: ignore[attr-defined]
    args.log.touch()
    print(f"serving {args.dir} on port {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
