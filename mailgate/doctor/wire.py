"""Speaking just enough of each mail protocol to greet a port, start TLS and read its
certificate, with a timeout on every read."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mailgate.catalogue import Service

EHLO_NAME = "doctor.mailgate.invalid"  # RFC 6761: a name that is nobody's
REFUSED_GREETING = "greeted with"  # how a ProtocolError says a daemon answered, but not with a welcome


class ProtocolError(Exception):
    pass


MAX_LINE = 8192
SESSION_SECONDS = 60  # a server that dribbles bytes cannot hold a check longer than this


class Line:
    """Line-based reads on a socket (plain or TLS), each line at most MAX_LINE bytes,
    all of them within SESSION_SECONDS."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""
        self.deadline = time.monotonic() + SESSION_SECONDS

    def read(self) -> str:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE or time.monotonic() > self.deadline:
                raise ProtocolError("the server sent no end of line in time")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ProtocolError("the connection was closed" + (
                    f" after {self.buffer!r}" if self.buffer else " without a greeting"))
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace").rstrip("\r")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def smtp_reply(self) -> tuple[int, list[str]]:
        lines = [self.read()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self.read())
        try:
            return int(lines[-1][:3]), [line[4:] for line in lines]
        except ValueError:
            raise ProtocolError(f"not an SMTP reply: {lines[-1]!r}") from None


def connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def explain(error: Exception) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "no answer (timed out)"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or error})"
    return str(error) or error.__class__.__name__


class Session:
    """A connection whose failures after connecting are ProtocolErrors ("connected, then
    ..."), so a caller can tell a port nobody answers from one whose far end is gone."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = connect(host, port, timeout)

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, kind, error, traceback) -> bool:
        self.sock.close()
        if isinstance(error, OSError) and not isinstance(error, ssl.SSLCertVerificationError):
            raise ProtocolError(f"connected, then {explain(error)}") from error
        return False


def client_context(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """Verifying: the system's CAs, and `ca_file`'s as well (a private CA, the lab's)."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


@dataclass
class Greeting:
    text: str
    """The greeting (first line, or SMTP's whole 220 reply)."""
    capabilities: list[str]
    """SMTP's EHLO keywords, IMAP's/Sieve's capabilities, before TLS."""
    ehlo_name: str = ""


def greet(line: Line, service: Service, full: bool = True) -> Greeting:
    """Read the greeting. `full`: SMTP also says EHLO and reads the keywords."""
    if service.protocol == "smtp":
        if not full:  # the first line only: postscreen sends the rest after its greet wait
            first = line.read()
            if not first.startswith("220"):
                raise ProtocolError(f"{REFUSED_GREETING} {first[:80]!r}")
            return Greeting(first[4:], [])
        code, text = line.smtp_reply()
        if code != 220:
            raise ProtocolError(f"{REFUSED_GREETING} {code} {text[-1][:80]!r}")
        line.send(f"EHLO {EHLO_NAME}")
        code, keywords = line.smtp_reply()
        if code != 250:
            raise ProtocolError(f"EHLO answered {code} {' '.join(keywords)}")
        return Greeting(text[0], [k.split()[0].upper() for k in keywords[1:] if k], keywords[0])
    if service.protocol == "imap":
        first = line.read()
        if not first.startswith("* OK"):
            raise ProtocolError(f"{REFUSED_GREETING} {first!r}")
        return Greeting(first, first.upper().split())
    if service.protocol == "pop3":
        first = line.read()
        if not first.startswith("+OK"):
            raise ProtocolError(f"{REFUSED_GREETING} {first!r}")
        return Greeting(first, [])
    if service.protocol == "sieve":
        lines = [line.read()]
        while not lines[-1].upper().startswith(("OK", "NO", "BYE")):
            lines.append(line.read())
        if not lines[-1].upper().startswith("OK"):
            raise ProtocolError(f"{REFUSED_GREETING} {lines[-1]!r}")
        return Greeting(lines[-1], [l.split()[0].strip('"').upper() for l in lines[:-1] if l])
    raise ProtocolError(f"no greeting for {service.protocol}")


def http_answer(sock: socket.socket, host: str) -> str:
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    status = Line(sock).read()
    if not status.startswith("HTTP/"):
        raise ProtocolError(f"answered {status!r}")
    return status


def start_tls(line: Line, service: Service, greeting: Greeting) -> None:
    commands = {"smtp": ("STARTTLS", "220"), "imap": ("a STARTTLS", "a OK"),
                "pop3": ("STLS", "+OK"), "sieve": ("STARTTLS", "OK")}
    command, success = commands[service.protocol]
    line.send(command)
    reply = line.read()
    if service.protocol == "smtp":
        while len(reply) > 3 and reply[3] == "-":
            reply = line.read()
    if not reply.upper().startswith(success.upper()):
        raise ProtocolError(f"{command} answered {reply!r}")


@dataclass
class Certificate:
    names: list[str]
    not_after: datetime
    key_hash: str
    verified: bool
    error: str = ""

    @property
    def days_left(self) -> float:
        return (self.not_after - datetime.now(timezone.utc)).total_seconds() / 86400


def _describe(der: bytes, verified: bool, error: str = "") -> Certificate:
    cert = x509.load_der_x509_certificate(der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return Certificate(list(names), cert.not_valid_after_utc, hashlib.sha256(spki).hexdigest()[:16], verified, error)


def tls_certificate(host: str, service: Service, server_name: str, ca_file: str | None,
                    timeout: float) -> Certificate:
    """The certificate the port presents (after STARTTLS where the port starts plain).
    Verified against the system's CAs or `ca_file`, for `server_name`; when that fails,
    read again without verifying, to say what it is."""

    def handshake(verify: bool) -> bytes:
        with Session(host, service.public_port, timeout) as sock:
            if not service.implicit_tls:
                line = Line(sock)
                start_tls(line, service, greet(line, service))
            with client_context(ca_file, verify).wrap_socket(sock, server_hostname=server_name) as tls:
                return tls.getpeercert(binary_form=True)

    try:
        return _describe(handshake(True), True)
    except ssl.SSLCertVerificationError as error:
        return _describe(handshake(False), False, error.verify_message or str(error))
