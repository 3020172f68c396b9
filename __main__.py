"""mailgate: a home Mailcow server on the internet through an OCI gateway.

Data flows one way: stack config -> settings -> renderers -> components -> hosts.
"""

import pulumi

from components.gateway import GatewayHost, GatewayHostArgs, rebuild_trigger
from components.gateway_config import GatewayConfig, GatewayConfigArgs
from components.home_config import HomeConfig, HomeConfigArgs
from components.network import GatewayNetwork, GatewayNetworkArgs
from components.stack_config import load_stack_settings
from components.tailnet import Tailnet, TailnetArgs, device_tailnet_ip
from mailgate import catalogue
from mailgate.deployment import Deployment
from mailgate.renderers.dns import dns_records

settings, secrets = load_stack_settings()

network = GatewayNetwork("gateway-net", GatewayNetworkArgs(settings.gateway, settings.enabled_services))
tailnet = Tailnet("tailnet", TailnetArgs(settings, new_key_when=rebuild_trigger(settings)))
gateway = GatewayHost("gateway", GatewayHostArgs(settings, network.subnet_id, tailnet.auth_key))
gateway_tailnet_ip = device_tailnet_ip(settings.tailscale.gateway_hostname, joined=gateway.instance)
GatewayConfig("gateway-config", GatewayConfigArgs(
    settings, gateway.public_ipv4, secrets.gateway_ssh_private_key, gateway.instance))
HomeConfig("home-config", HomeConfigArgs(
    settings, gateway_tailnet_ip, secrets.relay_password, secrets.home_ssh_private_key,
    gateway.public_ipv4, secrets.gateway_ssh_private_key))

deployment = pulumi.Output.all(
    gateway_tailnet_ip=gateway_tailnet_ip,
    public_ipv4=gateway.public_ipv4,
    public_ipv6=gateway.public_ipv6,
).apply(lambda values: Deployment(**values))

pulumi.export("public_ipv4", gateway.public_ipv4)
if settings.gateway.ipv6:
    pulumi.export("public_ipv6", gateway.public_ipv6)
pulumi.export("gateway_tailnet_ip", gateway_tailnet_ip)
pulumi.export("gateway_image_id", gateway.image_id)
pulumi.export("dns_records", deployment.apply(lambda d: [r.as_dict() for r in dns_records(settings, d)]))
pulumi.export("tailscale_policy_snippet", tailnet.policy_snippet)
pulumi.export("port_map", catalogue.port_map(settings.enabled_services))
