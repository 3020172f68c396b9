"""HomeConfig: mailgate's blocks in Mailcow's user files, the twin-port firewall, the
Docker drop-in and the sysctl file on the Mini PC, applied safely and taken back on destroy.

Resources: one `command:remote:Command`, `-apply`. Its stdin (secret) holds mailgate's
blocks and its own files; the script splices each block into the live file as the host
has it at that moment, validates the result in the containers, recreates or restarts only
the affected containers and rolls back on failure. Its `delete` takes the blocks out of
the live files and deletes the files mailgate created. Changed content is an update,
never a replace.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.ssh import home_connection, step_options
from mailgate.deployment import Deployment
from mailgate.layout import Secrets, home_files
from mailgate.renderers.remote_scripts import (
    DEPLOY_TARGETS,
    home_bundle,
    render_home_apply,
    render_home_restore,
)
from mailgate.settings import Settings


@dataclass(frozen=True)
class HomeConfigArgs:
    settings: Settings
    gateway_tailnet_ip: pulumi.Input[str]
    relay_password: pulumi.Input[str]
    private_key: pulumi.Input[str] | None
    gateway_address: pulumi.Input[str] | None = None
    gateway_private_key: pulumi.Input[str] | None = None
    gateway_host_key: pulumi.Input[str] | None = None
    """The gateway's SSH host key, pinned on the jump (home.viaGateway)."""
    public_ipv4: pulumi.Input[str] | None = None
    """The gateway's public address, which the watcher on the Mini PC checks."""
    alerts_webhook_url: pulumi.Input[str] | None = None
    acme_dns_credentials: pulumi.Input[dict] | None = None
    """dns-01: the DNS provider's API credentials for Mailcow's acme container."""


class HomeConfig(pulumi.ComponentResource):
    def __init__(self, name: str, args: HomeConfigArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailgate:remote:HomeConfig", name, None, opts)
        settings = args.settings
        connection = home_connection(settings, args.private_key, args.gateway_address,
                                     args.gateway_private_key, args.gateway_host_key)

        def bundle(values: list) -> str:
            gateway_ip, public_ipv4, password, webhook, dns_credentials = values
            deployment = Deployment(gateway_tailnet_ip=gateway_ip, public_ipv4=public_ipv4)
            return home_bundle(settings, home_files(settings, deployment, Secrets(
                relay_password=password, alerts_webhook_url=webhook,
                acme_dns_credentials=dns_credentials)), deployment)

        payload = pulumi.Output.secret(pulumi.Output.all(
            args.gateway_tailnet_ip, args.public_ipv4, args.relay_password, args.alerts_webhook_url,
            args.acme_dns_credentials).apply(bundle))
        # The apply script names files and services only; it holds no secret.
        script = render_home_apply(settings, home_files(settings, Deployment(), Secrets()),
                                   DEPLOY_TARGETS["home"])
        self.apply = remote.Command(
            f"{name}-apply",
            connection=connection,
            create=script,
            update=script,
            delete=render_home_restore(settings, DEPLOY_TARGETS["home"]),
            # The blocks and files travel on stdin, so a change of any byte is an update that
            # re-runs `update`. Never `triggers`: pulumi-command replaces on their change,
            # and a replacement ends with the OLD resource's delete, the restore script,
            # which would undo the new files.
            stdin=payload,
            logging=remote.Logging.NONE,
            opts=step_options(self),
        )
        self.register_outputs({})
