"""GatewayConfig: lays the nginx stream config (a file of its own beside the packaged
nginx.conf) and the port firewall on the gateway.

Resources: one `command:remote:Command`, reaching the gateway over the tailnet. It runs
the rendered apply script (check the staged copies, install, load both firewalls, reload
and wait until nginx listens on every port; undo everything on failure) with the files on
stdin. pulumi-command updates (re-runs) it when
its script, stdin or connection changes: when a file's bytes change, and on every new VM,
whose OCID is in the script text and whose tailnet address is the connection's host.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.ssh import gateway_connection, step_options
from mailgate.layout import CLOUD_INIT, Secrets, gateway_files
from mailgate.renderers.remote_scripts import DEPLOY_TARGETS, pack, render_gateway_apply, watch_context
from mailgate.settings import Settings


@dataclass(frozen=True)
class GatewayConfigArgs:
    settings: Settings
    tailnet_ip: pulumi.Input[str]
    """The gateway's tailnet address, read once it joined: SSH goes there."""
    private_key: pulumi.Input[str] | None
    instance_id: pulumi.Output[str]
    """The VM the configuration is for."""
    host_key: pulumi.Input[str]
    """That VM's SSH host public key, pinned."""
    alerts_relay_password: pulumi.Input[str] | None = None
    """The gateway's own relay key for its alerts (mailgate:alertsRelayPassword)."""
    alerts_webhook_url: pulumi.Input[str] | None = None


class GatewayConfig(pulumi.ComponentResource):
    def __init__(self, name: str, args: GatewayConfigArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailgate:remote:GatewayConfig", name, None, opts)
        settings = args.settings

        def over_ssh(secrets: Secrets) -> list:
            # cloud-init travels in the instance metadata, not over SSH.
            return [f for f in gateway_files(settings, secrets) if f.path != CLOUD_INIT]

        # The script names paths and modes only; the files, a relay key among them, go on stdin.
        files = over_ssh(Secrets(alerts_relay_password=None))
        script = args.instance_id.apply(lambda instance: render_gateway_apply(
            files, DEPLOY_TARGETS["gateway"], instance_id=instance, **watch_context(settings)))
        payload = pulumi.Output.secret(pulumi.Output.all(args.alerts_relay_password, args.alerts_webhook_url).apply(
            lambda values: pack(over_ssh(Secrets(alerts_relay_password=values[0], alerts_webhook_url=values[1])))))
        # No triggers: a change of them would replace the command, never update it.
        self.apply = remote.Command(
            f"{name}-apply",
            connection=gateway_connection(args.settings, args.tailnet_ip, args.private_key, args.host_key),
            create=script,
            update=script,
            stdin=payload,
            logging=remote.Logging.STDOUT_AND_STDERR,
            opts=step_options(self, secret_output=False),
        )
        self.register_outputs({"apply_stdout": self.apply.stdout})
