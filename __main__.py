"""mailgate: a home Mailcow server on the internet through an OCI gateway.

Data flows one way: stack config -> settings -> renderers -> components -> hosts.
"""

import pulumi

from components.stack_config import load_stack_settings
from mailgate import catalogue
from mailgate.deployment import Deployment
from mailgate.renderers.dns import dns_records
from mailgate.renderers.tailscale_policy import render_policy_snippet

settings, secrets = load_stack_settings()

# Until the gateway exists (a later step), the DNS records carry placeholders.
deployment = Deployment()

pulumi.export("port_map", catalogue.port_map(settings.enabled_services))
pulumi.export("dns_records", [r.as_dict() for r in dns_records(settings, deployment)])
pulumi.export("tailscale_policy_snippet", render_policy_snippet(settings))
