"""GatewayConfig: lays the nginx stream config and the port firewall on the gateway.

Resources: one `command:remote:Command`. It runs the rendered apply script (install,
`nginx -t`, load the firewall, reload; put the old files back on failure) with the files
on stdin, and runs again only when their sha256 changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.ssh import gateway_connection, step_options
from mailgate.layout import CLOUD_INIT, gateway_files
from mailgate.renderers.remote_scripts import DEPLOY_TARGETS, content_hash, pack, render_gateway_apply
from mailgate.settings import Settings


@dataclass(frozen=True)
class GatewayConfigArgs:
    settings: Settings
    address: pulumi.Input[str]
    """The gateway's public address (SSH is open there from adminCidrs)."""
    private_key: pulumi.Input[str] | None
    instance: pulumi.Resource
    """The VM; the step waits for it (and for cloud-init, in the script)."""


class GatewayConfig(pulumi.ComponentResource):
    def __init__(self, name: str, args: GatewayConfigArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailgate:remote:GatewayConfig", name, None, opts)
        # cloud-init travels in the instance metadata, not over SSH.
        files = [f for f in gateway_files(args.settings) if f.path != CLOUD_INIT]
        bundle = pack(files)
        self.apply = remote.Command(
            f"{name}-apply",
            connection=gateway_connection(args.settings, args.address, args.private_key),
            create=render_gateway_apply(files, DEPLOY_TARGETS["gateway"]),
            update=render_gateway_apply(files, DEPLOY_TARGETS["gateway"]),
            stdin=bundle,
            triggers=[content_hash(bundle)],
            logging=remote.Logging.STDOUT_AND_STDERR,
            opts=step_options(self, depends_on=[args.instance], secret_output=False),
        )
        self.register_outputs({"apply_stdout": self.apply.stdout})
