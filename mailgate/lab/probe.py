"""Client actions the checks run inside a namespace: `python -m mailgate.lab.probe ACTION ...`.

Prints one JSON object. Every network call has a timeout; nothing loops unbounded.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 10


def _tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the lab CA is throwaway; we test addresses, not PKI
    return context


def _smtp(host: str, port: int):
    if port in (465,):
        return smtplib.SMTP_SSL(host, port, timeout=TIMEOUT, context=_tls())
    client = smtplib.SMTP(host, port, timeout=TIMEOUT)
    client.ehlo("client.example.net")
    if port == 587:
        client.starttls(context=_tls())
        client.ehlo("client.example.net")
    return client


def send(host: str, port: str, sender: str, recipient: str, subject: str) -> dict:
    """Try one message; report the server's answer (code 250 = accepted)."""
    try:
        client = _smtp(host, int(port))
        message = f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nlab\r\n"
        try:
            client.sendmail(sender, [recipient], message)
            return {"code": 250}
        except smtplib.SMTPRecipientsRefused as error:
            return {"code": error.recipients[recipient][0], "text": error.recipients[recipient][1].decode()}
        except smtplib.SMTPResponseException as error:
            return {"code": error.smtp_code, "text": str(error.smtp_error)}
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                pass
    except (smtplib.SMTPException, OSError) as error:
        return {"code": None, "text": f"{type(error).__name__}: {error}"}


def submit(host: str, port: str, user: str, password: str, recipient: str, subject: str) -> dict:
    """Authenticated submission (STARTTLS on 587) of one message from `user`."""
    try:
        client = _smtp(host, int(port))
        try:
            client.login(user, password)
            message = f"From: {user}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\nlab\r\n"
            client.sendmail(user, [recipient], message)
            return {"code": 250}
        finally:
            client.quit()
    except smtplib.SMTPResponseException as error:
        return {"code": error.smtp_code, "text": str(error.smtp_error)}
    except (smtplib.SMTPException, OSError) as error:
        return {"code": None, "text": f"{type(error).__name__}: {error}"}


def banner(host: str, port: str) -> dict:
    """Connect and read whatever the server says first (nothing, if it closes)."""
    start = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            if int(port) in (465, 993):
                sock = _tls().wrap_socket(sock)
            data = sock.recv(200).decode(errors="replace")
    except OSError as error:
        return {"banner": None, "error": type(error).__name__, "seconds": time.monotonic() - start}
    return {"banner": data, "seconds": time.monotonic() - start}


def connect(host: str, port: str, forged: str = "") -> dict:
    """Open a TCP connection (optionally sending a PROXY header) and say how it went."""
    try:
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            if forged:
                sock.sendall(_proxy_header(forged, host, port))
            return {"result": "open"}
    except ConnectionRefusedError:
        return {"result": "refused"}
    except OSError as error:
        return {"result": type(error).__name__}


def _proxy_header(client: str, server: str, port: str) -> bytes:
    """PROXY v1 claiming `client`: TCP6 for an IPv6 claim (the server's IPv4 mapped)."""
    if ":" in client:
        return f"PROXY TCP6 {client} ::ffff:{server} 40000 {port}\r\n".encode()
    return f"PROXY TCP4 {client} {server} 40000 {port}\r\n".encode()


def forge(host: str, ports: str, forged: str) -> dict:
    """To each port at once: connect (3 s), send a PROXY header claiming `forged`, and
    read what the server says first (after TLS on the implicit-TLS twins). "open, ..."
    whenever the connection was established, whatever followed."""
    def one(port: str) -> str:
        try:
            sock = socket.create_connection((host, int(port)), timeout=3)
        except ConnectionRefusedError:
            return "refused"
        except OSError as error:
            return type(error).__name__
        try:
            sock.sendall(_proxy_header(forged, host, port))
            sock.settimeout(TIMEOUT)  # postscreen may hold its banner back a while
            if int(port) in (10465, 10993):
                sock = _tls().wrap_socket(sock)
            said = sock.recv(200).decode(errors="replace").strip()
            return f"open, banner {said[:40]}" if said else "open, closed without a word"
        except OSError as error:
            return f"open, then {type(error).__name__}"
        finally:
            sock.close()

    port_list = ports.split(",")
    with ThreadPoolExecutor(len(port_list)) as pool:
        return dict(zip(port_list, pool.map(one, port_list)))


def fetch(host: str, user: str, password: str, subject: str) -> dict:
    """IMAPS login and count messages with that subject."""
    try:
        client = imaplib.IMAP4_SSL(host, 993, ssl_context=_tls(), timeout=TIMEOUT)
        client.login(user, password)
        client.select("INBOX")
        _, found = client.search(None, "SUBJECT", f'"{subject}"')
        client.logout()
        return {"count": len(found[0].split())}
    except (imaplib.IMAP4.error, OSError) as error:
        return {"count": None, "error": str(error)}


def idle(host: str, user: str, password: str, seconds: str) -> dict:
    """Log in over IMAPS, sit idle (no command, not even IDLE, whose server keepalives
    would reset nginx's timer) for `seconds`, then see whether the session still answers."""
    try:
        client = imaplib.IMAP4_SSL(host, 993, ssl_context=_tls(), timeout=TIMEOUT)
        client.login(user, password)
        client.select("INBOX")
    except (imaplib.IMAP4.error, OSError) as error:
        return {"open": None, "error": f"login: {error}"}
    time.sleep(min(float(seconds), 3600))
    try:
        status, _ = client.noop()
        client.logout()
        return {"open": status == "OK"}
    except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError) as error:
        return {"open": False, "error": f"{type(error).__name__}: {error}"}


def reach(host: str, ports: str) -> dict:
    """Try a TCP connection to each port (1 s each, at once): open, refused or timeout."""
    def one(port: str) -> str:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return "open"
        except ConnectionRefusedError:
            return "refused"
        except OSError as error:
            return type(error).__name__

    port_list = ports.split(",")
    with ThreadPoolExecutor(len(port_list)) as pool:
        return dict(zip(port_list, pool.map(one, port_list)))


def latency(host: str, port: str, count: str) -> dict:
    """Seconds from connect to the first banner byte, `count` times (bounded)."""
    samples = []
    for _ in range(min(int(count), 2000)):
        start = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            sock.recv(100)
        samples.append(time.perf_counter() - start)
    return {"samples": samples}


def hold(host: str, port: str, count: str, seconds: str) -> dict:
    """Open `count` sessions, read each banner, keep them idle `seconds`, report how many
    were still open at the end."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = min(int(count), 20000) + 64
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted, hard))
    sockets = []
    for _ in range(min(int(count), 20000)):
        sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        sock.recv(200)
        sockets.append(sock)
    print(json.dumps({"opened": len(sockets)}), flush=True)
    time.sleep(float(seconds))
    alive = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            alive += sock.recv(1) != b""
        except BlockingIOError:
            alive += 1  # nothing to read and not closed: still open
        except OSError:
            pass
        sock.close()
    return {"opened": len(sockets), "still_open": alive}


def banners(host: str, ports: str) -> dict:
    """To each port at once: connect and read the first words (after TLS on 465 and 993)."""
    def one(port: str) -> str:
        said = banner(host, port)
        return (said["banner"] or "").strip()[:40] if said["banner"] is not None else said["error"]

    port_list = ports.split(",")
    with ThreadPoolExecutor(len(port_list)) as pool:
        return dict(zip(port_list, pool.map(one, port_list)))


def _one_failure(login) -> str:
    try:
        return login()
    except (OSError, smtplib.SMTPException, imaplib.IMAP4.error) as error:
        return type(error).__name__


def imap_fail(host: str, user: str, count: str) -> dict:
    """`count` IMAPS logins with a wrong password at once, each on its own connection, so
    each is one logged failure. "refused" for each the server turned down."""
    def login() -> str:
        client = imaplib.IMAP4_SSL(host, 993, ssl_context=_tls(), timeout=TIMEOUT)
        try:
            client.login(user, "not-the-password")
            return "accepted"
        except imaplib.IMAP4.error:
            return "refused"
        finally:
            try:
                client.logout()
            except (imaplib.IMAP4.error, OSError):
                pass

    with ThreadPoolExecutor(min(int(count), 20)) as pool:
        return {"answers": list(pool.map(lambda _: _one_failure(login), range(min(int(count), 20))))}


def smtp_auth_fail(host: str, user: str, count: str) -> dict:
    """`count` AUTH PLAIN attempts with a wrong password on 587 (STARTTLS) at once, one
    per connection and one mechanism only, so each is one logged failure."""
    def login() -> str:
        client = _smtp(host, 587)
        try:
            client.user, client.password = user, "not-the-password"
            client.auth("PLAIN", client.auth_plain)
            return "accepted"
        except smtplib.SMTPAuthenticationError:
            return "refused"
        except smtplib.SMTPException as error:
            return f"{type(error).__name__}: {error}"[:80]
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                pass

    with ThreadPoolExecutor(min(int(count), 20)) as pool:
        return {"answers": list(pool.map(lambda _: _one_failure(login), range(min(int(count), 20))))}


def _reply(sock: socket.socket) -> str:
    """One whole SMTP reply (every line up to the one with a space after the code)."""
    data = b""
    while not data.endswith(b"\r\n") or data.splitlines()[-1][3:4] == b"-":
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError(f"closed after {data[:60]!r}")
        data += chunk
    return data.decode(errors="replace")


def verified(host: str, port: str, cafile: str, hostname: str) -> dict:
    """TLS on `port` (implicit on 465 and 993, SMTP STARTTLS otherwise), verified against
    `cafile` alone with `hostname` checked; what the certificate says, or why it failed."""
    context = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            if int(port) not in (465, 993):
                _reply(sock)
                sock.sendall(b"EHLO client.example.net\r\n")
                if "STARTTLS" not in _reply(sock).upper():
                    return {"verified": False, "error": "no STARTTLS offered"}
                sock.sendall(b"STARTTLS\r\n")
                ready = _reply(sock)
                if not ready.startswith("220"):
                    return {"verified": False, "error": f"STARTTLS answered {ready.strip()[:60]}"}
            with context.wrap_socket(sock, server_hostname=hostname) as tls:
                certificate = tls.getpeercert()
    except (OSError, ssl.SSLError) as error:
        return {"verified": False, "error": f"{type(error).__name__}: {error}"[:200]}
    name = lambda field: ", ".join("=".join(pair) for rdn in certificate[field] for pair in rdn)  # noqa: E731
    return {"verified": True, "subject": name("subject"), "issuer": name("issuer")}


def http_get(host: str, port: str, path: str, name: str) -> dict:
    """One GET of `path` exactly as given (no normalising), for the site `name` (the Host
    header): the status and Server header."""
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: mailgate-lab-probe\r\n"
                         "Connection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 8192:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
    except OSError as error:
        return {"status": None, "error": type(error).__name__}
    head = data.split(b"\r\n\r\n")[0].decode(errors="replace").split("\r\n")
    server = next((line.split(":", 1)[1].strip() for line in head[1:] if line.lower().startswith("server:")), None)
    status = head[0].split()[1] if len(head[0].split()) > 1 else None
    return {"status": int(status) if status and status.isdigit() else None, "server": server}


def bulk(host: str, port: str, user: str, password: str, subject: str) -> dict:
    """IMAPS: fetch the whole message with that subject once; bytes and seconds of the FETCH."""
    try:
        client = imaplib.IMAP4_SSL(host, int(port), ssl_context=_tls(), timeout=60)
        client.login(user, password)
        client.select("INBOX", readonly=True)
        _, found = client.search(None, "SUBJECT", f'"{subject}"')
        number = found[0].split()[0]
        start = time.perf_counter()
        _, data = client.fetch(number, "(BODY.PEEK[])")
        seconds = time.perf_counter() - start
        client.logout()
        return {"bytes": len(data[0][1]), "seconds": seconds}
    except (imaplib.IMAP4.error, OSError, IndexError) as error:
        return {"bytes": None, "error": f"{type(error).__name__}: {error}"}


def serve(host: str, ports: str, seconds: str) -> dict:
    """Listen on each port and accept (then close) every connection, for `seconds` at most:
    other services of a host, which only its firewall keeps from the internet."""
    import selectors

    selector = selectors.DefaultSelector()
    for port in ports.split(","):
        server = socket.create_server((host, int(port)), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        server.setblocking(False)
        selector.register(server, selectors.EVENT_READ)
    deadline = time.monotonic() + min(float(seconds), 7200)
    accepted = 0
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            try:
                key.fileobj.accept()[0].close()
                accepted += 1
            except OSError:
                pass
    return {"accepted": accepted}


ACTIONS = {"idle": idle, "reach": reach, "submit": submit, "latency": latency, "hold": hold, "send": send, "banner": banner, "connect": connect, "forge": forge, "fetch": fetch,
           "banners": banners, "imap_fail": imap_fail, "smtp_auth_fail": smtp_auth_fail,
           "verified": verified, "http_get": http_get, "serve": serve, "bulk": bulk}

if __name__ == "__main__":
    print(json.dumps(ACTIONS[sys.argv[1]](*sys.argv[2:])))
