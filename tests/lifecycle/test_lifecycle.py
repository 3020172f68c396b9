"""`pulumi up` after `pulumi up`: the real __main__.py under the engine model, the real
scripts on throwaway hosts, and what a user would find on them afterwards."""

from __future__ import annotations

import subprocess

from mailgate.renderers.nginx import render_nginx_stream
from tests.lifecycle.hosts import GATEWAY_NGINX, STOCK_NGINX_CONF
from tests.lifecycle.providers import new_ed25519_key

APPLY, GATEWAY = "home-config-apply", "gateway-config-apply"
RELAY_MAP = "data/conf/postfix/mailgate_relay_passwd"
MAIL_CONTAINERS = ("postfix-mailcow", "dovecot-mailcow")
MAILCOW_DIR = "/opt/mailcow-dockerized"


def assert_ok(result, lab):
    assert result.error is None, f"{result.error}\nsteps: {result.ops()}\nran: {lab.ran()}"


def assert_gateway_serves(lab, stack="dev"):
    """The stack's current VM joined the tailnet at boot and runs mailgate's nginx and
    firewall; the program's tailnet address is that VM's."""
    vm = lab.vm(stack)
    assert vm.booted and not vm.boot_error, f"the VM did not join the tailnet: {vm.boot_error}"
    machine = vm.machine
    assert machine.stream.exists() and machine.stream.read_text() == render_nginx_stream(
        lab.settings(stack), GATEWAY_NGINX), f"the VM serves no or a stale stream config; scripts run: {lab.ran()}"
    assert machine.conf.read_text() == STOCK_NGINX_CONF, "the packaged nginx.conf was changed"
    ports = ",".join(str(s.public_port) for s in lab.settings(stack).enabled_services)
    assert f"-A MAILGATE-IN -p tcp -m multiport --dports {ports} -j ACCEPT" in machine.firewall()
    assert machine.listening(25)


def assert_home_serves(lab, password, stack="dev"):
    """mailgate's files are in place, the mail containers run with them, state is kept."""
    mailcow = lab.mailcow(stack)
    mailcow_dir = lab.raw[stack]["home"].get("mailcowDir", MAILCOW_DIR)
    relay_map = mailcow / RELAY_MAP
    assert relay_map.exists() and password in relay_map.read_text(), (
        f"relay map lost or stale; steps: {lab.last.ops()}; ran: {lab.ran()}")
    assert "mailgate" in (mailcow / "mailcow.conf").read_text()
    for container in MAIL_CONTAINERS:
        assert lab.home.docker.serves(mailcow, container), f"{container} runs an old config"
    state = lab.home.root / f"var/lib/mailgate/{stack}"
    assert (state / f"blocks{mailcow_dir}/mailcow.conf").exists(), "no record of the block mailgate wrote"


def up(lab, stack="dev"):
    lab.last = lab.up(stack)
    return lab.last


def test_first_up_configures_both_hosts(lab):
    assert_ok(up(lab), lab)
    ran = lab.ran()
    assert sorted(ran) == sorted([(GATEWAY, "create"), (APPLY, "create")])
    assert_gateway_serves(lab)
    assert_home_serves(lab, "xsmtpsib-first-relay-key")


def test_second_up_without_changes_runs_nothing(lab):
    assert_ok(up(lab), lab)
    home_before, calls = lab.home.tree(), lab.home.docker.calls()
    assert_ok(up(lab), lab)
    assert lab.ran() == []
    assert lab.last.ops() == {}
    assert lab.home.tree() == home_before and lab.home.docker.calls() == calls


def test_relay_password_rotation_updates_home_in_place(lab):
    assert_ok(up(lab), lab)
    lab.secrets["dev"]["relayPassword"] = "xsmtpsib-rotated-relay-key"
    assert_ok(up(lab), lab)
    assert (APPLY, "delete") not in lab.ran(), (
        f"the restore script ran after the new apply; steps {lab.last.ops()}, ran {lab.ran()}")
    assert_home_serves(lab, "xsmtpsib-rotated-relay-key")
    assert lab.last.ops().get(APPLY) == "update"


def assert_reached_current_vm(lab, result, stack="dev"):
    vm = lab.vm(stack)
    assert (GATEWAY, "update") in lab.ran() or (GATEWAY, "create") in lab.ran(), (
        f"the gateway step did not run on the new VM; steps {result.ops()}")
    assert {run.host for run in lab.runs if run.name == GATEWAY} == {vm.ocid}
    assert result.exports["gateway_tailnet_ip"] == vm.devices[-1].address


def test_new_pinned_image_gives_a_configured_gateway(lab):
    """The provider would swap the boot volume in place for a new image
    (core_instance_resource.go: source_id is updatable): same OCID, so the same spent key
    and machine name on a fresh disk. mailgate asks for a replacement instead."""
    assert_ok(up(lab), lab)
    first = lab.vm().ocid
    lab.world.clock.advance(hours=3)
    lab.raw["dev"]["gateway"]["imageId"] = "ocid1.image.oc1.eu-frankfurt-1.ubuntu2404next"
    admin_cidrs = list(lab.raw["dev"]["gateway"].get("adminCidrs", []))
    assert_ok(up(lab), lab)
    assert lab.raw["dev"]["gateway"].get("adminCidrs", []) == admin_cidrs
    assert lab.last.ops().get("gateway-instance") == "replace" and lab.vm().ocid != first
    assert_gateway_serves(lab)
    assert_reached_current_vm(lab, lab.last)


def test_a_launch_retried_a_day_after_out_of_host_capacity_joins_with_a_fresh_key(lab):
    lab.world.out_of_capacity = True
    failed = up(lab)
    assert failed.error and "Out of host capacity" in failed.error
    # Nothing reached a gateway or changed the home.
    assert lab.ran() == [] and not lab.world.vms
    lab.world.clock.advance(hours=30)
    lab.world.out_of_capacity = False
    assert_ok(up(lab), lab)
    assert_gateway_serves(lab)
    assert_reached_current_vm(lab, lab.last)
    assert_home_serves(lab, "xsmtpsib-first-relay-key")


def test_replaced_vm_is_configured_and_joins_with_a_fresh_key(lab):
    """New SSH keys replace the instance (delete first): a new OCID, a new machine."""
    assert_ok(up(lab), lab)
    first = lab.vm().ocid
    lab.world.clock.advance(hours=3)
    keys = lab.raw["dev"]["gateway"]["sshPublicKeys"]
    keys.append("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0nSUbL7GsMWA2b4n6W9YpC5ZmeVtWmlMRsN4KmAyUX second@example.com")
    assert_ok(up(lab), lab)
    assert lab.vm().ocid != first and first not in lab.world.vms
    assert_gateway_serves(lab)
    assert_reached_current_vm(lab, lab.last)


def test_vm_gone_after_refresh_comes_back_configured(lab):
    assert_ok(up(lab), lab)
    lab.world.terminate(lab.vm().ocid)  # Oracle reclaimed the idle instance
    lab.world.clock.advance(hours=3)
    assert lab.engines["dev"].refresh() == ["gateway-instance"]
    assert_ok(up(lab), lab)
    assert_gateway_serves(lab)
    assert_reached_current_vm(lab, lab.last)


def test_a_stopped_vm_is_started_again_not_rebuilt(lab):
    """Oracle stops an idle Always Free VM. The refresh reads back `state: STOPPED`;
    the program's declared RUNNING makes the next up an in-place START of the same VM,
    and the configured hosts are left alone."""
    assert_ok(up(lab), lab)
    vm = lab.vm()
    home_before = lab.home.tree()
    lab.world.stop(vm.ocid)
    lab.world.clock.advance(hours=30)
    assert lab.engines["dev"].refresh() == []
    assert_ok(up(lab), lab)
    assert lab.last.ops() == {"gateway-instance": "update"}, lab.last.ops()
    assert lab.vm() is vm and not vm.stopped, "the gateway was not started again"
    assert lab.ran() == [] and lab.home.tree() == home_before
    assert_gateway_serves(lab)
    # Reachable again: the next change reaches the same VM.
    lab.raw["dev"]["services"] = ["smtp", "submission", "imaps"]
    assert_ok(up(lab), lab)
    assert {run.host for run in lab.runs if run.name == GATEWAY} == {vm.ocid}
    assert_gateway_serves(lab)


def test_a_refresh_of_a_healthy_deployment_changes_nothing(lab):
    # What the providers read back must not differ from what the program declares, or
    # the next up would replace it (the bootstrap URL, and with it the VM).
    assert_ok(up(lab), lab)
    vm = lab.vm().ocid
    assert lab.engines["dev"].refresh() == []
    assert_ok(up(lab), lab)
    assert lab.last.ops() == {} and lab.ran() == [] and lab.vm().ocid == vm


def test_a_service_removed_and_added_back(lab):
    assert_ok(up(lab), lab)
    services = lab.raw["dev"]["services"]
    lab.raw["dev"]["services"] = [s for s in services if s != "imaps"]
    assert_ok(up(lab), lab)
    assert_gateway_serves(lab)
    assert "993" not in lab.vm().machine.firewall() and not lab.vm().machine.listening(993)
    lab.raw["dev"]["services"] = services
    assert_ok(up(lab), lab)
    assert_gateway_serves(lab)
    assert lab.vm().machine.listening(993)
    assert_home_serves(lab, "xsmtpsib-first-relay-key")


def test_relay_host_change_reaches_postfix_only(lab):
    assert_ok(up(lab), lab)
    dovecot = lab.home.docker.container(lab.mailcow(), "dovecot-mailcow")
    lab.raw["dev"]["relay"]["host"] = "smtp.other-relay.example.net"
    assert_ok(up(lab), lab)
    assert lab.ran() == [(APPLY, "update")]
    assert "smtp.other-relay.example.net" in (lab.mailcow() / "data/conf/postfix/extra.cf").read_text()
    assert_home_serves(lab, "xsmtpsib-first-relay-key")
    assert lab.home.docker.container(lab.mailcow(), "dovecot-mailcow") == dovecot


def test_gateway_tailnet_address_change_reaches_home(lab):
    assert_ok(up(lab), lab)
    device = lab.vm().devices[-1]
    old_address, device.address = device.address, "100.64.7.77"  # edited in the admin console
    assert_ok(up(lab), lab)
    assert lab.last.exports["gateway_tailnet_ip"] == "100.64.7.77"
    assert (APPLY, "update") in lab.ran()
    chain = lab.home.firewall()
    assert "-s 100.64.7.77/32" in chain and f"-s {old_address}/32" not in chain
    assert "100.64.7.77" in (lab.mailcow() / "data/conf/dovecot/extra.conf").read_text()
    assert_home_serves(lab, "xsmtpsib-first-relay-key")
    assert_gateway_serves(lab)


def test_failed_home_validation_keeps_the_old_config_and_the_next_up_succeeds(lab):
    assert_ok(up(lab), lab)
    mailcow_before = lab.home.tree(str(MAILCOW_DIR))
    lab.raw["dev"]["relay"]["port"] = 2525
    lab.home.docker.fail_on("doveconf")
    failed = up(lab)
    assert failed.error and "doveconf refused" in failed.error
    assert lab.home.tree(str(MAILCOW_DIR)) == mailcow_before
    assert_home_serves(lab, "xsmtpsib-first-relay-key")
    lab.home.docker.fail_on(None)
    assert_ok(up(lab), lab)
    assert lab.ran() == [(APPLY, "update")]
    assert ":2525" in (lab.mailcow() / "data/conf/postfix/extra.cf").read_text()
    assert_home_serves(lab, "xsmtpsib-first-relay-key")


def test_destroy_after_updates_restores_home_byte_for_byte(lab):
    home_before = lab.home.tree()
    assert_ok(up(lab), lab)
    lab.secrets["dev"]["relayPassword"] = "xsmtpsib-rotated-relay-key"
    assert_ok(up(lab), lab)
    lab.raw["dev"]["services"] = ["smtp", "submission", "imaps"]
    assert_ok(up(lab), lab)
    lab.world.terminate(lab.vm().ocid)  # the VM is already gone
    lab.engines["dev"].unprotect_all()  # the README: state unprotect --all, then destroy
    result = lab.destroy()
    assert_ok(result, lab)
    assert lab.home.tree() == home_before
    assert "MAILGATE-TWIN" not in lab.home.firewall()
    for container in MAIL_CONTAINERS:
        assert lab.home.docker.serves(lab.mailcow(), container)
    assert lab.engines["dev"].resources == {} and lab.engines["dev"].pending_deletes == []
    assert [name for name, _ in lab.ran()] == [APPLY]  # the gateway step has no delete


def test_the_mini_pcs_key_never_expires_while_deployed_and_destroy_gives_back_the_default(lab):
    """Found by its tailnet address; destroy's DeviceKey delete turns expiry back on."""
    assert not lab.home_device.key_expiry_disabled
    assert_ok(up(lab), lab)
    assert lab.home_device.key_expiry_disabled
    assert_ok(up(lab), lab)
    assert lab.last.ops() == {}
    lab.engines["dev"].unprotect_all()
    assert_ok(lab.destroy(), lab)
    assert not lab.home_device.key_expiry_disabled


def test_two_stacks_share_a_tailnet_and_a_home_without_touching_each_other(lab):
    assert_ok(up(lab, "dev"), lab)
    dev_home = lab.home.tree(str(MAILCOW_DIR)) | lab.home.tree("/var/lib/mailgate/dev")
    prod_before = lab.home.tree(lab.raw["prod"]["home"]["mailcowDir"])
    assert_ok(up(lab, "prod"), lab)
    assert lab.home.tree(str(MAILCOW_DIR)) | lab.home.tree("/var/lib/mailgate/dev") == dev_home
    assert lab.vm("dev").ocid != lab.vm("prod").ocid
    names = {stack: lab.vm(stack).devices[-1].hostname for stack in ("dev", "prod")}
    assert names["dev"] != names["prod"] and all(stack in names[stack] for stack in names)
    assert lab.last.exports["gateway_tailnet_ip"] == lab.vm("prod").devices[-1].address
    assert set(lab.world.store.buckets) == {"mailgate-dev-bootstrap", "mailgate-prod-bootstrap"}
    firewall = lab.home.firewall()
    assert "-A PREROUTING -j MAILGATE-TWIN-dev" in firewall
    assert "-A PREROUTING -j MAILGATE-TWIN-prod" in firewall
    for stack in ("dev", "prod"):
        assert_gateway_serves(lab, stack)
        assert_home_serves(lab, "xsmtpsib-first-relay-key", stack)
    lab.engines["prod"].unprotect_all()
    assert_ok(lab.destroy("prod"), lab)
    assert lab.home.tree(lab.raw["prod"]["home"]["mailcowDir"]) == prod_before
    assert "MAILGATE-TWIN-prod" not in lab.home.firewall()
    assert "-A PREROUTING -j MAILGATE-TWIN-dev" in lab.home.firewall()
    assert_home_serves(lab, "xsmtpsib-first-relay-key", "dev")
    assert_gateway_serves(lab, "dev")


def test_a_mailcow_update_between_ups_survives_the_next_up_and_destroy(lab):
    """What `update.sh` does to mailcow.conf (append new options, `sed -i` a retired one,
    chmod 600, then `compose up -d`) between two ups: the next up keeps it, and so does
    destroy, which takes out mailgate's block only."""
    assert_ok(up(lab), lab)
    conf = lab.mailcow() / "mailcow.conf"
    subprocess.run(["sed", "-i", r"/\bDBPASS\b/d", str(conf)], check=True)
    with conf.open("a") as out:
        out.write("ENABLE_IPV6=true\n")
    conf.chmod(0o600)
    assert lab.home.docker.compose(lab.mailcow(), "up", "-d").returncode == 0
    updated = conf.read_text()
    lab.secrets["dev"]["relayPassword"] = "xsmtpsib-rotated-relay-key"
    assert_ok(up(lab), lab)
    assert lab.ran() == [(APPLY, "update")]
    assert conf.read_text() == updated, "the update's lines were lost or mailgate's block moved"
    assert_home_serves(lab, "xsmtpsib-rotated-relay-key")
    lab.world.terminate(lab.vm().ocid)
    lab.engines["dev"].unprotect_all()
    assert_ok(lab.destroy(), lab)
    assert conf.read_text() == "MAILCOW_HOSTNAME=mail.example.com\nENABLE_IPV6=true\n"
    for container in MAIL_CONTAINERS:
        assert lab.home.docker.serves(lab.mailcow(), container)


def test_a_gateway_presenting_another_host_key_is_refused(lab):
    """Every connection pins the host key the program made for that VM: a server on the
    gateway's address with any other key (an impostor, a disk swapped by hand) gets nothing."""
    assert_ok(up(lab), lab)
    machine = lab.vm().machine
    stream_before = machine.stream.read_text()
    machine.sshd.replace_host_key(new_ed25519_key()[0])
    lab.raw["dev"]["services"] = ["smtp", "submission", "imaps"]
    failed = up(lab)
    assert failed.error and "host key mismatch" in failed.error and lab.vm().ocid in failed.error
    assert machine.stream.read_text() == stream_before


def test_a_wrong_home_host_key_stops_the_home_step_before_it_sends_anything(lab):
    home_before = lab.home.tree()
    lab.raw["dev"]["home"]["sshHostKey"] = new_ed25519_key()[1].strip()
    failed = up(lab)
    assert failed.error and "home-config-apply" in failed.error and "host key mismatch at home" in failed.error
    assert lab.home.tree() == home_before
    assert (APPLY, "create") not in [(run.name, run.script) for run in lab.runs if run.ok]
