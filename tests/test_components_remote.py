"""The remote steps as `pulumi up` declares them (the real __main__.py under mocks)."""

from __future__ import annotations

import copy
import json

from google.protobuf import json_format

from components.ssh import DIAL_ERROR_LIMIT, DIAL_TIMEOUT_SECONDS
from mailgate.managed_block import block_text
from mailgate.renderers.remote_scripts import BLOCKS_DIR, unpack
from tests import pulumi_harness as h
from tests.pulumi_harness import plain, run_program, secret_paths

PASSWORD = "relay-secret-for-mock-tests"


def command(run, name):
    registered = next(r for r in run.resources if r.name == name)
    options = run.monitor.options[name]
    return plain(registered.inputs), options, json_format.MessageToDict(options["object"])


def urn_of(run, name):
    return run.monitor.options[name]["urn"]


def test_gateway_step_runs_after_the_vm_and_only_when_the_files_change(dev_raw):
    run = run_program(dev_raw)
    inputs, options, _ = command(run, "gateway-config-apply")
    # No triggers: a change of them REPLACES a command (pulumi-command); content is stdin,
    # so a change is an update, and the VM's OCID is in the script, so a new VM re-runs it.
    assert "triggers" not in inputs
    assert "# For the gateway VM gateway-instance-id:" in inputs["create"] == inputs["update"]
    # Over the tailnet, not the public IP: the runner may sit behind CGNAT.
    assert inputs["connection"]["host"] == h.GATEWAY_TAILNET_IPV4
    assert inputs["connection"]["user"] == "ubuntu"
    assert inputs["connection"]["perDialTimeout"] == DIAL_TIMEOUT_SECONDS
    assert inputs["connection"]["dialErrorLimit"] == DIAL_ERROR_LIMIT
    assert "cloud-init status --wait" in inputs["create"]
    files = unpack(inputs["stdin"])
    assert set(files) == {"/etc/nginx/modules-enabled/70-mailgate-stream.conf", "/etc/iptables/mailgate.rules.v4",
                          "/etc/nginx/conf.d/70-mailgate-http.conf",
                          "/usr/local/lib/mailgate/dev/watch.py", "/etc/mailgate/dev/watch.json",
                          "/etc/systemd/system/mailgate-dev-watch.service",
                          "/etc/systemd/system/mailgate-dev-watch.timer",
                          "/usr/local/lib/mailgate/dev/banlist.py", "/etc/mailgate/dev/bans.json",
                          "/etc/systemd/system/mailgate-dev-bans.service",
                          "/etc/systemd/system/mailgate-dev-bans.timer"}
    # Alerts are off in the dev stack: the watcher is laid down, its timer stays off.
    assert json.loads(files["/etc/mailgate/dev/watch.json"])["enabled"] is False
    assert "disable --now mailgate-dev-watch.timer" in inputs["create"]
    assert urn_of(run, "gateway-instance") in options["dependencies"]
    assert urn_of(run, "gateway-enrolment-object") in options["dependencies"]


def test_home_step_sends_secrets_only_on_stdin_and_only_mailgates_blocks(dev_raw):
    run = run_program(dev_raw, secrets={"relayPassword": PASSWORD})
    inputs, options, sent = command(run, "home-config-apply")
    assert secret_paths(sent) >= {"stdin"}
    # With triggers, a changed byte would REPLACE the step, and the old step's delete (the
    # restore script) would run last and undo the new files.
    assert "triggers" not in inputs
    for script in ("create", "update", "delete"):
        assert PASSWORD not in inputs[script]
    assert inputs["logging"] == "none"
    assert {"stdout", "stderr"} <= set(options["additional_secret_outputs"])
    files = unpack(inputs["stdin"])
    # Shared files: mailgate's block only, for the host to splice into the live file.
    conf = files[f"{BLOCKS_DIR}/opt/mailcow-dockerized/mailcow.conf"]
    assert conf == block_text(conf.split("\n", 1)[1].rsplit("# END", 1)[0], "dev")
    assert "SMTP_PORT_HAPROXY=100.64.0.2:10025" in conf
    assert "/opt/mailcow-dockerized/mailcow.conf" not in files
    assert files["/opt/mailcow-dockerized/data/conf/postfix/mailgate_relay_passwd"].endswith(f":{PASSWORD}\n")
    assert f"haproxy_trusted_networks = {h.GATEWAY_TAILNET_IPV4}/32" in (
        files[f"{BLOCKS_DIR}/opt/mailcow-dockerized/data/conf/dovecot/extra.conf"])
    assert "mailgate: home restored" in inputs["delete"]
    # One step, run once the gateway's tailnet address is known.
    assert [r.name for r in run.resources if r.name.startswith("home-config-")] == ["home-config-apply"]
    assert run.events.index("tailscale:index/getDevice:getDevice") < run.events.index("home-config-apply")


def test_host_key_pinning_and_jump_through_the_gateway(dev_raw, dev_settings):
    raw = copy.deepcopy(dev_raw)
    raw["home"]["sshHostKey"] = dev_settings.gateway.ssh_public_keys[0]
    raw["home"]["viaGateway"] = True
    raw["home"]["sshHost"] = raw["home"]["tailnetIp"]
    run = run_program(raw, secrets={"relayPassword": PASSWORD, "gatewaySshPrivateKey": "GWKEY",
                                    "homeSshPrivateKey": "HOMEKEY"})
    inputs, _, sent = command(run, "home-config-apply")
    connection = inputs["connection"]
    assert connection["hostKey"] == dev_settings.gateway.ssh_public_keys[0]
    assert connection["proxy"]["host"] == h.GATEWAY_TAILNET_IPV4 and connection["proxy"]["user"] == "ubuntu"
    # The provider marks the whole connection (keys included) secret.
    assert "connection" in secret_paths(sent)


def test_alert_keys_reach_each_end_only_on_stdin_and_the_main_relay_key_never_the_gateway(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["alerts"] = {"to": "owner@example.net", "afterMinutes": 20}
    gateway_key, webhook = "gateway-alert-key-for-mock-tests", "https://hooks.example.net/T0/secret-token"
    run = run_program(raw, secrets={"relayPassword": PASSWORD, "alertsRelayPassword": gateway_key,
                                    "alertsWebhookUrl": webhook})
    gateway_inputs, _, gateway_sent = command(run, "gateway-config-apply")
    home_inputs, _, home_sent = command(run, "home-config-apply")
    assert secret_paths(gateway_sent) >= {"stdin"} and secret_paths(home_sent) >= {"stdin"}
    for inputs in (gateway_inputs, home_inputs):
        for script in ("create", "update", "delete"):
            for secret in (PASSWORD, gateway_key, webhook):
                assert secret not in (inputs.get(script) or "")
    gateway_files, home_files = unpack(gateway_inputs["stdin"]), unpack(home_inputs["stdin"])
    assert PASSWORD not in "".join(gateway_files.values())
    gateway_watch = json.loads(gateway_files["/etc/mailgate/dev/watch.json"])
    home_watch = json.loads(home_files["/etc/mailgate/dev/watch.json"])
    assert [c.get("password") for c in gateway_watch["channels"]] == [gateway_key, None]
    assert [c.get("password") for c in home_watch["channels"]] == [PASSWORD, None]
    assert gateway_watch["channels"][1]["url"] == home_watch["channels"][1]["url"] == webhook
    assert gateway_watch["after_seconds"] == home_watch["after_seconds"] == 20 * 60
    # The gateway checks home's twin ports; home checks the gateway's public address.
    assert {(t["host"], t["port"]) for t in gateway_watch["targets"]} == {
        (raw["home"]["tailnetIp"], port) for port in (10025, 10465, 10587, 10143, 10993, 14190)}
    assert {t["host"] for t in home_watch["targets"]} == {h.PUBLIC_IPV4}
    assert 25 not in {t["port"] for t in home_watch["targets"]}
    assert "enable --now mailgate-dev-watch.timer" in gateway_inputs["create"]


def test_the_banlist_id_reaches_the_gateway_only_on_stdin_and_turns_bans_on(dev_raw):
    banlist_id = "5b6f-banlist-id-for-mock-tests"
    run = run_program(dev_raw, secrets={"relayPassword": PASSWORD, "banlistId": banlist_id})
    inputs, _, sent = command(run, "gateway-config-apply")
    assert secret_paths(sent) >= {"stdin"}
    assert banlist_id not in inputs["create"]
    config = json.loads(unpack(inputs["stdin"])["/etc/mailgate/dev/bans.json"])
    assert config["enabled"] is True and config["id"] == banlist_id
    assert (config["host"], config["address"], config["port"]) == ("mail.example.com", dev_raw["home"]["tailnetIp"], 443)
    # The gateway's own public address is never banned.
    assert f"{h.PUBLIC_IPV4}/32" in config["never"] and "100.64.0.0/10" in config["never"]
    assert "enable --now mailgate-dev-bans.timer" in inputs["create"]
    assert "nft delete table inet mailgate_bans" in inputs["create"]
    assert banlist_id not in json.dumps(run.exports)
