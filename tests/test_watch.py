"""The watcher program (mailgate/templates/scripts/watch.py) run against real sockets on
loopback: what counts as answering, one alert per outage, one recovery, nothing for an
outage shorter than the threshold, and no secret in what it prints."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from mailgate.renderers.watch import WATCH_PROGRAM

spec = importlib.util.spec_from_file_location("watch", WATCH_PROGRAM)
watch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(watch)

PASSWORD = "relay-key-never-printed"


class Greeter:
    """A daemon on loopback that greets first (optionally after a PROXY line, or TLS)."""

    def __init__(self, greeting: bytes = b"220 mail.example.com ESMTP\r\n", proxy: bool = False,
                 tls: ssl.SSLContext | None = None, silent: bool = False) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        self.greeting, self.proxy, self.tls, self.silent = greeting, proxy, tls, silent
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                try:
                    if self.proxy:
                        line = b""
                        while not line.endswith(b"\r\n"):
                            line += connection.recv(1)
                        self.received.append(line)
                    stream = self.tls.wrap_socket(connection, server_side=True) if self.tls else connection
                    if not self.silent:
                        stream.sendall(self.greeting)
                    stream.recv(1)  # until the prober closes
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()

    def target(self, **extra) -> dict:
        return {"name": "smtp", "host": "127.0.0.1", "port": self.port, "proxy": self.proxy,
                "tls": self.tls is not None, **extra}


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


@pytest.fixture
def greeter():
    made = []

    def make(**options) -> Greeter:
        made.append(Greeter(**options))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=mail.example.com", "-keyout", str(directory / "key.pem"),
                    "-out", str(directory / "cert.pem")], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def test_a_greeting_daemon_answers_and_a_twin_port_gets_the_proxy_header_first(greeter):
    plain, twin = greeter(), greeter(proxy=True)
    assert watch.probe(plain.target(), 2) is None
    assert watch.probe(twin.target(), 2) is None
    header = twin.received[0].decode()
    family, source, destination, source_port, destination_port = header.split()[1:]
    assert (family, source, destination, destination_port) == ("TCP4", "127.0.0.1", "127.0.0.1", str(twin.port))
    assert header.endswith("\r\n") and int(source_port) > 0


def test_an_implicit_tls_port_answers_after_the_handshake(greeter, tls_context):
    assert watch.probe(greeter(tls=tls_context, greeting=b"* OK ready\r\n").target(), 2) is None
    # A plain daemon on a port said to be TLS does not count as answering.
    assert "smtp (127.0.0.1:" in watch.probe(greeter().target(tls=True), 2)


def test_refused_silent_and_closed_ports_do_not_answer(greeter):
    port = closed_port()
    refused = watch.probe({"name": "imaps", "host": "127.0.0.1", "port": port}, 2)
    assert refused == f"imaps (127.0.0.1:{port}): Connection refused"
    # A socket that accepts but never greets (Docker's proxy with the container gone).
    assert "timed out" in watch.probe(greeter(silent=True).target(), 0.5)


def config_for(targets: list[dict], after_seconds: int = 600) -> dict:
    return {"enabled": True, "stack": "dev", "end": "gateway", "watched": "home's mail ports",
            "targets": targets, "timeout_seconds": 0.5, "after_seconds": after_seconds,
            "advice": "Check the Mini PC.",
            "channels": [{"kind": "smtp", "host": "127.0.0.1", "port": closed_port(), "tls": "starttls",
                          "username": "u", "password": PASSWORD, "from": "a@example.com",
                          "to": "me@example.net"}]}


class Outbox:
    def __init__(self, working: bool = True) -> None:
        self.sent: list[tuple[str, str]] = []
        self.working = working

    def __call__(self, config, status, subject, body, ca_file) -> bool:
        if self.working:
            self.sent.append((status, subject))
        return self.working


def test_one_alert_per_outage_then_one_recovery(monkeypatch, greeter):
    outbox = Outbox()
    monkeypatch.setattr(watch, "notify", outbox)
    daemon = greeter()
    down = config_for([daemon.target(), {"name": "imaps", "host": "127.0.0.1", "port": closed_port()}])
    up = config_for([daemon.target()])
    state: dict = {}
    for minute in range(10):  # below the threshold: nothing
        state = watch.run_once(down, state, 1000 + 60 * minute)
    assert outbox.sent == [] and state["down_since"] == 1000
    for minute in range(10, 60):  # an hour down: one alert
        state = watch.run_once(down, state, 1000 + 60 * minute)
    assert [status for status, _ in outbox.sent] == ["alert"]
    assert "unreachable for 10 min" in outbox.sent[0][1]
    for minute in range(60, 65):  # back: one recovery, then quiet
        state = watch.run_once(up, state, 1000 + 60 * minute)
    assert [status for status, _ in outbox.sent] == ["alert", "recovered"]
    assert state == {}


def test_a_flapping_end_below_the_threshold_sends_nothing(monkeypatch, greeter):
    outbox = Outbox()
    monkeypatch.setattr(watch, "notify", outbox)
    daemon = greeter()
    down = config_for([{"name": "smtp", "host": "127.0.0.1", "port": closed_port()}])
    up = config_for([daemon.target()])
    state: dict = {}
    now = 0
    for _ in range(6):  # down 9 minutes, up 1, over and over
        for _ in range(9):
            state = watch.run_once(down, state, now)
            now += 60
        state = watch.run_once(up, state, now)
        now += 60
    assert outbox.sent == []


def test_an_alert_that_could_not_be_sent_is_tried_again_and_sent_once(monkeypatch):
    outbox = Outbox(working=False)
    monkeypatch.setattr(watch, "notify", outbox)
    down = config_for([{"name": "smtp", "host": "127.0.0.1", "port": closed_port()}], after_seconds=60)
    state = watch.run_once(down, {}, 0)
    state = watch.run_once(down, state, 120)
    assert not state.get("alerted")
    outbox.working = True
    for now in (180, 240, 300):
        state = watch.run_once(down, state, now)
    assert [status for status, _ in outbox.sent] == ["alert"]


def run_main(tmp_path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "watch.json"
    path.write_text(json.dumps(config))
    return subprocess.run([sys.executable, str(WATCH_PROGRAM), "--config", str(path),
                           "--state", str(tmp_path / "state.json"), *extra],
                          capture_output=True, text=True, timeout=60)


def test_the_program_keeps_its_state_and_never_prints_the_relay_key(tmp_path):
    config = config_for([{"name": "smtp", "host": "127.0.0.1", "port": closed_port()}], after_seconds=0)
    result = run_main(tmp_path, config)
    assert result.returncode == 0, result.stderr
    # The relay is down too: the alert could not go out, and says why, without the key.
    assert "could not send the alert message through the smtp channel" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["down_since"] > 0 and not state.get("alerted")
    assert oct((tmp_path / "state.json").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "state.json").write_text("{not json")
    assert run_main(tmp_path, config).returncode == 0
    assert json.loads((tmp_path / "state.json").read_text())["down_since"] > 0


def test_with_alerts_off_it_checks_nothing(tmp_path):
    result = run_main(tmp_path, {"enabled": False, "stack": "dev", "end": "home"})
    assert result.returncode == 0 and "alerts are off" in result.stdout
    assert not (tmp_path / "state.json").exists()


@contextlib.contextmanager
def webhook_receiver():
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the stdlib's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook/secret-token", received
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_gets_the_alert_and_a_dead_relay_does_not_stop_it(tmp_path):
    with webhook_receiver() as (url, received):
        config = config_for([{"name": "smtp", "host": "127.0.0.1", "port": closed_port()}], after_seconds=0)
        config["channels"].append({"kind": "webhook", "url": url})
        result = run_main(tmp_path, config)
        assert "alert message sent through the webhook channel" in result.stdout
        assert "secret-token" not in result.stdout + result.stderr
        assert json.loads((tmp_path / "state.json").read_text())["alerted"] is True
        assert run_main(tmp_path, config).returncode == 0  # still down: no second alert
    assert len(received) == 1
    assert received[0]["status"] == "alert" and received[0]["stack"] == "dev"
    assert received[0]["text"].startswith("mailgate dev: home's mail ports unreachable")
