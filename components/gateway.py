"""The gateway VM and its reserved public IP.

Resources: one `oci.core.Instance` (Ubuntu LTS, cloud-init bootstrap as user data) and
one `oci.core.PublicIp` with lifetime RESERVED bound to the instance's primary private IP.
Looked up (invokes): the image unless pinned, the availability domain unless set, the
primary VNIC and its private IP, and the VNIC's IPv6 address when IPv6 is on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import pulumi
import pulumi_oci as oci

from mailgate.renderers.cloud_init import render_cloud_init
from mailgate.settings import Settings

UBUNTU = "Canonical Ubuntu"
# LTS releases are the even years' April releases (22.04, 24.04, ...).
LTS_VERSION = re.compile(r"^(?P<year>\d+)\.04$")


def newest_ubuntu_lts(images: Sequence[Any]) -> str:
    """OCID of the newest full (not Minimal) Ubuntu LTS image among `images`."""
    candidates = [
        image for image in images
        if image.operating_system == UBUNTU
        and (match := LTS_VERSION.match(image.operating_system_version or ""))
        and int(match["year"]) % 2 == 0
        and "minimal" not in (image.display_name or "").lower()
    ]
    if not candidates:
        raise ValueError(
            "no Canonical Ubuntu LTS image found for this shape; pin one with "
            "mailgate:gateway.imageId (oci compute image list --operating-system "
            "'Canonical Ubuntu' --shape <shape>)"
        )
    newest = max(candidates, key=lambda image: (
        int(LTS_VERSION.match(image.operating_system_version)["year"]), image.time_created))
    return newest.id


def primary_private_ip_id(private_ips: Sequence[Any]) -> str:
    return next(ip.id for ip in private_ips if ip.is_primary)


def user_data(settings: Settings, auth_key: str) -> str:
    return base64.b64encode(render_cloud_init(settings, auth_key).encode()).decode()


def rebuild_trigger(settings: Settings) -> str:
    """A digest of the settings whose change gives the gateway a new VM.

    A new VM needs a new auth key: the old one is single-use and expires within hours.
    The Tailnet component replaces its key whenever this digest changes. Shape sizes are
    left out: OCI changes them in place. The image is left out because pinning the
    running image must not rebuild anything; moving to another image is a rebuild the
    README tells to run with `--replace` on the key.
    """
    gateway = settings.gateway
    decisive = {
        "cloud_init": render_cloud_init(settings, "tskey-placeholder"),
        "ssh_public_keys": gateway.ssh_public_keys,
        "availability_domain": gateway.availability_domain,
        "ipv6": gateway.ipv6,
        "subnet": [gateway.vcn_cidr, gateway.subnet_cidr],
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class GatewayHostArgs:
    settings: Settings
    subnet_id: pulumi.Input[str]
    auth_key: pulumi.Output[str]
    """The tailnet auth key cloud-init joins with; a secret Output."""


class GatewayHost(pulumi.ComponentResource):
    """The gateway VM, reachable at a reserved public IP that outlives the VM."""

    instance: oci.core.Instance
    image_id: pulumi.Output[str]
    private_ip_id: pulumi.Output[str]
    public_ipv4: pulumi.Output[str]
    public_ipv6: pulumi.Output[str | None]

    def __init__(self, name: str, args: GatewayHostArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mailgate:oci:GatewayHost", name, None, opts)
        gateway = args.settings.gateway
        invoke = pulumi.InvokeOutputOptions(parent=self)

        # A lookup answers with the newest image, and Oracle publishes one about monthly;
        # fed into source_id, each would swap the boot volume, i.e. rebuild the gateway.
        # So a looked-up image is ignored after the first boot (ignore_changes below), and
        # pinning gateway.imageId (the exported gateway_image_id) is how to move on.
        image_id = pulumi.Output.from_input(gateway.image_id) if gateway.image_id else (
            oci.core.get_images_output(
                compartment_id=gateway.compartment_id,
                operating_system=UBUNTU,
                shape=gateway.shape,
                state="AVAILABLE",
                sort_by="TIMECREATED",
                sort_order="DESC",
                opts=invoke,
            ).apply(lambda result: newest_ubuntu_lts(result.images))
        )
        # Availability domain names are the same for every compartment of a tenancy.
        availability_domain = pulumi.Output.from_input(gateway.availability_domain) if (
            gateway.availability_domain) else oci.identity.get_availability_domains_output(
                compartment_id=gateway.compartment_id, opts=invoke,
            ).apply(lambda result: result.availability_domains[0].name)

        flexible = gateway.shape.endswith(".Flex")
        self.instance = oci.core.Instance(
            f"{name}-instance",
            compartment_id=gateway.compartment_id,
            availability_domain=availability_domain,
            display_name=args.settings.tailscale.gateway_hostname,
            shape=gateway.shape,
            # Fixed shapes such as E2.1.Micro reject a shape_config.
            shape_config=oci.core.InstanceShapeConfigArgs(
                ocpus=gateway.effective_ocpus, memory_in_gbs=gateway.effective_memory_in_gbs,
            ) if flexible else None,
            source_details=oci.core.InstanceSourceDetailsArgs(
                source_type="image",
                source_id=image_id,
                boot_volume_size_in_gbs=str(gateway.boot_volume_size_in_gbs),
            ),
            create_vnic_details=oci.core.InstanceCreateVnicDetailsArgs(
                subnet_id=args.subnet_id,
                # No ephemeral address: the reserved IP below is the only public one.
                assign_public_ip="false",
                assign_ipv6ip=True if gateway.ipv6 else None,
            ),
            metadata={
                "ssh_authorized_keys": "\n".join(gateway.ssh_public_keys),
                # Secret: the rendered text carries the auth key.
                "user_data": pulumi.Output.secret(
                    args.auth_key.apply(lambda key: user_data(args.settings, key))),
            },
            opts=pulumi.ResourceOptions(
                parent=self,
                # Delete first: a create-before-delete replacement needs twice the
                # Always Free quota and fails on a full tenancy.
                delete_before_replace=True,
                # A looked-up image is used for the first boot only; a newer one must not
                # rebuild the MX host. A pinned image is followed.
                ignore_changes=None if gateway.image_id else ["sourceDetails.sourceId"],
            ),
        )

        vnic_id = oci.core.get_vnic_attachments_output(
            compartment_id=gateway.compartment_id, instance_id=self.instance.id, opts=invoke,
        ).apply(lambda result: result.vnic_attachments[0].vnic_id)
        self.private_ip_id = oci.core.get_private_ips_output(
            vnic_id=vnic_id, opts=invoke,
        ).apply(lambda result: primary_private_ip_id(result.private_ips))
        public_ip = oci.core.PublicIp(
            f"{name}-public-ip",
            compartment_id=gateway.compartment_id,
            lifetime="RESERVED",
            private_ip_id=self.private_ip_id,
            display_name=f"{name}-public-ip",
            # The MX address: rebuilding the VM moves it to the new private IP, and only
            # an explicit `pulumi state unprotect` lets it be released.
            opts=pulumi.ResourceOptions(parent=self, protect=True),
        )

        # What the VM runs, which after the first boot may differ from a new lookup.
        self.image_id = self.instance.source_details.source_id
        self.public_ipv4 = public_ip.ip_address
        self.public_ipv6 = oci.core.get_ipv6s_output(vnic_id=vnic_id, opts=invoke).apply(
            lambda result: result.ipv6s[0].ip_address
        ) if gateway.ipv6 else pulumi.Output.from_input(None)
        self.register_outputs({
            "image_id": self.image_id,
            "private_ip_id": self.private_ip_id,
            "public_ipv4": self.public_ipv4,
            "public_ipv6": self.public_ipv6,
        })
