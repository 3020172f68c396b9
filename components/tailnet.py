"""The tailnet policy, the Mini PC's node key, and how a device's tailnet address is read.

Resources: a `tailscale.Acl` only with tailscale.manageAcl, because that resource
replaces the WHOLE tailnet policy file. Otherwise the policy is an output snippet to merge
by hand. A `tailscale.DeviceKey` that turns off the Mini PC's key expiry, unless the Mini
PC is tagged (tailscale.homeTag): tagged nodes never expire. The gateway's keys are
minted per VM (components/bootstrap.py).
Looked up (invoke): the tailnet's devices, to find the Mini PC at home.tailnetIp.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Sequence

import pulumi
import pulumi_tailscale as tailscale

from mailgate.renderers.tailscale_policy import policy, render_policy_snippet
from mailgate.settings import TAILNET_RANGES, Settings


@dataclass(frozen=True)
class TailnetArgs:
    settings: Settings


class Tailnet(pulumi.ComponentResource):
    """The policy that confines the gateway to the home twin ports, and a Mini PC whose
    node key never expires.

    An untagged Mini PC's key would expire after Tailscale's default 180 days and cut
    the mail path. The DeviceKey's delete sets the key back to Tailscale's default
    (terraform-provider-tailscale resource_device_key.go: Delete sends an empty
    DeviceKey), so `pulumi destroy` turns expiry back ON, even on a Mini PC whose expiry
    was disabled by hand before mailgate.
    """

    acl: tailscale.Acl | None
    home_key: tailscale.DeviceKey | None
    home_key_expiry: pulumi.Output[str]
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
        home_address, home_tag = args.settings.home.tailnet_ip, args.settings.tailscale.home_tag

        def home_node_id(result: Any) -> str:
            try:
                device = device_at(result.devices or [], home_address)
                if home_tag:
                    require_tag(device, home_tag, home_address)
            except ValueError as error:
                # RunError ends the program with its message only, no traceback.
                raise pulumi.RunError(str(error)) from None
            return device.node_id

        # By address, never by name: a rebuilt node or a laptop can share the name.
        node_id = tailscale.get_devices_output(
            opts=pulumi.InvokeOutputOptions(parent=self)).apply(home_node_id)
        self.home_key = None if home_tag else tailscale.DeviceKey(
            f"{name}-home-key",
            device_id=node_id,
            key_expiry_disabled=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Resolves only once the lookup (and with homeTag, the tag check) passed.
        self.home_key_expiry = node_id.apply(
            lambda _: "tagged: never expires" if home_tag else "disabled by mailgate")
        self.policy_snippet = pulumi.Output.from_input(render_policy_snippet(args.settings))
        self.register_outputs({"home_key_expiry": self.home_key_expiry,
                               "policy_snippet": self.policy_snippet})


def device_at(devices: Sequence[Any], address: str) -> Any:
    """The one device among `devices` (getDevices' answer) that has the tailnet `address`."""
    found = [device for device in devices if address in (device.addresses or [])]
    if not found:
        raise ValueError(
            f"no device in the tailnet has {address} (mailgate:home.tailnetIp); is the Mini PC "
            "logged in? `tailscale ip -4` on it prints its address")
    if len(found) > 1:
        names = ", ".join(device.name or device.node_id for device in found)
        raise ValueError(
            f"{len(found)} devices in the tailnet have {address} (mailgate:home.tailnetIp): "
            f"{names}; expected the Mini PC alone")
    return found[0]


def require_tag(device: Any, tag: str, address: str) -> None:
    """A tagged Mini PC gets no DeviceKey: it must really carry the tag, or it expires."""
    if tag not in (device.tags or []):
        raise ValueError(
            f"the device at {address} ({device.name}) does not carry {tag} "
            "(mailgate:tailscale.homeTag), so its key would expire; tag it with "
            f"`sudo tailscale up --advertise-tags={tag}` on the Mini PC, or unset "
            "mailgate:tailscale.homeTag to let mailgate turn its key expiry off")


def tailnet_ipv4(addresses: Sequence[str]) -> str:
    """The device's 100.x address (a device also has an fd7a:115c:a1e0:: IPv6 one)."""
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and ip in TAILNET_RANGES[0]:
            return str(ip)
    raise ValueError(f"the device has no tailnet IPv4 address among {list(addresses)}")
