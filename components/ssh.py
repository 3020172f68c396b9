"""SSH connections for the remote steps: bounded dialing, optional host key pinning,
optional jump through the gateway."""

from __future__ import annotations

import pulumi
from pulumi_command import remote

from mailgate.settings import Settings

# An unreachable host fails after about DIAL_ATTEMPTS x DIAL_TIMEOUT_SECONDS, not hours.
DIAL_TIMEOUT_SECONDS = 15
DIAL_ATTEMPTS = 4
STEP_TIMEOUT = "20m"


def gateway_connection(settings: Settings, address: pulumi.Input[str],
                       private_key: pulumi.Input[str] | None) -> remote.ConnectionArgs:
    # The gateway's host key is made on its first boot, so it cannot be pinned in advance.
    return remote.ConnectionArgs(
        host=address, user=settings.gateway.ssh_user, private_key=private_key,
        per_dial_timeout=DIAL_TIMEOUT_SECONDS, dial_error_limit=DIAL_ATTEMPTS,
    )


def home_connection(settings: Settings, private_key: pulumi.Input[str] | None,
                    gateway_address: pulumi.Input[str] | None = None,
                    gateway_private_key: pulumi.Input[str] | None = None) -> remote.ConnectionArgs:
    home = settings.home
    proxy = None
    if home.via_gateway:
        proxy = remote.ProxyConnectionArgs(
            host=gateway_address, user=settings.gateway.ssh_user, private_key=gateway_private_key,
            per_dial_timeout=DIAL_TIMEOUT_SECONDS, dial_error_limit=DIAL_ATTEMPTS,
        )
    return remote.ConnectionArgs(
        host=home.ssh_host, port=home.ssh_port, user=home.ssh_user, private_key=private_key,
        host_key=home.ssh_host_key, proxy=proxy,
        per_dial_timeout=DIAL_TIMEOUT_SECONDS, dial_error_limit=DIAL_ATTEMPTS,
    )


def step_options(parent: pulumi.Resource, depends_on: list[pulumi.Resource] | None = None,
                 secret_output: bool = True) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(
        parent=parent,
        depends_on=depends_on,
        custom_timeouts=pulumi.CustomTimeouts(create=STEP_TIMEOUT, update=STEP_TIMEOUT, delete=STEP_TIMEOUT),
        # Script output may quote a file (mailcow.conf holds Mailcow's DB passwords).
        additional_secret_outputs=["stdout", "stderr"] if secret_output else None,
    )
