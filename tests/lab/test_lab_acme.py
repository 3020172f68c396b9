"""ACME HTTP-01 through the gateway with real ACME software: pebble as the CA (validating
through nsd's zone for the domain), acme-tiny as Mailcow's acme container at home.

With acme.method http-01 (the example stack's default) the certificate is issued through
the gateway's port 80 and the tunnel, serves every TLS port through the gateway, and no
other path on port 80 reaches home; with acme.method none there is no port 80 and
issuance fails, so the first check cannot pass by accident."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from mailgate.lab import ACME_CA_IP, GATEWAY_TAILNET, HOME_TAILNET, acme, acme_checks, lab
from mailgate.lab.system import exclusive
from tests.conftest import DEV_STACK, ROOT
from tests.lab.machine import need_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", autouse=True)
def lab_machine():
    need_lab(*acme.PROGRAMS)
    with exclusive():  # another run of the lab tests on this machine waits instead of clobbering
        yield
        lab.down()


def failed(results) -> dict[str, str]:
    return {r.name: r.detail for r in results if not r.passed}


@pytest.fixture(scope="class")
def settings(lab_machine, dev_settings):
    """One lab for TestHttp01's checks, up with the example stack (acme.method http-01),
    taken down when the class is done."""
    assert dev_settings.acme.method == "http-01" and not dev_settings.web.enabled
    lab.up(dev_settings)
    settings = lab.lab_settings(dev_settings)
    try:
        acme.start(settings)
        yield settings
    finally:
        lab.down()


class TestHttp01:

    def test_the_certificate_is_issued_through_the_gateways_port_80_and_the_tunnel(self, settings):
        results = acme_checks.issued_through_the_gateway(settings)
        assert failed(results) == {}, [r.line() for r in results]
        issued, at_gateway, at_home = results
        assert f"{ACME_CA_IP}', " in at_gateway.detail and f"'{HOME_TAILNET}:80')" in at_gateway.detail
        assert f"('{GATEWAY_TAILNET}', '200', 'LetsEncrypt-Pebble-VA" in at_home.detail, at_home.detail
        assert "Pebble Intermediate CA" in issued.detail

    def test_the_certificate_verifies_on_every_tls_port_through_the_gateway(self, settings):
        issuance = acme.issue(settings)
        assert issuance.issued, issuance.said
        acme.fetch_root()
        results = acme_checks.certificate_serves_mail(settings)
        assert [int(r.name.split(" on ")[1].split()[0]) for r in results] == [993, 465, 587, 25]
        assert failed(results) == {}, [r.line() for r in results]

    def test_no_other_path_on_port_80_reaches_home_and_443_is_closed(self, settings):
        results = acme_checks.other_paths_stay_at_the_gateway(settings)
        assert failed(results) == {}, [r.line() for r in results]
        assert len(results) == len(acme_checks.OTHER_PATHS) + len(acme_checks.OTHER_HOSTS) + 2  # control, 443


def test_when_the_gateway_passes_every_path_home_the_other_paths_check_fails(dev_settings):
    # Port 80's catch-all sent home as well: the check must see those requests at home.
    def everything_home(text: str) -> str:
        # mailgate's server comes after the default site's stand-in, which also says 404.
        assert text.count("return 404;") == 2
        head, tail = text.rsplit("return 404;", 1)
        return head + f"proxy_pass http://{HOME_TAILNET}:80;" + tail

    lab.up(dev_settings, nginx_edit=everything_home)
    settings = lab.lab_settings(dev_settings)
    try:
        acme.start(settings)
        broken = failed(acme_checks.other_paths_stay_at_the_gateway(settings))
    finally:
        lab.down()
    leaked = {f"GET {path} on port 80 is answered by the gateway and never reaches home"
              for path in ("/", "/admin", "/.well-known/other")}
    assert leaked <= set(broken), broken
    assert "'/admin'" in broken["GET /admin on port 80 is answered by the gateway and never reaches home"]
    assert all(name.startswith(("GET /", "another path for Host")) for name in broken), broken


def test_without_port_80_at_the_gateway_issuance_fails(tmp_path):
    # Through the command line, with the example stack set to acme.method none: the
    # gateway renders no port 80, so pebble's validation cannot connect.
    stack = tmp_path / "Pulumi.acme-none.yaml"
    document = yaml.safe_load(DEV_STACK.read_text())
    document["config"]["mailgate:acme"] = {**document["config"].get("mailgate:acme", {}), "method": "none"}
    stack.write_text(yaml.safe_dump(document))

    def mailgate(*args):
        return subprocess.run([sys.executable, "-m", "mailgate", "lab", *args, "--config", str(stack)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    try:
        assert mailgate("up").returncode == 0
        checked = mailgate("acme")
    finally:
        assert mailgate("down").returncode == 0
    print(checked.stdout)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1] == "2 passed, 0 failed"
    assert "PASS  no port 80 at 203.0.113.10: connect: {'result': 'refused'}" in checked.stdout
    assert ("PASS  issuance fails: pebble's validation cannot connect, acme-tiny exits non-zero: exit 1"
            in checked.stdout)
    assert "dial tcp 203.0.113.10:80: connect: connection refused" in checked.stdout
