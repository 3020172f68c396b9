"""`python -m mailgate doctor --ssh` against the lab, from the internet side: on the healthy
lab every check is ok; each breakage turns its own check to FAIL with a fix that names the
cause, and no check that does not depend on the broken part.

One lab serves the module: each breakage is undone after its run (doctor_breakages), and
the last test proves the lab healthy again through `lab doctor`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mailgate.lab import HOME, doctor_lab, lab
from mailgate.lab.daemons import LAB_RELAY_PASSWORD
from mailgate.lab.doctor_breakages import BREAKAGES
from mailgate.lab.system import exclusive
from tests.conftest import DEV_STACK, ROOT
from tests.lab.machine import need_lab

pytestmark = pytest.mark.lab

HEALTHY_SECONDS = 10


@pytest.fixture(scope="module")
def settings(dev_settings):
    need_lab(*doctor_lab.PROGRAMS)
    with exclusive():  # another run of the lab tests on this machine waits instead of clobbering
        lab.up(dev_settings)
        settings = lab.lab_settings(dev_settings)
        try:
            doctor_lab.prepare(settings, DEV_STACK)
            yield settings
        finally:
            lab.down()


def not_ok(answer: dict) -> dict[str, str]:
    return {c["id"]: f"{c['status']}: {c['saw']}" for c in answer["checks"] if c["status"] != "ok"}


def expected_ids(settings) -> set[str]:
    # Every mail port (a PROXY stream) speaks TLS; port 80 is the gateway's own.
    return {"dns.a", "dns.mx", "dns.spf", "dns.dmarc", "dns.dkim", "dns.relay", "dns.names", "dns.ptr",
            *(f"port.{s.name}" for s in settings.enabled_services), "port.closed",
            *_per_port(settings, "smtp", "tls", "real-address"), "tls.same-key", "open-relay",
            "tunnel", "home-filter", "relay-auth", "queue", "blocklist"}


def test_on_the_healthy_lab_every_check_is_ok_within_10_s(settings):
    status, answer, seconds = doctor_lab.run_doctor(settings)
    print(doctor_lab.table(answer))
    assert not_ok(answer) == {}
    assert {c["id"] for c in answer["checks"]} == expected_ids(settings)
    assert (status, answer["failed"]) == (0, 0)
    # The relay login was tried with the key read from home: it never shows.
    assert LAB_RELAY_PASSWORD not in json.dumps(answer)
    assert seconds < HEALTHY_SECONDS, f"the doctor took {seconds:.1f} s"


def _stream(settings) -> list[str]:
    return [s.name for s in settings.enabled_services if s.proxy_protocol]


def _per_port(settings, *prefixes: str) -> set[str]:
    smtp = {s.name for s in settings.enabled_services if s.container == "postfix-mailcow"}
    return {f"{prefix}.{name}" for prefix in prefixes for name in _stream(settings)
            if prefix != "smtp" or name in smtp}


# breakage: (checks that must FAIL, words their fix must contain, checks that may also fail
# because they truly depend on the broken part, extra doctor options)
def cases(settings) -> dict[str, tuple[set[str], tuple[str, ...], set[str], tuple[str, ...]]]:
    short = ("--timeout", "3")  # the breakages whose checks wait out timeouts
    return {
        "mx-elsewhere": ({"dns.mx"}, ("MX 10 mail.example.com.",), set(), ()),
        "second-spf": ({"dns.spf"}, ("two SPF records",), set(), ()),
        "certificate-other-name": (_per_port(settings, "tls"), ("not valid for mail.example.com",), set(), ()),
        "certificate-expiring": (_per_port(settings, "tls"), ("under 3 days", "renew"), set(), ()),
        "submission-dropped": ({"port.submission"}, ("587", "dropped"),
                               {"smtp.submission", "tls.submission", "real-address.submission"}, short),
        # nginx at the gateway still accepts every port, but nothing behind it answers.
        "tunnel-down": ({"tunnel"}, ("cannot reach", "tailscale status"),
                        _per_port(settings, "port", "smtp", "tls", "real-address") | {"tls.same-key", "open-relay"},
                        short),
        # Postfix's twin reads no PROXY header, so every session on port 25 ends at once.
        "nginx-without-proxy-protocol": ({"real-address.smtp"}, ("proxy_protocol",),
                                         {"port.smtp", "smtp.smtp", "tls.smtp", "open-relay"}, ()),
        "open-relay": ({"open-relay"}, ("mynetworks",), set(), ()),
        "wrong-relay-password": ({"relay-auth"}, ("relay refused the login", "mailgate:relayPassword"), set(), ()),
    }


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_breakage_fails_its_check_and_nothing_independent(settings, breakage):
    must_fail, fix_words, may_fail, options = cases(settings)[breakage]
    with BREAKAGES[breakage](settings):
        status, answer, seconds = doctor_lab.run_doctor(settings, options)
    print(f"{breakage}: exit {status} after {seconds:.1f} s\n{doctor_lab.table(answer)}")
    checks = {c["id"]: c for c in answer["checks"]}
    assert {id: checks[id]["status"] for id in must_fail} == {id: "FAIL" for id in must_fail}
    for id in must_fail:
        assert all(word in checks[id]["fix"] for word in fix_words), (id, checks[id]["fix"])
    assert {id: s for id, s in not_ok(answer).items() if id not in must_fail | may_fail} == {}
    assert status == 1 and answer["failed"] >= len(must_fail)
    assert LAB_RELAY_PASSWORD not in json.dumps(answer)


def test_the_docker_stand_in_refuses_what_it_does_not_model(settings):
    home = ["ip", "netns", "exec", HOME, "env", f"PATH={doctor_lab.HOME_PATH}", "sh", "-s"]
    project = f"docker compose --project-directory {settings.home.mailcow_dir}"
    for command in ("docker ps", f"{project} restart postfix-mailcow",
                    f"{project} exec -T postfix-mailcow cat /etc/shadow",
                    "docker compose --project-directory /elsewhere exec -T postfix-mailcow postqueue -j"):
        result = subprocess.run(home, input=command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and "mailgate lab stand-in" in result.stderr, (command, result)
    queue = subprocess.run(home, input=f"{project} exec -T postfix-mailcow postqueue -j", capture_output=True,
                           text=True, timeout=30)
    assert (queue.returncode, queue.stdout) == (0, "")  # an empty queue: no JSON lines


def test_after_every_breakage_lab_doctor_finds_the_lab_healthy_again(settings):
    result = subprocess.run([sys.executable, "-m", "mailgate", "lab", "doctor", "--config", str(DEV_STACK)],
                            cwd=ROOT, capture_output=True, text=True, timeout=180)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert LAB_RELAY_PASSWORD not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("doctor: exit 0 after ")
    assert re.fullmatch(r"\d+ ok, 0 warn, 0 FAIL, 0 skipped", lines[-2]), lines[-2]
    assert all(line.startswith("ok ") for line in lines[:-2]), result.stdout
