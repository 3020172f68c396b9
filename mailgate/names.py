"""Names that must differ between stacks that share a tailnet, an OCI compartment or a
home host (say `dev` and `prod`), derived from the stack name alone.

Two stacks never touch each other's tailnet machine, bucket, home state directory,
firewall chain, host files or managed blocks (see managed_block), because every one of
those names carries the stack.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Pulumi's own rule for stack names.
STACK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# iptables keeps chain names to 28 characters (XT_EXTENSION_MAXNAMELEN less the NUL).
CHAIN_MAX = 28
# A machine name is one DNS label; leave room for the generation suffix.
GATEWAY_NAME_MAX = 63 - 7
SUFFIX_HEX = 6


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _fit(prefix: str, stack: str, limit: int) -> str:
    """prefix + stack, or prefix + a digest of the stack when that would be too long."""
    name = prefix + stack
    return name if len(name) <= limit else prefix + _digest(stack, limit - len(prefix))


@dataclass(frozen=True)
class StackNames:
    stack: str

    def __post_init__(self) -> None:
        if not valid_stack_name(self.stack):
            raise ValueError(f"{self.stack!r} is not a Pulumi stack name")

    @property
    def label(self) -> str:
        """The stack as a DNS label fragment: lowercase letters, digits and '-'. When that
        loses something ('dev_1', 'Dev'), a digest keeps apart stacks it would merge."""
        label = re.sub(r"[^a-z0-9-]+", "-", self.stack.lower()).strip("-")
        if label == self.stack:
            return label
        return f"{label}-{_digest(self.stack, 6)}" if label else _digest(self.stack, 8)

    @property
    def gateway_machine_prefix(self) -> str:
        """The gateway's tailnet machine name before its VM's generation suffix."""
        return _fit("mailgate-", self.label, GATEWAY_NAME_MAX - 3) + "-gw"

    @property
    def bootstrap_bucket(self) -> str:
        # Bucket names are unique per Object Storage namespace, i.e. per tenancy.
        return f"mailgate-{self.label}-bootstrap"

    def display_name(self, what: str) -> str:
        """OCI display name of a stack's resource."""
        return f"mailgate-{self.stack}-{what}"

    @property
    def home_state_dir(self) -> str:
        return f"/var/lib/mailgate/{self.stack}"

    @property
    def home_firewall_path(self) -> str:
        return f"/etc/mailgate/{self.stack}/home-firewall.rules"

    @property
    def home_firewall_v6_path(self) -> str:
        return f"/etc/mailgate/{self.stack}/home-firewall.rules.v6"

    @property
    def docker_drop_in(self) -> str:
        return f"/etc/systemd/system/docker.service.d/mailgate-{self.stack}-after-tailscaled.conf"

    @property
    def home_nonlocal_bind_sysctl(self) -> str:
        return f"/etc/sysctl.d/60-mailgate-{self.stack}-nonlocal-bind.conf"

    @property
    def home_twin_chain(self) -> str:
        return _fit("MAILGATE-TWIN-", self.stack, CHAIN_MAX)

    # The watcher, at the same paths on the gateway and on the Mini PC.
    @property
    def watch_unit(self) -> str:
        """The systemd service (and, with .timer, its timer) of the watcher."""
        return f"mailgate-{self.stack}-watch"

    @property
    def watch_script(self) -> str:
        return f"/usr/local/lib/mailgate/{self.stack}/watch.py"

    @property
    def watch_config(self) -> str:
        return f"/etc/mailgate/{self.stack}/watch.json"

    def watch_unit_path(self, suffix: str) -> str:
        return f"/etc/systemd/system/{self.watch_unit}.{suffix}"

    # The gateway's ban loader.
    @property
    def bans_unit(self) -> str:
        return f"mailgate-{self.stack}-bans"

    @property
    def bans_script(self) -> str:
        return f"/usr/local/lib/mailgate/{self.stack}/banlist.py"

    @property
    def bans_config(self) -> str:
        return f"/etc/mailgate/{self.stack}/bans.json"

    def bans_unit_path(self, suffix: str) -> str:
        return f"/etc/systemd/system/{self.bans_unit}.{suffix}"



def valid_stack_name(stack: str) -> bool:
    # '.' and '..' would name the parent directory in the home state path.
    return bool(STACK_NAME.match(stack)) and stack.strip(".") != ""


def vm_suffix(instance_id: str) -> str:
    """A short digest of a VM's OCID: what tells one gateway VM's names from another's."""
    return _digest(instance_id, SUFFIX_HEX)


def gateway_machine_name(prefix: str, instance_id: str) -> str:
    """The tailnet machine name of one gateway VM: `prefix` and a digest of the VM's OCID.
    No other VM, stack or device has it, so looking it up can never answer with a rebuilt
    node's, another stack's or a stranger's address."""
    return f"{prefix}-{vm_suffix(instance_id)}"
