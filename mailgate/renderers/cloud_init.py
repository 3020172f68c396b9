"""The gateway's cloud-init user data: packages, the OCI iptables fix, joining the tailnet.

Only the bootstrap lives here. Everything that changes over time (nginx config, the
port firewall) is pushed over SSH, so editing the port list never replaces the VM.
"""

from __future__ import annotations

from mailgate.renderers import render_template
from mailgate.settings import Settings

# The chain that cloud-init hooks into INPUT and the gateway firewall file fills.
GATEWAY_INPUT_CHAIN = "MAILGATE-IN"
AUTH_KEY_PATH = "/run/mailgate/tailscale-auth-key"


def render_cloud_init(settings: Settings, auth_key: str) -> str:
    if not auth_key or any(c.isspace() for c in auth_key):
        raise ValueError("the Tailscale auth key must be one non-empty word")
    return render_template(
        "cloud-init.yaml.j2",
        auth_key=auth_key,
        auth_key_path=AUTH_KEY_PATH,
        chain=GATEWAY_INPUT_CHAIN,
        tag=settings.tailscale.gateway_tag,
        hostname=settings.tailscale.gateway_hostname,
    )
