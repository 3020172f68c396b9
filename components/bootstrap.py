"""How each gateway VM gets into the tailnet with a key minted for it.

A key in the user data would be minted before the VM and be expired or spent by the
time a VM is created later (a retry after "Out of host capacity", a new image, a VM
Oracle lost). So the user data carries no key, only where to fetch one:

- `BootstrapBucket` (before the VM): one private Object Storage bucket per stack and a
  read-only pre-authenticated request on it, whose URL goes into the VM's user data.
- `GatewayEnrolment` (after the VM): a single-use, pre-authorised, tagged tailnet key
  whose replacement trigger is the VM's OCID, so every new VM gets a new key minutes
  before its first boot needs it; the object named by that OCID with the key and the
  VM's own machine name; and the address the VM joined with, looked up by that name,
  which nothing else in the tailnet can have.

Anyone who can read the VM's user data (every process on the VM, through the metadata
service) can fetch the enrolment. It holds a key that the VM spends within minutes of
being created, that is tagged `tag:mailgw` (so it grants nothing the gateway itself does
not have), and that expires within the hour whatever happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_oci as oci
import pulumi_tailscale as tailscale
import pulumi_tls as tls

from components.tailnet import tailnet_ipv4
from mailgate.names import gateway_machine_name, vm_suffix
from mailgate.renderers.cloud_init import render_enrolment
from mailgate.settings import Settings

# A pre-authenticated request must expire. It sits in the user data, and changing the
# user data replaces the VM, so it expires far beyond any VM's life.
BOOTSTRAP_URL_EXPIRES = "2099-12-31T00:00:00Z"
# A first boot waits for egress, then installs nginx and Tailscale before it joins; the
# join script itself gives up after 30 minutes.
JOIN_WAIT = "1800s"


def key_description(settings: Settings, instance_id: str) -> str:
    stack = "".join(c for c in settings.names.stack if c.isalnum())[:20]
    return f"mailgate {stack} gateway {vm_suffix(instance_id)}".replace("  ", " ")


@dataclass(frozen=True)
class BootstrapBucketArgs:
    settings: Settings


class BootstrapBucket(pulumi.ComponentResource):
    """The stack's bucket of enrolments and the read-only URL the VMs fetch them from."""

    bucket: oci.objectstorage.Bucket
    namespace: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(self, name: str, args: BootstrapBucketArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mailgate:oci:BootstrapBucket", name, None, opts)
        settings = args.settings
        compartment = settings.gateway.compartment_id
        self.namespace = oci.objectstorage.get_namespace_output(
            compartment_id=compartment, opts=pulumi.InvokeOutputOptions(parent=self)).namespace
        self.bucket = oci.objectstorage.Bucket(
            f"{name}-bucket",
            compartment_id=compartment,
            namespace=self.namespace,
            name=settings.names.bootstrap_bucket,
            access_type="NoPublicAccess",
            opts=pulumi.ResourceOptions(parent=self),
        )
        request = oci.objectstorage.Preauthrequest(
            f"{name}-read",
            namespace=self.namespace,
            bucket=self.bucket.name,
            name=f"{settings.names.bootstrap_bucket}-read",
            # Any object by its exact name: a VM fetches the one named by its OCID. Listing
            # stays denied by default; do not set bucket_listing_action: a refresh reads it
            # back empty and the next up would replace the URL, and with it the VM.
            access_type="AnyObjectRead",
            time_expires=BOOTSTRAP_URL_EXPIRES,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["accessUri", "fullPath"]),
        )
        self.url = pulumi.Output.secret(request.full_path)
        self.register_outputs({})


@dataclass(frozen=True)
class GatewayEnrolmentArgs:
    settings: Settings
    bucket: BootstrapBucket
    instance_id: pulumi.Output[str]
    tailnet_policy: pulumi.Resource | None = None
    """The managed tailnet policy, when there is one: it owns the tag the key carries."""


class GatewayEnrolment(pulumi.ComponentResource):
    """One gateway VM's key, its enrolment object, and the tailnet address it joined with."""

    machine_name: pulumi.Output[str]
    tailnet_ip: pulumi.Output[str]
    host_public_key: pulumi.Output[str]
    """The VM's SSH host key ('ssh-ed25519 AAAA...'), pinned by every connection to it."""

    def __init__(self, name: str, args: GatewayEnrolmentArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mailgate:tailscale:GatewayEnrolment", name, None, opts)
        settings = args.settings
        key = tailscale.TailnetKey(
            f"{name}-key",
            reusable=False,
            ephemeral=False,
            preauthorized=True,
            tags=[settings.tailscale.gateway_tag],
            expiry=settings.tailscale.auth_key_expiry_seconds,
            # Names the VM too: the description cannot change in place, so a new VM gets a
            # new key even where the engine predates replacement_trigger. Letters, digits
            # and spaces only, at most 50 characters (the Tailscale API's limits).
            description=args.instance_id.apply(lambda instance: key_description(settings, instance)),
            # Spent at the first boot; kept in state until its VM is replaced.
            recreate_if_invalid="never",
            opts=pulumi.ResourceOptions(
                parent=self,
                # A new VM, and only a new VM, gets a new key.
                replacement_trigger=args.instance_id,
                depends_on=[args.tailnet_policy] if args.tailnet_policy else None,
            ),
        )
        # Made by the program, delivered with the enrolment and pinned by every connection:
        # the gateway is never trusted on first sight. A new VM gets a new one.
        host_key = tls.PrivateKey(
            f"{name}-host-key",
            algorithm="ED25519",
            opts=pulumi.ResourceOptions(parent=self, replacement_trigger=args.instance_id,
                                        additional_secret_outputs=["private_key_openssh"]),
        )
        self.host_public_key = host_key.public_key_openssh.apply(lambda key: key.strip())
        prefix = settings.gateway_machine_prefix
        self.machine_name = args.instance_id.apply(lambda instance: gateway_machine_name(prefix, instance))
        enrolment = oci.objectstorage.StorageObject(
            f"{name}-object",
            namespace=args.bucket.namespace,
            bucket=args.bucket.bucket.name,
            # The VM asks for its own OCID, which it reads from the metadata service.
            object=args.instance_id,
            content=pulumi.Output.secret(
                pulumi.Output.all(key.key, self.machine_name, host_key.private_key_openssh).apply(
                    lambda v: render_enrolment(*v))),
            content_type="text/plain",
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["content"]),
        )
        device = tailscale.get_device_output(
            hostname=self.machine_name,
            wait_for=JOIN_WAIT,
            opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[enrolment]),
        )
        self.tailnet_ip = device.addresses.apply(tailnet_ipv4)
        self.register_outputs({"machine_name": self.machine_name, "tailnet_ip": self.tailnet_ip,
                               "host_public_key": self.host_public_key})
