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
from mailgate.deployment import PUBLIC_IPV4_PLACEHOLDER, Deployment
from mailgate.layout import CLOUD_INIT, Secrets, gateway_files
from mailgate.renderers.remote_scripts import DEPLOY_TARGETS, pack, gateway_timers, render_gateway_apply
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
    banlist_id: pulumi.Input[str] | None = None
    """Mailcow's ban-list id (mailgate:banlistId), which the gateway's ban loader fetches with."""
    public_ipv4: pulumi.Input[str] | None = None
    """The gateway's own public addresses, never banned."""
    public_ipv6: pulumi.Input[str | None] | None = None


class GatewayConfig(pulumi.ComponentResource):
    def __init__(self, name: str, args: GatewayConfigArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailgate:remote:GatewayConfig", name, None, opts)
        settings = args.settings

        def over_ssh(secrets: Secrets, deployment: Deployment = Deployment()) -> list:
            # cloud-init travels in the instance metadata, not over SSH.
            return [f for f in gateway_files(settings, secrets, deployment) if f.path != CLOUD_INIT]

        # The script names paths and modes only; the files, keys among them, go on stdin.
        files = over_ssh(Secrets(alerts_relay_password=None, banlist_id=None))
        script = args.instance_id.apply(lambda instance: render_gateway_apply(
            files, DEPLOY_TARGETS["gateway"], instance_id=instance,
            timers=gateway_timers(settings, DEPLOY_TARGETS["gateway"])))

        def payload(values: list) -> str:
            relay_key, webhook, banlist_id, ipv4, ipv6 = values
            return pack(over_ssh(Secrets(alerts_relay_password=relay_key, alerts_webhook_url=webhook,
                                         banlist_id=banlist_id),
                                 Deployment(public_ipv4=ipv4 or PUBLIC_IPV4_PLACEHOLDER, public_ipv6=ipv6)))

        stdin = pulumi.Output.secret(pulumi.Output.all(
            args.alerts_relay_password, args.alerts_webhook_url, args.banlist_id, args.public_ipv4,
            args.public_ipv6).apply(payload))
        # No triggers: a change of them would replace the command, never update it.
        self.apply = remote.Command(
            f"{name}-apply",
            connection=gateway_connection(args.settings, args.tailnet_ip, args.private_key, args.host_key),
            create=script,
            update=script,
            stdin=stdin,
            logging=remote.Logging.STDOUT_AND_STDERR,
            opts=step_options(self, secret_output=False),
        )
        self.register_outputs({"apply_stdout": self.apply.stdout})
