"""SSH connections for the remote steps: bounded dialing, host keys pinned (the
gateway's made by the program, the Mini PC's from the stack config), an optional jump
through the gateway."""

from __future__ import annotations

import pulumi
from pulumi_command import remote

from mailgate.settings import Settings

# A fresh gateway's sshd refuses connections while it boots, and a new tailnet path takes a
# while to come up. pulumi-command v1.2.1 (provider/pkg/provider/remote/connection.go,
# dialWithRetry) gives up after the (DIAL_ERROR_LIMIT + 1)th failed dial and sleeps between
# dials as pulumi/pulumi's retry.Until does (sdk/go/common/util/retry/until.go): 100 ms,
# x1.5 each time, at most 5 s. A refused dial fails at once, so the sleeps alone are the
# window: 20 give 61 s. An unreachable host (every dial timing out) fails after
# 21 x 15 s + 61 s, about 6.3 minutes. tests/test_components_ssh.py models both.
DIAL_TIMEOUT_SECONDS = 15
DIAL_ERROR_LIMIT = 20
STEP_TIMEOUT = "20m"


def gateway_connection(settings: Settings, address: pulumi.Input[str],
                       private_key: pulumi.Input[str] | None,
                       host_key: pulumi.Input[str]) -> remote.ConnectionArgs:
    return remote.ConnectionArgs(
        host=address, user=settings.gateway.ssh_user, private_key=private_key, host_key=host_key,
        per_dial_timeout=DIAL_TIMEOUT_SECONDS, dial_error_limit=DIAL_ERROR_LIMIT,
    )


def home_connection(settings: Settings, private_key: pulumi.Input[str] | None,
                    gateway_address: pulumi.Input[str] | None = None,
                    gateway_private_key: pulumi.Input[str] | None = None,
                    gateway_host_key: pulumi.Input[str] | None = None) -> remote.ConnectionArgs:
    home = settings.home
    proxy = None
    if home.via_gateway:
        proxy = remote.ProxyConnectionArgs(
            host=gateway_address, user=settings.gateway.ssh_user, private_key=gateway_private_key,
            host_key=gateway_host_key,
            per_dial_timeout=DIAL_TIMEOUT_SECONDS, dial_error_limit=DIAL_ERROR_LIMIT,
        )
    return remote.ConnectionArgs(
        host=home.ssh_host, port=home.ssh_port, user=home.ssh_user, private_key=private_key,
        host_key=home.ssh_host_key, proxy=proxy,
        per_dial_timeout=DIAL_TIMEOUT_SECONDS, dial_error_limit=DIAL_ERROR_LIMIT,
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
