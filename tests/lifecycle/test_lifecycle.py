"""`pulumi up` after `pulumi up`: the real __main__.py under the engine model, the real
scripts on throwaway hosts, and what a user would find on them afterwards."""

from __future__ import annotations

from mailgate.renderers.nginx import render_nginx_conf
from tests.lifecycle.hosts import GATEWAY_NGINX

APPLY, SNAPSHOT, GATEWAY = "home-config-apply", "home-config-snapshot", "gateway-config-apply"
RELAY_MAP = "data/conf/postfix/mailgate_relay_passwd"
MAIL_CONTAINERS = ("postfix-mailcow", "dovecot-mailcow")


def assert_ok(result, lab):
    assert result.error is None, f"{result.error}\nsteps: {result.ops()}\nran: {lab.ran()}"


def assert_gateway_serves(lab, stack="dev"):
    """The stack's current VM joined the tailnet at boot and runs mailgate's nginx and
    firewall; the program's tailnet address is that VM's."""
    vm = lab.vm(stack)
    assert vm.booted and not vm.boot_error, f"the VM did not join the tailnet: {vm.boot_error}"
    machine = vm.machine
    assert machine.conf.read_text() == render_nginx_conf(lab.settings(stack), GATEWAY_NGINX), (
        f"the VM serves the stock nginx config; scripts run: {lab.ran()}")
    ports = ",".join(str(s.public_port) for s in lab.settings(stack).enabled_services)
    assert f"-A MAILGATE-IN -p tcp -m multiport --dports {ports} -j ACCEPT" in machine.firewall()
    assert machine.listening(25)


def assert_home_serves(lab, password, stack="dev"):
    """mailgate's files are in place, the mail containers run with them, state is kept."""
    mailcow = lab.mailcow(stack)
    relay_map = mailcow / RELAY_MAP
    assert relay_map.exists() and password in relay_map.read_text(), (
        f"relay map lost or stale; steps: {lab.last.ops()}; ran: {lab.ran()}")
    assert "mailgate" in (mailcow / "mailcow.conf").read_text()
    for container in MAIL_CONTAINERS:
        assert lab.home.docker.serves(mailcow, container), f"{container} runs an old config"
    assert (lab.home.root / f"var/lib/mailgate/{stack}/backup/manifest").exists()


def up(lab, stack="dev"):
    lab.last = lab.up(stack)
    return lab.last


def test_first_up_configures_both_hosts(lab):
    assert_ok(up(lab), lab)
    assert lab.ran() == [(GATEWAY, "create"), (SNAPSHOT, "create"), (APPLY, "create")] or (
        sorted(lab.ran()) == sorted([(GATEWAY, "create"), (SNAPSHOT, "create"), (APPLY, "create")]))
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
    """An image change is an in-place boot volume replacement (same OCID, fresh disk)."""
    assert_ok(up(lab), lab)
    lab.world.clock.advance(hours=3)
    lab.raw["dev"]["gateway"]["imageId"] = "ocid1.image.oc1.eu-frankfurt-1.ubuntu2404next"
    admin_cidrs = list(lab.raw["dev"]["gateway"].get("adminCidrs", []))
    assert_ok(up(lab), lab)
    assert lab.raw["dev"]["gateway"].get("adminCidrs", []) == admin_cidrs
    assert_gateway_serves(lab)
    assert_reached_current_vm(lab, lab.last)


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
