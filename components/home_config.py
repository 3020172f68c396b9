"""HomeConfig: Mailcow's user files, the twin-port firewall and the Docker drop-in on
the Mini PC, applied safely and given back on destroy.

Resources: two `command:remote:Command`s.
- `-snapshot` backs up the pristine originals on the host (once) and returns them as a
  secret: mailgate merges into the user's own text with its pure renderers.
- `-apply` installs the merged files (stdin, secret), validates them in the containers,
  recreates or restarts only the affected containers, rolls back on failure; its `delete`
  restores every original byte for byte. Changed content is an update, never a replace.
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
    originals_for_merge,
    pack,
    render_home_apply,
    render_home_restore,
    render_home_snapshot,
    unpack,
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


class HomeConfig(pulumi.ComponentResource):
    def __init__(self, name: str, args: HomeConfigArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailgate:remote:HomeConfig", name, None, opts)
        settings = args.settings
        connection = home_connection(settings, args.private_key, args.gateway_address,
                                     args.gateway_private_key)
        self.snapshot = remote.Command(
            f"{name}-snapshot",
            connection=connection,
            create=render_home_snapshot(settings, DEPLOY_TARGETS["home"]),
            logging=remote.Logging.NONE,
            opts=step_options(self),
        )

        def bundle(values: list) -> str:
            snapshot, gateway_ip, password = values
            existing = originals_for_merge(settings, unpack(snapshot))
            files = home_files(settings, Deployment(gateway_tailnet_ip=gateway_ip),
                               Secrets(relay_password=password), existing)
            return pack(files)

        payload = pulumi.Output.secret(pulumi.Output.all(
            self.snapshot.stdout, args.gateway_tailnet_ip, args.relay_password).apply(bundle))
        # The apply script names files and services only; it holds no secret.
        script = render_home_apply(settings, home_files(settings, Deployment(), Secrets()),
                                   DEPLOY_TARGETS["home"])
        self.apply = remote.Command(
            f"{name}-apply",
            connection=connection,
            create=script,
            update=script,
            delete=render_home_restore(settings, DEPLOY_TARGETS["home"]),
            # The merged files travel on stdin, so a change of any byte is an update that
            # re-runs `update`. Never `triggers`: pulumi-command replaces on their change,
            # and a replacement ends with the OLD resource's delete, the restore script,
            # which would undo the new files.
            stdin=payload,
            logging=remote.Logging.NONE,
            opts=step_options(self, depends_on=[self.snapshot]),
        )
        self.register_outputs({})
