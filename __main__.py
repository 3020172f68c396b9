"""mailgate: a home Mailcow server on the internet through an OCI gateway.

Data flows one way: stack config -> settings -> renderers -> components -> hosts.
"""

import pulumi

from components.bootstrap import BootstrapBucket, BootstrapBucketArgs, GatewayEnrolment, GatewayEnrolmentArgs
from components.gateway import GatewayHost, GatewayHostArgs
from components.gateway_config import GatewayConfig, GatewayConfigArgs
from components.home_config import HomeConfig, HomeConfigArgs
from components.network import GatewayNetwork, GatewayNetworkArgs
from components.stack_config import load_stack_settings
from components.tailnet import Tailnet, TailnetArgs
from mailgate import catalogue
from mailgate.deployment import Deployment
from mailgate.renderers.dns import dns_records

settings, secrets = load_stack_settings()

network = GatewayNetwork("gateway-net", GatewayNetworkArgs(
    settings.gateway, settings.enabled_services, settings.names))
tailnet = Tailnet("tailnet", TailnetArgs(settings))
bootstrap = BootstrapBucket("bootstrap", BootstrapBucketArgs(settings))
gateway = GatewayHost("gateway", GatewayHostArgs(settings, network.subnet_id, bootstrap.url))
# Minted after the VM, for that VM: a VM created at any time joins with a fresh key.
enrolment = GatewayEnrolment("gateway-enrolment", GatewayEnrolmentArgs(
    settings, bootstrap, gateway.instance.id, tailnet.acl))
GatewayConfig("gateway-config", GatewayConfigArgs(
    settings, enrolment.tailnet_ip, secrets.gateway_ssh_private_key, gateway.instance.id,
    enrolment.host_public_key, secrets.alerts_relay_password, secrets.alerts_webhook_url,
    secrets.banlist_id, gateway.public_ipv4, gateway.public_ipv6))
HomeConfig("home-config", HomeConfigArgs(
    settings, enrolment.tailnet_ip, secrets.relay_password, secrets.home_ssh_private_key,
    enrolment.tailnet_ip, secrets.gateway_ssh_private_key, enrolment.host_public_key,
    gateway.public_ipv4, secrets.alerts_webhook_url, secrets.acme_dns_credentials))

deployment = pulumi.Output.all(
    gateway_tailnet_ip=enrolment.tailnet_ip,
    public_ipv4=gateway.public_ipv4,
    public_ipv6=gateway.public_ipv6,
).apply(lambda values: Deployment(**values))

pulumi.export("public_ipv4", gateway.public_ipv4)
if settings.gateway.ipv6:
    pulumi.export("public_ipv6", gateway.public_ipv6)
pulumi.export("gateway_tailnet_ip", enrolment.tailnet_ip)
pulumi.export("gateway_machine_name", enrolment.machine_name)
pulumi.export("gateway_image_id", gateway.image_id)
pulumi.export("dns_records", deployment.apply(lambda d: [r.as_dict() for r in dns_records(settings, d)]))
pulumi.export("tailscale_policy_snippet", tailnet.policy_snippet)
pulumi.export("port_map", catalogue.port_map(settings.enabled_services))
