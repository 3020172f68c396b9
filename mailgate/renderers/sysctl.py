"""The home host's kernel settings that let Docker publish the twin ports at boot.

Docker publishes a twin port on the home tailnet address, which exists only once
tailscaled has brought the tailnet up, and nothing orders dockerd after that
(`After=tailscaled.service` waits for the process, not the address). With non-local
binds allowed the bind succeeds before the address exists, and the port serves as soon
as it does.
"""

from __future__ import annotations

NONLOCAL_BIND_KEYS = ("net.ipv4.ip_nonlocal_bind", "net.ipv6.ip_nonlocal_bind")


def render_nonlocal_bind_sysctl(stack: str) -> str:
    """A sysctl.d file, read at every boot by systemd-sysctl (before docker.service)."""
    settings = "".join(f"{key} = 1\n" for key in NONLOCAL_BIND_KEYS)
    return (
        f"# Rendered by mailgate (stack {stack}): Docker binds the twin ports to the tailnet\n"
        "# address before tailscaled has assigned it. `pulumi destroy` removes this file and\n"
        "# puts back the values these keys had before mailgate.\n"
        f"{settings}"
    )
