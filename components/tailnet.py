"""The tailnet side: the gateway's bootstrap key, the policy, the gateway's tailnet address.

Resources: one `tailscale.TailnetKey` (single-use, pre-authorised, tagged), and a
`tailscale.Acl` only with tailscale.manageAcl, because that resource replaces the WHOLE
tailnet policy file. Otherwise the policy is an output snippet to merge by hand.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_tailscale as tailscale

from mailgate.renderers.tailscale_policy import policy, render_policy_snippet
from mailgate.settings import TAILNET_RANGES, Settings

# cloud-init upgrades every package before it installs Tailscale; on a 1-OCPU VM that
# takes minutes, and the gateway only shows up in the tailnet after it.
DEVICE_WAIT = "900s"


@dataclass(frozen=True)
class TailnetArgs:
    settings: Settings
    new_key_when: str = ""
    """A digest that changes whenever the gateway gets a new VM, which needs a new key."""


class Tailnet(pulumi.ComponentResource):
    """The gateway's auth key and the policy that confines it to the home twin ports."""

    auth_key: pulumi.Output[str]
    policy_snippet: pulumi.Output[str]

    def __init__(self, name: str, args: TailnetArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mailgate:tailscale:Tailnet", name, None, opts)
        tags = args.settings.tailscale

        acl = tailscale.Acl(
            f"{name}-acl",
            acl=json.dumps(policy(args.settings), indent=2),
            # Without it the provider refuses to replace a policy someone edited; with
            # manageAcl the user has agreed that Pulumi owns the whole file.
            overwrite_existing_content=True,
            opts=pulumi.ResourceOptions(parent=self),
        ) if tags.manage_acl else None

        key = tailscale.TailnetKey(
            f"{name}-gateway-key",
            reusable=False,
            ephemeral=False,
            preauthorized=True,
            tags=[tags.gateway_tag],
            expiry=tags.auth_key_expiry_seconds,
            description="mailgate gateway bootstrap",
            # The gateway uses the key once and it expires soon after. A new key would
            # change the user data and so replace the VM: keep the spent one in state.
            recreate_if_invalid="never",
            # A tagged key needs the tag's tagOwners entry, which the Acl may be creating.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[acl] if acl else None,
                replacement_trigger=args.new_key_when or None,
            ),
        )

        self.auth_key = pulumi.Output.secret(key.key)
        self.policy_snippet = pulumi.Output.from_input(render_policy_snippet(args.settings))
        self.register_outputs({"policy_snippet": self.policy_snippet})


def tailnet_ipv4(addresses: Sequence[str]) -> str:
    """The device's 100.x address (a device also has an fd7a:115c:a1e0:: IPv6 one)."""
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and ip in TAILNET_RANGES[0]:
            return str(ip)
    raise ValueError(f"the device has no tailnet IPv4 address among {list(addresses)}")


def device_tailnet_ip(hostname: str, joined: pulumi.Resource) -> pulumi.Output[str]:
    """The tailnet IPv4 of `hostname`, waited for once `joined`, the machine that joins
    the tailnet under that name, exists.

    A function, not part of Tailnet: the key Tailnet makes goes into the VM, and only
    after the VM exists can its address be asked for.
    """
    device = tailscale.get_device_output(
        hostname=hostname,
        wait_for=DEVICE_WAIT,
        opts=pulumi.InvokeOutputOptions(depends_on=[joined]),
    )
    return device.addresses.apply(tailnet_ipv4)
