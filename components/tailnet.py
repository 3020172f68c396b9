"""The tailnet policy, and how a device's tailnet address is read.

Resources: a `tailscale.Acl` only with tailscale.manageAcl, because that resource
replaces the WHOLE tailnet policy file. Otherwise the policy is an output snippet to merge
by hand. The gateway's keys are minted per VM (components/bootstrap.py).
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


@dataclass(frozen=True)
class TailnetArgs:
    settings: Settings


class Tailnet(pulumi.ComponentResource):
    """The policy that confines the gateway to the home twin ports."""

    acl: tailscale.Acl | None
    policy_snippet: pulumi.Output[str]

    def __init__(self, name: str, args: TailnetArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mailgate:tailscale:Tailnet", name, None, opts)
        self.acl = tailscale.Acl(
            f"{name}-acl",
            acl=json.dumps(policy(args.settings), indent=2),
            # Without it the provider refuses to replace a policy someone edited; with
            # manageAcl the user has agreed that Pulumi owns the whole file.
            overwrite_existing_content=True,
            opts=pulumi.ResourceOptions(parent=self),
        ) if args.settings.tailscale.manage_acl else None
        self.policy_snippet = pulumi.Output.from_input(render_policy_snippet(args.settings))
        self.register_outputs({"policy_snippet": self.policy_snippet})


def tailnet_ipv4(addresses: Sequence[str]) -> str:
    """The device's 100.x address (a device also has an fd7a:115c:a1e0:: IPv6 one)."""
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and ip in TAILNET_RANGES[0]:
            return str(ip)
    raise ValueError(f"the device has no tailnet IPv4 address among {list(addresses)}")
