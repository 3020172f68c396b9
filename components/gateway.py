"""The gateway VM and its reserved public IP.

Resources: one `oci.core.Instance` (Ubuntu LTS, cloud-init bootstrap as user data) and
one `oci.core.PublicIp` with lifetime RESERVED bound to the instance's primary private IP.
Looked up (invokes): the image unless pinned, the availability domains and the shapes
each offers (only the pinned one when set), the primary VNIC and its private IP, and the
VNIC's IPv6 address when IPv6 is on.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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


def launch_domain(shape: str, offered: Mapping[str, Sequence[str]],
                  pinned: str | None = None) -> str:
    """The availability domain to launch `shape` in: `pinned` when set, else the first of
    `offered` (domain name -> names of the shapes it offers, in the region's order) that
    offers the shape.
    """
    asked = ", ".join(offered) or "none"
    how_to_list = ("`oci compute shape list --compartment-id <mailgate:gateway.compartmentId> "
                   "--availability-domain <domain>` lists what a domain offers")
    if pinned:
        if shape in offered.get(pinned, ()):
            return pinned
        raise ValueError(
            f"mailgate:gateway.availabilityDomain: {pinned} does not offer the shape {shape} "
            f"(mailgate:gateway.shape) to this compartment (asked: {asked}). Leave "
            "mailgate:gateway.availabilityDomain empty to use the first domain that offers it, "
            f"or set mailgate:gateway.shape to a shape this domain offers; {how_to_list}."
        )
    for domain, shapes in offered.items():
        if shape in shapes:
            return domain
    raise ValueError(
        f"mailgate:gateway.shape: no availability domain of this region offers {shape} to "
        f"this compartment (asked: {asked}). Set mailgate:gateway.shape to a shape one of "
        f"them offers, or use a region that offers it; {how_to_list}. "
        "mailgate:gateway.availabilityDomain cannot help: it must name a domain that offers "
        "the shape."
    )


def primary_private_ip_id(private_ips: Sequence[Any]) -> str:
    return next(ip.id for ip in private_ips if ip.is_primary)


def user_data(settings: Settings, bootstrap_url: str) -> str:
    return base64.b64encode(render_cloud_init(settings, bootstrap_url).encode()).decode()


@dataclass(frozen=True)
class GatewayHostArgs:
    settings: Settings
    subnet_id: pulumi.Input[str]
    bootstrap_url: pulumi.Output[str]
    """The bootstrap bucket's read-only URL the VM fetches its enrolment from; a secret."""


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
        # Always Free E2.1.Micro exists in one availability domain of a multi-domain region,
        # so each domain is asked what it offers; a pinned one is only checked.
        domains = pulumi.Output.from_input([gateway.availability_domain]) if (
            gateway.availability_domain) else oci.identity.get_availability_domains_output(
                compartment_id=gateway.compartment_id, opts=invoke,
            ).apply(lambda result: [domain.name for domain in result.availability_domains])

        def offered_shapes(names: list[str]) -> pulumi.Output[dict[str, list[str]]]:
            return pulumi.Output.all(*[
                oci.core.get_shapes_output(
                    compartment_id=gateway.compartment_id, availability_domain=domain, opts=invoke,
                ).apply(lambda result: [shape.name for shape in result.shapes])
                for domain in names
            ]).apply(lambda shape_lists: dict(zip(names, shape_lists)))

        def choose_domain(offered: dict[str, list[str]]) -> str:
            try:
                return launch_domain(gateway.shape, offered, gateway.availability_domain)
            except ValueError as error:
                # RunError ends the program with its message only, no traceback.
                raise pulumi.RunError(str(error)) from None

        availability_domain = domains.apply(offered_shapes).apply(choose_domain)

        flexible = gateway.shape.endswith(".Flex")
        self.instance = oci.core.Instance(
            f"{name}-instance",
            compartment_id=gateway.compartment_id,
            availability_domain=availability_domain,
            display_name=args.settings.names.display_name("gateway"),
            # Oracle stops (not deletes) an idle Always Free VM. A declared target state
            # is updatable, so `pulumi refresh && pulumi up` starts that same VM again
            # instead of leaving the MX host down.
            state="RUNNING",
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
                # Secret: the URL reads the bootstrap bucket. No key: each VM's own is
                # minted after the VM exists (see components/bootstrap.py).
                "user_data": pulumi.Output.secret(
                    args.bootstrap_url.apply(lambda url: user_data(args.settings, url))),
            },
            opts=pulumi.ResourceOptions(
                parent=self,
                # Delete first: a create-before-delete replacement needs twice the
                # Always Free quota and fails on a full tenancy.
                delete_before_replace=True,
                # Oracle swaps the boot volume of the SAME instance for a new image (the
                # provider updates source_id in place): a fresh disk would boot with the
                # old VM's spent key under the old machine name. A new image is a new VM.
                replace_on_changes=["sourceDetails.sourceId"],
                # Looked-up values are used for the first boot only: a newer image, or a
                # domain list that answers in another order, must not rebuild the MX host.
                # Pinned values are followed.
                ignore_changes=[
                    *([] if gateway.image_id else ["sourceDetails.sourceId"]),
                    *([] if gateway.availability_domain else ["availabilityDomain"]),
                ] or None,
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
            display_name=args.settings.names.display_name("public-ip"),
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
