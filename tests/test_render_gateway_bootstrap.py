"""cloud-init user data and the gateway firewall: schema-checked, and the iptables part
run for real against an Oracle-style ruleset in a private network namespace."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from mailgate.renderers.cloud_init import (
    AUTH_KEY_PATH,
    BOOTSTRAP_URL_PATH,
    GATEWAY_INPUT_CHAIN,
    HOST_KEY_PATH,
    JOIN_SCRIPT_PATH,
    render_cloud_init,
    render_enrolment,
    render_join_script,
)
from mailgate.renderers.firewall import render_gateway_firewall
from tests.pulumi_harness import GATEWAY_HOST_KEY_PRIVATE, GATEWAY_HOST_KEY_PUBLIC
from tests.settings_variants import everything, variant
from tests.validators import Netns, cloud_init_check, iptables_restore

URL = "https://objectstorage.eu-frankfurt-1.oraclecloud.com/p/tok3n/n/ns/b/mailgate-dev-bootstrap/o/"

# What Oracle's Ubuntu images ship in /etc/iptables/rules.v4 (shape of it): SSH only,
# then REJECT. Written for this test.
ORACLE_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""


def test_cloud_init_schema_accepts_the_user_data(dev_settings, tmp_path):
    cloud_init_check(render_cloud_init(dev_settings, URL), tmp_path)


def test_cloud_init_schema_refuses_a_broken_one(dev_settings, tmp_path):
    broken = render_cloud_init(dev_settings, URL).replace('permissions: "0600"', "permissions: [0600]")
    with pytest.raises(AssertionError, match="cloud-init schema refused"):
        cloud_init_check(broken, tmp_path)


def test_user_data_does_not_change_with_ports_relay_or_stack_names(dev_raw):
    base = render_cloud_init(variant(dev_raw), URL)
    assert render_cloud_init(variant(dev_raw, services=["smtp"]), URL) == base
    assert render_cloud_init(everything(dev_raw), URL) == base
    assert render_cloud_init(variant(dev_raw, relay__port=465, relay__host="relay.example.net"), URL) == base


def test_user_data_holds_the_bucket_url_in_a_root_only_file_and_no_key(dev_settings):
    text = render_cloud_init(dev_settings, URL)
    document = yaml.safe_load(text)
    assert "tskey" not in text and text.count(URL) == 1
    url_file = next(f for f in document["write_files"] if f["path"] == BOOTSTRAP_URL_PATH)
    assert url_file["content"] == URL and url_file["permissions"] == "0600"
    join = next(f for f in document["write_files"] if f["path"] == JOIN_SCRIPT_PATH)
    assert join["content"] == render_join_script(dev_settings) and join["permissions"] == "0700"
    # The chain first (no egress needed), then the join, which waits for egress itself.
    commands = document["runcmd"]
    assert commands.index(JOIN_SCRIPT_PATH) > max(
        i for i, c in enumerate(commands) if GATEWAY_INPUT_CHAIN in c)
    assert "packages" not in document and "package_upgrade" not in document


@pytest.mark.parametrize("url", ["", "http://objectstorage.example/p/x/o/", URL + "\nruncmd: [evil]",
                                 URL.rstrip("/")])
def test_bucket_url_cannot_inject_yaml(dev_settings, url):
    with pytest.raises(ValueError, match="not an https URL of a bucket"):
        render_cloud_init(dev_settings, url)


@pytest.mark.parametrize(("key", "name"), [("", "m"), ("tskey x", "m"), ("tskey=1", "m"),
                                           ("tskey", "Bad_Name"), ("tskey", "a\nTS_AUTHKEY=x")])
def test_enrolment_refuses_what_the_join_script_could_misread(key, name):
    with pytest.raises(ValueError):
        render_enrolment(key, name, GATEWAY_HOST_KEY_PRIVATE)
    with pytest.raises(ValueError, match="OpenSSH private key"):
        render_enrolment("tskey", "m", "ssh-ed25519 AAAA (a public key)")


# Stand-ins for the programs the join script calls on a first boot: each records its
# arguments. curl answers the metadata service with the VM's OCID and serves the bucket
# from a directory (exit 22, as `curl -f` on a 404, while the object is missing).
CURL = r"""#!/usr/bin/env python3
import os, sys, pathlib
lab = pathlib.Path(os.environ["JOIN_LAB"])
with open(lab / "calls", "a") as log:
    log.write("curl " + " ".join(sys.argv[1:]) + "\n")
url, out = sys.argv[-1], None
if "-o" in sys.argv:
    out = sys.argv[sys.argv.index("-o") + 1]
if url.startswith("http://169.254.169.254/"):
    sys.stdout.write(INSTANCE)
    sys.exit(0)
if url.startswith(BUCKET):
    served = lab / "bucket" / url[len(BUCKET):]
    if not served.exists():
        sys.exit(22)
    data = served.read_bytes()
else:
    data = b""  # the Tailscale repository's key and list
pathlib.Path(out).write_bytes(data) if out else sys.stdout.buffer.write(data)
"""
RECORDER = r"""#!/bin/sh
printf '%s %s\n' "$(basename "$0")" "$*" >> "$JOIN_LAB/calls"
case "$(basename "$0") $*" in
  "tailscale up"*) key=${2#--auth-key=file:}; cp "$key" "$JOIN_LAB/key-seen" ;;
esac
"""
INSTANCE_ID = "ocid1.instance.oc1.eu-frankfurt-1.vm1"


def _join_lab(tmp_path, settings):
    lab, bin_dir, root = tmp_path / "lab", tmp_path / "bin", tmp_path / "root"
    for directory in (lab / "bucket", bin_dir, root / "etc/mailgate", root / "etc/apt/sources.list.d",
                      root / "etc/ssh"):
        directory.mkdir(parents=True)
    (root / BOOTSTRAP_URL_PATH.lstrip("/")).write_text(URL)
    (bin_dir / "curl").write_text(CURL.replace("INSTANCE", repr(INSTANCE_ID)).replace("BUCKET", repr(URL)))
    for name in ("apt-get", "systemctl", "tailscale", "sleep"):
        (bin_dir / name).write_text(RECORDER)
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    script = tmp_path / "join.sh"
    script.write_text(render_join_script(settings))

    def run():
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MAILGATE_ROOT": str(root), "JOIN_LAB": str(lab)}
        return subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=120)
    return lab, root, run


def test_first_boot_waits_for_its_enrolment_then_installs_and_joins(dev_settings, tmp_path):
    lab, root, run = _join_lab(tmp_path, dev_settings)
    calls = lab / "calls"
    # Egress comes late: the object is served from the fourth try on.
    (lab / "bucket" / INSTANCE_ID).write_text(
        render_enrolment("tskey-auth-fresh", "mailgate-dev-gw-abc123", GATEWAY_HOST_KEY_PRIVATE))
    (lab / "bucket" / INSTANCE_ID).rename(lab / "late")
    calls.write_text("")
    import threading
    def publish_after_three_tries():
        while calls.read_text().count(INSTANCE_ID) < 4:
            time.sleep(0.01)
        (lab / "late").rename(lab / "bucket" / INSTANCE_ID)
    threading.Thread(target=publish_after_three_tries, daemon=True).start()
    result = run()
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    fetched = max(i for i, line in enumerate(lines) if line.startswith("curl") and line.endswith(URL + INSTANCE_ID))
    first_apt = min(i for i, line in enumerate(lines) if line.startswith("apt-get"))
    assert fetched < first_apt, "apt ran before egress"
    assert sum(line.startswith("sleep") for line in lines[:fetched]) >= 3
    [up] = [line for line in lines if line.startswith("tailscale up")]
    assert up == (f"tailscale up --auth-key=file:{root}{AUTH_KEY_PATH} --advertise-tags=tag:mailgw "
                  "--hostname=mailgate-dev-gw-abc123 --accept-dns=false")
    assert (lab / "key-seen").read_text() == "tskey-auth-fresh\n"
    assert "tskey-auth-fresh" not in calls.read_text().replace(str(lab / "key-seen"), "")
    assert not (root / AUTH_KEY_PATH.lstrip("/")).exists(), "the key stays on disk"
    assert any(line.startswith("apt-get") and "libnginx-mod-stream" in line for line in lines)
    # sshd serves the program's host key, root-only, before anyone reaches it over the tailnet.
    host_key = root / HOST_KEY_PATH.lstrip("/")
    assert host_key.read_text() == GATEWAY_HOST_KEY_PRIVATE and oct(host_key.stat().st_mode & 0o777) == "0o600"
    assert Path(f"{host_key}.pub").read_text().split()[:2] == GATEWAY_HOST_KEY_PUBLIC.split()[:2]
    assert lines.index("systemctl restart ssh.service") < lines.index(up)


def test_first_boot_gives_up_with_a_reason_and_refuses_a_bad_name(dev_settings, tmp_path):
    lab, root, run = _join_lab(tmp_path, dev_settings)
    result = run()
    assert result.returncode == 1
    assert f"no enrolment for {INSTANCE_ID} after 30 minutes" in result.stderr
    assert "apt-get" not in (lab / "calls").read_text()
    (lab / "bucket" / INSTANCE_ID).write_text("TS_AUTHKEY=tskey-x\nTS_HOSTNAME=Bad;name\n")
    result = run()
    assert result.returncode == 1 and "no valid machine name" in result.stderr
    assert not (root / AUTH_KEY_PATH.lstrip("/")).exists()
    (lab / "bucket" / INSTANCE_ID).write_text("TS_AUTHKEY=tskey-x\nTS_HOSTNAME=gw\nSSH_HOST_KEY=bm90IGEga2V5\n")
    result = run()
    assert result.returncode == 1 and "the enrolment holds no valid SSH host key" in result.stderr
    assert "tailscale up" not in (lab / "calls").read_text()


def test_oracle_reject_rule_no_longer_hides_the_enabled_ports(dev_raw):
    settings = variant(dev_raw, services=["smtp", "imaps"])
    iptables_lines = [c for c in yaml.safe_load(render_cloud_init(settings, URL))["runcmd"]
                      if c.startswith("iptables ")]
    with Netns() as ns:
        iptables_restore(ORACLE_RULES, ns)
        for command in iptables_lines * 2:  # cloud-init may run twice; the hook must not double
            ns.run(["sh", "-c", command]).check_returncode()
        saved = iptables_restore(render_gateway_firewall(settings), ns)
    input_rules = [line for line in saved.splitlines() if line.startswith("-A INPUT")]
    assert input_rules[0] == f"-A INPUT -j {GATEWAY_INPUT_CHAIN}"
    assert sum(GATEWAY_INPUT_CHAIN in rule for rule in input_rules) == 1
    chain = [line for line in saved.splitlines() if line.startswith(f"-A {GATEWAY_INPUT_CHAIN}")]
    assert chain == [
        f"-A {GATEWAY_INPUT_CHAIN} -p tcp -m multiport --dports 25,993,80 -j ACCEPT",
        f"-A {GATEWAY_INPUT_CHAIN} -p udp -m udp --dport 41641 -j ACCEPT",
        f"-A {GATEWAY_INPUT_CHAIN} -p icmp -m icmp --icmp-type 3/4 -j ACCEPT",
    ]


def test_reloading_the_gateway_firewall_replaces_the_port_list(dev_raw):
    with Netns() as ns:
        iptables_restore(render_gateway_firewall(everything(dev_raw)), ns)
        saved = iptables_restore(render_gateway_firewall(variant(dev_raw, services=["smtp"], acme={"method": "none"})), ns)
    assert f"-A {GATEWAY_INPUT_CHAIN} -p tcp -m multiport --dports 25 -j ACCEPT" in saved
    assert "993" not in saved


def test_ipv6_gateway_firewall_loads(dev_raw):
    with Netns() as ns:
        saved = iptables_restore(render_gateway_firewall(everything(dev_raw), 6), ns, ip_version=6)
    assert "--icmpv6-type 2" in saved or "packet-too-big" in saved
