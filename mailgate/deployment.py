"""Values that exist only once the cloud side is deployed.

`pulumi up` fills them from resource outputs; `python -m mailgate render` takes them
from command-line options whose defaults are these placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass

# The first address Tailscale tends to hand out; only a stand-in for review renders.
PLACEHOLDER_GATEWAY_TAILNET_IP = "100.64.0.1"
PUBLIC_IPV4_PLACEHOLDER = "<gateway public IPv4>"
PUBLIC_IPV6_PLACEHOLDER = "<gateway public IPv6>"


@dataclass(frozen=True)
class Deployment:
    gateway_tailnet_ip: str = PLACEHOLDER_GATEWAY_TAILNET_IP
    public_ipv4: str = PUBLIC_IPV4_PLACEHOLDER
    public_ipv6: str | None = None
