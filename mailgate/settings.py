"""The stack configuration a user writes, as strict pydantic models.

`load_settings(raw)` validates every ``mailgate:*`` key at once and raises ConfigError
listing every problem by the key path the user types (``mailgate:gateway.adminCidrs[1]``).
Secrets are not part of these models: they are read separately and travel as Outputs.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

from mailgate import catalogue
from mailgate.config_report import ConfigError, problems_from_validation_error
from mailgate.names import GATEWAY_NAME_MAX, StackNames, valid_stack_name

NAMESPACE = "mailgate"

# Tailscale hands out node addresses from these ranges only.
TAILNET_RANGES = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
)
RELAY_PORTS = (25, 465, 587, 2525)
DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
TAG = re.compile(r"^tag:[a-z0-9][a-z0-9-]*$", re.IGNORECASE)
TAILNET_LOGIN = re.compile(r"^[^@\s]+@[^@\s]+$")
OCID = re.compile(r"^ocid1\.(?P<kind>[a-z]+)\.oc[0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
AVAILABILITY_DOMAIN = re.compile(r"^[A-Za-z0-9]+:[A-Z0-9-]+-AD-[0-9]$")
UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
SSH_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)


@dataclass(frozen=True)
class ShapeLimits:
    """What OCI allows for one shape (and what the Always Free tier allows on top)."""

    ocpus: tuple[float, float]
    memory_per_ocpu: tuple[float, float]
    max_memory: float
    default_ocpus: float
    default_memory: float
    always_free: bool
    free_ocpus: float = 0
    free_memory: float = 0


SHAPES: dict[str, ShapeLimits] = {
    "VM.Standard.A1.Flex": ShapeLimits((1, 80), (1, 64), 512, 1, 6, True, 4, 24),
    "VM.Standard.E2.1.Micro": ShapeLimits((1, 1), (1, 1), 1, 1, 1, True, 1, 1),
    "VM.Standard.E4.Flex": ShapeLimits((1, 64), (1, 64), 1024, 1, 8, False),
    "VM.Standard.E5.Flex": ShapeLimits((1, 94), (1, 64), 1049, 1, 8, False),
}
ALWAYS_FREE_BOOT_VOLUME_GB = 200


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=False,
        str_strip_whitespace=True,
    )


def _network(value: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR network; expected {what}") from None
        raise ValueError(
            f"{value!r} has host bits set; expected a network address such as {loose}"
        ) from None


def _hostname(value: str) -> str:
    name = value.rstrip(".").lower()
    labels = name.split(".")
    if len(labels) < 2 or not all(DNS_LABEL.match(label) for label in labels):
        raise ValueError(
            f"{value!r} is not a fully qualified DNS name; expected something like example.com"
        )
    return name


def in_tailnet(value: str) -> bool:
    """Whether `value` is an address in Tailscale's ranges (a name is not)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(address in network for network in TAILNET_RANGES)


def _tailnet_ip(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address; expected a tailnet address such as 100.64.0.2") from None
    if not any(address in network for network in TAILNET_RANGES):
        raise ValueError(
            f"{value} is outside Tailscale's address ranges; expected an address in "
            "100.64.0.0/10 or fd7a:115c:a1e0::/48 (see `tailscale ip`)"
        )
    return str(address)


def _ssh_public_key(value: str) -> str:
    if "PRIVATE KEY" in value:
        raise ValueError(
            "this is a private key; put the public key (the .pub file) here and the private "
            "key in a secret"
        )
    parts = value.split()
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise ValueError(
            f"not an OpenSSH public key; expected '<type> <base64> [comment]' with type one of "
            f"{', '.join(SSH_KEY_TYPES[:3])}, ..."
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key's base64 part does not decode") from None
    name_length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4:4 + name_length].decode("ascii", "replace") != parts[0]:
        raise ValueError(f"the key's data is not a {parts[0]} key (truncated or mixed up?)")
    return " ".join(parts)


def _admin_cidr(cidr: str) -> str:
    network = _network(cidr, "a network such as 198.51.100.0/24 or 2001:db8::/48")
    if network.prefixlen == 0:
        raise ValueError(
            f"{cidr} would open SSH to the whole internet; expected the networks you "
            "administer from (e.g. your home's /32)"
        )
    if network.prefixlen < (8 if network.version == 4 else 32):
        raise ValueError(
            f"{cidr} is too wide for an admin network; expected /8 or narrower "
            "(IPv6: /32 or narrower)"
        )
    return str(network)


def _within(value: float, low: float, high: float, unit: str, limit: str, always_free: bool) -> None:
    if not low <= value <= high:
        raise ValueError(
            f"{value:g} {unit} is outside {limit}; expected {low:g} to {high:g} {unit}"
            + (" (Always Free)" if always_free else "")
        )


def _distinct(values: list[str]) -> None:
    for index, value in enumerate(values):
        if value in values[:index]:
            raise ValueError(f"{value} is listed twice (items {values.index(value)} and {index})")


def _service_name(name: str) -> str:
    if name == catalogue.HTTP_SERVICE.name:
        raise ValueError(f"{name!r} (port 80) is opened by mailgate:acme.method http-01 (the "
                         "default) or mailgate:web.enabled; remove it from this list")
    if name in (s.name for s in catalogue.WEB_SERVICES):
        raise ValueError(f"{name!r} is web forwarding; set mailgate:web.enabled instead")
    if name not in catalogue.MAIL_SERVICE_NAMES:
        raise ValueError(
            f"unknown service {name!r}; expected one of " + ", ".join(catalogue.MAIL_SERVICE_NAMES)
        )
    return name


SshPublicKey = Annotated[str, AfterValidator(_ssh_public_key)]
AdminCidr = Annotated[str, AfterValidator(_admin_cidr)]
ServiceName = Annotated[str, AfterValidator(_service_name)]


class GatewaySettings(Strict):
    compartment_id: str = Field(
        description="OCID of the OCI compartment (or the tenancy, for the root compartment) "
        "that holds every gateway resource."
    )
    always_free: bool = Field(
        True,
        description="Refuse a shape, size or boot volume beyond Oracle's Always Free limits.",
    )
    shape: str = Field(
        "VM.Standard.A1.Flex",
        description=f"Compute shape of the gateway VM, one of {', '.join(SHAPES)}. "
        "Use VM.Standard.E2.1.Micro when A1 reports 'Out of host capacity'.",
    )
    ocpus: float | None = Field(
        None, description="OCPUs of a flexible shape; empty means the shape's default (1)."
    )
    memory_in_gbs: float | None = Field(
        None,
        description="Memory in GB of a flexible shape; empty means the shape's default "
        "(6 for A1.Flex).",
    )
    boot_volume_size_in_gbs: int = Field(
        50, description="Boot volume size in GB (OCI minimum 50)."
    )
    image_id: str | None = Field(
        None,
        description="Pinned OCID of the Ubuntu LTS image; empty means look up the newest "
        "Canonical Ubuntu image for the shape once.",
    )
    availability_domain: str | None = Field(
        None,
        description="Availability domain, e.g. 'Uocm:EU-FRANKFURT-1-AD-1'; empty means the "
        "first one that offers the shape.",
    )
    ssh_public_keys: list[SshPublicKey] = Field(
        min_length=1,
        description="OpenSSH public keys allowed to log in as the gateway's admin user.",
    )
    ssh_user: str = Field(
        "ubuntu",
        description="Admin user of the gateway image; the steps run as root through its "
        "passwordless sudo (as Oracle's Ubuntu images set it up).",
    )
    admin_cidrs: list[AdminCidr] = Field(
        default_factory=list,
        description="Break-glass only: networks allowed to reach the gateway's SSH port on "
        "its public IP. Empty (the default) closes public SSH; `pulumi up` always reaches "
        "the gateway over the tailnet. Never 0.0.0.0/0 or ::/0.",
    )
    vcn_cidr: str = Field("10.0.0.0/16", description="IPv4 range of the gateway's VCN (/16 to /30).")
    subnet_cidr: str = Field(
        "10.0.0.0/24", description="IPv4 range of the gateway's subnet; inside vcnCidr."
    )
    ipv6: bool = Field(
        False, description="Give the VCN, the subnet and the gateway IPv6 and listen on it."
    )

    @field_validator("compartment_id")
    @classmethod
    def _compartment(cls, value: str) -> str:
        match = OCID.match(value)
        if not match or match["kind"] not in ("compartment", "tenancy"):
            raise ValueError(
                f"{value!r} is not a compartment OCID; expected 'ocid1.compartment.oc1..<id>' "
                "(or 'ocid1.tenancy.oc1..<id>' for the root compartment)"
            )
        return value

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: str, info: ValidationInfo) -> str:
        if value not in SHAPES:
            raise ValueError(f"unknown shape {value!r}; expected one of {', '.join(SHAPES)}")
        if info.data.get("always_free") and not SHAPES[value].always_free:
            free = ", ".join(name for name, limits in SHAPES.items() if limits.always_free)
            raise ValueError(
                f"{value} is not an Always Free shape; expected {free}, or set "
                "gateway.alwaysFree to false to accept charges"
            )
        return value

    @field_validator("ocpus")
    @classmethod
    def _ocpus(cls, value: float | None, info: ValidationInfo) -> float | None:
        limits = SHAPES.get(info.data.get("shape", ""))
        if value is None or limits is None:
            return value
        low, high = limits.ocpus
        if info.data.get("always_free") and limits.always_free:
            high = min(high, limits.free_ocpus)
        _within(value, low, high, "OCPUs", f"what {info.data['shape']} allows here",
                info.data.get("always_free", False))
        return value

    @field_validator("memory_in_gbs")
    @classmethod
    def _memory(cls, value: float | None, info: ValidationInfo) -> float | None:
        limits = SHAPES.get(info.data.get("shape", ""))
        if value is None or limits is None or "ocpus" not in info.data:
            return value
        ocpus = info.data["ocpus"] or limits.default_ocpus
        low = limits.memory_per_ocpu[0] * ocpus
        high = min(limits.memory_per_ocpu[1] * ocpus, limits.max_memory)
        if info.data.get("always_free") and limits.always_free:
            high = min(high, limits.free_memory)
        _within(value, low, high, "GB", f"what {info.data['shape']} allows with {ocpus:g} OCPU(s)",
                info.data.get("always_free", False))
        return value

    @field_validator("boot_volume_size_in_gbs")
    @classmethod
    def _boot_volume(cls, value: int, info: ValidationInfo) -> int:
        free = info.data.get("always_free", False)
        _within(value, 50, ALWAYS_FREE_BOOT_VOLUME_GB if free else 32768, "GB",
                "what OCI allows", free)
        return value

    @field_validator("image_id")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        match = OCID.match(value) if value else None
        if value is not None and (not match or match["kind"] != "image"):
            raise ValueError(f"{value!r} is not an image OCID; expected 'ocid1.image.oc1.<region>.<id>'")
        return value

    @field_validator("availability_domain")
    @classmethod
    def _availability_domain(cls, value: str | None) -> str | None:
        if value is not None and not AVAILABILITY_DOMAIN.match(value):
            raise ValueError(
                f"{value!r} is not an availability domain name; expected e.g. "
                "'Uocm:EU-FRANKFURT-1-AD-1' (oci iam availability-domain list)"
            )
        return value

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not UNIX_USER.match(value):
            raise ValueError(f"{value!r} is not a valid user name")
        return value

    @field_validator("admin_cidrs")
    @classmethod
    def _admin_cidrs_distinct(cls, value: list[str]) -> list[str]:
        _distinct(value)
        return value

    @field_validator("vcn_cidr")
    @classmethod
    def _vcn(cls, value: str) -> str:
        network = _network(value, "an IPv4 network such as 10.0.0.0/16")
        if network.version != 4 or not 16 <= network.prefixlen <= 30:
            raise ValueError(f"{value} is not an IPv4 network of /16 to /30, as OCI requires")
        if network.overlaps(TAILNET_RANGES[0]):
            raise ValueError(f"{value} overlaps Tailscale's 100.64.0.0/10; expected e.g. 10.0.0.0/16")
        return str(network)

    @field_validator("subnet_cidr")
    @classmethod
    def _subnet(cls, value: str, info: ValidationInfo) -> str:
        network = _network(value, "an IPv4 network such as 10.0.0.0/24")
        vcn = info.data.get("vcn_cidr")
        if network.version != 4:
            raise ValueError(f"{value} is not an IPv4 network")
        if vcn and not network.subnet_of(ipaddress.ip_network(vcn)):
            raise ValueError(f"{value} is not inside the VCN's {vcn}; expected a part of it")
        return str(network)

    @property
    def limits(self) -> ShapeLimits:
        return SHAPES[self.shape]

    @property
    def effective_ocpus(self) -> float:
        return self.ocpus if self.ocpus is not None else self.limits.default_ocpus

    @property
    def effective_memory_in_gbs(self) -> float:
        if self.memory_in_gbs is not None:
            return self.memory_in_gbs
        return min(self.limits.default_memory * self.effective_ocpus, self.limits.max_memory)


class HomeSettings(Strict):
    ssh_host: str = Field(
        description="Address the Pulumi runner uses to SSH into the Mini PC (LAN name or IP, "
        "tailnet name or IP; with viaGateway its tailnet IP)."
    )
    ssh_user: str = Field(
        "root",
        description="SSH user on the Mini PC: root, or a user allowed passwordless sudo (the "
        "step writes /etc and Mailcow's files, loads iptables rules and runs docker).",
    )
    ssh_port: int = Field(22, ge=1, le=65535, description="SSH port of the Mini PC.")
    ssh_host_key: str = Field(
        description="The Mini PC's SSH host public key ('ssh-ed25519 AAAA...'), as "
        "`ssh-keyscan -t ed25519 <sshHost>` prints it after the host name; a server with any "
        "other key is refused (the sessions carry Mailcow's and the relay's passwords).",
    )
    tailnet_ip: str = Field(
        description="The Mini PC's Tailscale IPv4 address (`tailscale ip -4`); Mailcow's "
        "PROXY listeners are published on it only."
    )
    mailcow_dir: str = Field(
        "/opt/mailcow-dockerized",
        description="Absolute path of the Mailcow checkout on the Mini PC.",
    )
    via_gateway: bool = Field(
        False,
        description="Reach the Mini PC's SSH through the gateway (jump host); sshHost is then "
        "its tailnet IP, and the tailnet policy lets the gateway reach that SSH port. "
        "Destroy then needs the gateway: destroy before deleting the VM by hand.",
    )

    @field_validator("ssh_host")
    @classmethod
    def _host(cls, value: str) -> str:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            labels = value.rstrip(".").lower().split(".")
            if not all(DNS_LABEL.match(label) for label in labels):
                raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
            return value
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"{value} cannot be connected to; expected the Mini PC's address")
        return value

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not UNIX_USER.match(value):
            raise ValueError(f"{value!r} is not a valid user name")
        return value

    @field_validator("via_gateway")
    @classmethod
    def _jump_target(cls, value: bool, info: ValidationInfo) -> bool:
        # The jump's last leg is dialled from the gateway, which runs without tailnet DNS
        # (`tailscale up --accept-dns=false`): a name would not resolve there.
        host = info.data.get("ssh_host")
        if value and host is not None and not in_tailnet(host):
            raise ValueError(
                f"true needs mailgate:home.sshHost to be the Mini PC's tailnet IP, not {host!r} "
                "(the gateway dials it and resolves no tailnet names); expected e.g. "
                "`pulumi config set mailgate:home.sshHost $(tailscale ip -4)` run on the Mini PC")
        return value

    @field_validator("ssh_host_key")
    @classmethod
    def _host_key(cls, value: str) -> str:
        return _ssh_public_key(value)

    @field_validator("tailnet_ip")
    @classmethod
    def _tailnet(cls, value: str) -> str:
        address = _tailnet_ip(value)
        if ":" in address:
            raise ValueError(
                f"{value} is IPv6; expected the IPv4 tailnet address (`tailscale ip -4`), which "
                "nginx and Docker publish on"
            )
        return address

    @field_validator("mailcow_dir")
    @classmethod
    def _mailcow_dir(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute():
            raise ValueError(f"{value!r} is relative; expected an absolute path such as /opt/mailcow-dockerized")
        if ".." in path.parts or path == PurePosixPath("/"):
            raise ValueError(f"{value!r} is not a Mailcow directory; expected e.g. /opt/mailcow-dockerized")
        if re.search(r"[^A-Za-z0-9._/+-]", value):
            raise ValueError(f"{value!r} has characters a shell would interpret; expected letters, digits, . _ - + /")
        return str(path)


class RelaySettings(Strict):
    host: str = Field(
        "smtp-relay.brevo.com", description="Smart relay host that sends all outbound mail."
    )
    port: int = Field(
        587, description="Relay port: 587 or 2525 (STARTTLS), 465 (implicit TLS) or 25."
    )
    username: str = Field(
        min_length=1,
        description="Relay login (Brevo: the SMTP login shown under SMTP & API). The password "
        "is the secret mailgate:relayPassword.",
    )
    spf_include: str = Field(
        "spf.brevo.com",
        description="Domain the SPF record includes so the relay may send for you.",
    )

    @field_validator("host", "spf_include")
    @classmethod
    def _host(cls, value: str) -> str:
        return _hostname(value)

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if value not in RELAY_PORTS:
            raise ValueError(
                f"{value} is not a relay submission port; expected one of "
                f"{', '.join(map(str, RELAY_PORTS))}"
            )
        return value

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if re.search(r"[\s:]", value):
            raise ValueError("must not contain spaces or ':' (Postfix's password map splits on them)")
        return value


class TailscaleSettings(Strict):
    gateway_tag: str = Field(
        "tag:mailgw",
        description="ACL tag of the gateway node; tagged nodes never hit key expiry.",
    )
    home_tag: str | None = Field(
        None,
        description="ACL tag of the Mini PC, if it is tagged; the policy snippet then names it "
        "instead of its address, and mailgate checks that the device carries it and leaves its "
        "key expiry alone (tagged devices never expire).",
    )
    gateway_hostname: str | None = Field(
        None,
        description="Prefix of the gateway's tailnet machine name; each gateway VM adds a "
        "suffix of its own, so a rebuilt VM or another stack never answers to its name. "
        "Empty means mailgate-<stack>-gw.",
    )
    manage_acl: bool = Field(
        False,
        description="Let Pulumi own the WHOLE tailnet policy file (tailscale.Acl); needs "
        "homeTag, one stack per tailnet. Off: mailgate only outputs a snippet to paste.",
    )
    policy_test_user: str | None = Field(
        None,
        description="A tailnet user's login (e.g. you@example.com): the policy's tests then "
        "also check that this user's devices cannot open the twin ports.",
    )
    auth_key_expiry_seconds: int = Field(
        3600,
        ge=300,
        le=7_776_000,
        description="Lifetime of the gateway's single-use auth key (300 s to 90 days).",
    )

    @field_validator("gateway_tag", "home_tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        if value is not None and not TAG.match(value):
            raise ValueError(f"{value!r} is not a Tailscale tag; expected 'tag:' and a name, e.g. tag:mailgw")
        return value

    @field_validator("home_tag")
    @classmethod
    def _not_gateway_tag(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("gateway_tag"):
            raise ValueError(f"{value} is also the gateway's tag; expected a tag of its own")
        return value

    @field_validator("policy_test_user")
    @classmethod
    def _login(cls, value: str | None) -> str | None:
        if value is not None and not TAILNET_LOGIN.match(value):
            raise ValueError(f"{value!r} is not a tailnet login; expected the user's login as the "
                             "admin console shows it, e.g. you@example.com or you@github")
        return value

    @field_validator("manage_acl")
    @classmethod
    def _managed_policy_needs_a_tagged_home(cls, value: bool, info: ValidationInfo) -> bool:
        # The managed policy keeps each user's own devices reaching each other
        # (autogroup:self); an untagged Mini PC would be among them, twin ports included.
        if value and not info.data.get("home_tag"):
            raise ValueError(
                "true needs mailgate:tailscale.homeTag: the managed policy lets each user's own "
                "devices reach each other, and must leave the Mini PC out of that; tag it (e.g. "
                "`sudo tailscale up --advertise-tags=tag:mailhome` on the Mini PC) and set "
                "`pulumi config set --path 'mailgate:tailscale.homeTag' tag:mailhome`")
        return value

    @field_validator("gateway_hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not DNS_LABEL.match(value) or len(value) > GATEWAY_NAME_MAX:
            raise ValueError(f"{value!r} is not a machine name prefix; expected lowercase "
                             f"letters, digits and '-', at most {GATEWAY_NAME_MAX} characters")
        return value


class WebSettings(Strict):
    enabled: bool = Field(
        False,
        description="Forward 443 to Mailcow's web server (webmail, admin UI, autodiscover) as "
        "plain TCP; port 80 then redirects to it.",
    )


ACME_METHODS = ("http-01", "dns-01", "none")
# An acme.sh DNS API script's name (github.com/acmesh-official/acme.sh/wiki/dnsapi).
DNS_API = re.compile(r"^dns_[a-z0-9_]+$")
# A name in a dns-01.conf line, which Mailcow's loader exports as an environment variable.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names that would change how the acme container itself runs, not a DNS API's credential.
ENV_NAME_REFUSED = re.compile(r"^(PATH|HOME|SHELL|IFS|ENV|BASH_ENV|LD_.*|ACME_.*|LE_.*|DIRECTORY_URL|"
                              r"SKIP_.*|ADDITIONAL_SAN|AUTODISCOVER_SAN|MAILCOW_.*|DB.*|REDIS.*)$")
ACME_CREDENTIALS = "acmeDnsCredentials"


def _san(value: str) -> str:
    if value.startswith("*."):
        return "*." + _hostname(value[2:])
    if value.endswith(".*") and DNS_LABEL.match(value[:-2].lower()):
        return value.lower()  # Mailcow's form: this label under every mail domain it serves
    return _hostname(value)


class AcmeSettings(Strict):
    method: Literal["http-01", "dns-01", "none"] = Field(
        "http-01",
        description="How Mailcow proves it owns its names to Let's Encrypt: http-01 (the gateway "
        "answers port 80 and passes only /.well-known/acme-challenge/ home), dns-01 (Mailcow's "
        "acme container writes TXT records through your DNS provider's API; no port 80), or none "
        "(mailgate leaves Mailcow's certificate settings alone and opens no port 80).",
    )
    dns_provider: str | None = Field(
        None,
        validate_default=True,
        description="dns-01: the acme.sh DNS API of your DNS provider (ACME_DNS_PROVIDER), e.g. "
        "dns_cf for Cloudflare; its credentials go in the secret mailgate:acmeDnsCredentials.",
    )
    account_email: str | None = Field(
        None,
        validate_default=True,
        description="dns-01: the ACME account's contact address (ACME_ACCOUNT_EMAIL); required "
        "with dns-01 (Mailcow's default, me@example.com, is refused by Let's Encrypt).",
    )
    additional_san: list[Annotated[str, AfterValidator(_san)]] | None = Field(
        None,
        description="More names for Mailcow's certificate (ADDITIONAL_SAN): names, 'label.*' (that "
        "label under every mail domain) or, with dns-01, '*.' wildcards; each one's A record must "
        "point at the gateway. Unset leaves Mailcow's value; [] clears it.",
    )
    autodiscover_san: bool | None = Field(
        None,
        description="Add autodiscover.<domain> and autoconfig.<domain> to the certificate "
        "(AUTODISCOVER_SAN); empty leaves Mailcow's value (on by default). Unless false, their "
        "records are in publish/dns-records.txt.",
    )

    @field_validator("dns_provider")
    @classmethod
    def _provider(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("method") == "dns-01":
            raise ValueError(
                "missing; mailgate:acme.method dns-01 needs the acme.sh DNS API of your DNS provider, "
                "e.g. `pulumi config set --path 'mailgate:acme.dnsProvider' dns_cf`")
        if value is not None and not DNS_API.match(value):
            raise ValueError(f"{value!r} is not an acme.sh DNS API name; expected e.g. dns_cf, "
                             "dns_hetznercloud (github.com/acmesh-official/acme.sh/wiki/dnsapi)")
        return value

    @field_validator("account_email")
    @classmethod
    def _account(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("method") == "dns-01":
            raise ValueError(
                "missing; with dns-01 Mailcow registers an ACME account with it, and Let's Encrypt "
                "refuses Mailcow's default (me@example.com); expected e.g. "
                "`pulumi config set --path 'mailgate:acme.accountEmail' you@example.net`")
        return None if value is None else _email(value)

    @field_validator("additional_san")
    @classmethod
    def _sans(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return value
        _distinct(value)
        wildcards = [name for name in value if name.startswith("*.")]
        if wildcards and info.data.get("method") != "dns-01":
            raise ValueError(f"{wildcards[0]} is a wildcard, which only dns-01 can prove; expected "
                             "plain names, or mailgate:acme.method dns-01")
        return value


def acme_credentials_problems(value: object) -> list[str]:
    """What is wrong with the secret mailgate:acmeDnsCredentials, an object of variable name
    -> value (one per line of Mailcow's dns-01.conf). Never quotes a value."""
    key = f"{NAMESPACE}:{ACME_CREDENTIALS}"
    example = f"`pulumi config set --secret --path '{key}.CF_Token' <token>`"
    if not isinstance(value, dict) or not value:
        return [f"{key}: expected an object of your DNS provider's variables, set one by one with {example}"]
    problems = []
    for name, item in value.items():
        if not ENV_NAME.match(str(name)):
            problems.append(f"{key}.{name}: not a variable name; expected letters, digits and '_' "
                            "(as acme.sh's DNS API documents them, e.g. CF_Token)")
        elif ENV_NAME_REFUSED.match(str(name)):
            problems.append(f"{key}.{name}: would change how Mailcow's acme container runs, not "
                            "give your DNS provider's API a credential; expected the names acme.sh's "
                            "DNS API list gives (e.g. CF_Token)")
        elif not isinstance(item, str) or not item or any(c in item for c in "\r\n\0"):
            problems.append(f"{key}.{name}: expected a non-empty text of one line")
    return problems


EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&*+/=?^_`{|}~-]+@(?P<domain>[^@\s]+)$")
ALERT_AFTER_MINUTES = (5, 1440)


def _email(value: str) -> str:
    match = EMAIL.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a mail address; expected e.g. you@example.net")
    _hostname(match["domain"])
    return value


class AlertSettings(Strict):
    to: str | None = Field(
        None,
        description="Where the watchers send their alerts (an address NOT served by this "
        "Mailcow, which is what may be down). Empty: no alerts.",
    )
    sender: str | None = Field(
        None,
        description="From address of the alerts, in a domain the relay may send for; empty "
        "means mailgate@<domain>.",
    )
    after_minutes: int = Field(
        15,
        description="Minutes the other end must stay unreachable before its ONE alert "
        f"({ALERT_AFTER_MINUTES[0]} to {ALERT_AFTER_MINUTES[1]}); a shorter outage sends nothing.",
    )

    @field_validator("to", "sender")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else _email(value)

    @field_validator("after_minutes")
    @classmethod
    def _after(cls, value: int) -> int:
        low, high = ALERT_AFTER_MINUTES
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low} to {high} minutes; the watchers check once a minute")
        return value

    @property
    def enabled(self) -> bool:
        return self.to is not None


def _cidr(value: str) -> str:
    return str(_network(value, "a network such as 198.51.100.0/24 or an address such as 198.51.100.7/32"))


class BanSettings(Strict):
    enabled: bool | None = Field(
        None,
        description="Enforce Mailcow's bans at the gateway; empty means on exactly when the "
        "secret mailgate:banlistId is set.",
    )
    interval_seconds: int = Field(
        30, ge=10, le=3600, description="How often the gateway fetches Mailcow's ban list (10 to 3600 s).")
    max_prefix_v4: int = Field(
        16, ge=8, le=32,
        description="Widest IPv4 network a ban may cover (a /8 to /32 prefix); wider entries are refused.")
    max_prefix_v6: int = Field(
        48, ge=16, le=128,
        description="Widest IPv6 network a ban may cover (a /16 to /128 prefix); wider entries are refused.")
    never_ban: list[Annotated[str, AfterValidator(_cidr)]] = Field(
        default_factory=list,
        description="Networks never banned at the gateway, besides the tailnet, the admin networks "
        "and the gateway's own addresses, which never are.",
    )
    max_entries: int = Field(
        65536, ge=100, le=1_000_000, description="Most networks the gateway's ban set holds (100 to 1,000,000).")
    home_https_port: int = Field(
        443, ge=1, le=65535,
        description="Mailcow's HTTPS port at home (HTTPS_PORT), where the gateway fetches the ban list.",
    )


class Settings(Strict):
    """Everything under the ``mailgate:`` namespace of a stack's config."""

    # The stack the config belongs to; not a config key (load_settings sets it).
    _stack: str = PrivateAttr("")
    # Whether the secret mailgate:banlistId is set (load_settings learns it).
    _banlist_id_set: bool = PrivateAttr(False)

    domain: str = Field(description="Mail domain, e.g. example.com.")
    mail_hostname: str = Field(
        description="Mailcow's hostname (MAILCOW_HOSTNAME), under the domain, e.g. mail.example.com."
    )
    gateway: GatewaySettings = Field(description="The OCI gateway VM and its network.")
    home: HomeSettings = Field(description="The Mini PC that runs Mailcow.")
    services: list[ServiceName] = Field(
        default_factory=lambda: list(catalogue.DEFAULT_MAIL_SERVICES),
        description="Mail services to forward, from: "
        + ", ".join(catalogue.MAIL_SERVICE_NAMES) + ".",
    )
    relay: RelaySettings = Field(description="The smart relay for outbound mail.")
    tailscale: TailscaleSettings = Field(
        default_factory=TailscaleSettings, description="Tailnet tags, key and policy."
    )
    web: WebSettings = Field(default_factory=WebSettings, description="Web forwarding (opt-in).")
    acme: AcmeSettings = Field(
        default_factory=AcmeSettings, description="Mailcow's certificate from Let's Encrypt.")
    alerts: AlertSettings = Field(
        default_factory=AlertSettings,
        description="Each end watches the other and mails one alert when it goes dark.",
    )
    bans: BanSettings = Field(
        default_factory=BanSettings, description="Mailcow's bans, enforced at the gateway.")

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return _hostname(value)

    @field_validator("mail_hostname")
    @classmethod
    def _mail_hostname(cls, value: str, info: ValidationInfo) -> str:
        name = _hostname(value)
        domain = info.data.get("domain")
        if domain and not name.endswith("." + domain):
            raise ValueError(f"{name} is not under the domain {domain}; expected e.g. mail.{domain}")
        return name

    @field_validator("services")
    @classmethod
    def _services(cls, value: list[str]) -> list[str]:
        _distinct(value)
        if "smtp" not in value:
            raise ValueError("must include 'smtp': the MX has to accept mail on port 25")
        return value

    @property
    def bans_active(self) -> bool:
        """Bans are enforced at the gateway: bans.enabled, or unset with a banlistId."""
        return self.bans.enabled if self.bans.enabled is not None else self._banlist_id_set

    @property
    def certificate_names(self) -> list[str]:
        """The names Mailcow asks a certificate for that mailgate knows of, mailHostname
        first (Mailcow also adds autoconfig/autodiscover of every other mail domain it
        serves); every one must point at the gateway."""
        names = [self.mail_hostname]
        if self.acme.autodiscover_san is not False:
            names += [f"{label}.{self.domain}" for label in ("autoconfig", "autodiscover")]
        names += [name for name in self.acme.additional_san or () if "*" not in name]
        return list(dict.fromkeys(names))

    @property
    def alert_sender(self) -> str:
        return self.alerts.sender or f"mailgate@{self.domain}"

    @property
    def enabled_services(self) -> tuple[catalogue.Service, ...]:
        return catalogue.enabled(tuple(self.services), self.web.enabled,
                                 self.acme.method == "http-01" or self.web.enabled)

    @property
    def names(self) -> StackNames:
        return StackNames(self._stack)

    @property
    def gateway_machine_prefix(self) -> str:
        return self.tailscale.gateway_hostname or self.names.gateway_machine_prefix


# Secret keys are read with require_secret/get_secret, never into the models above.
SECRET_KEYS: dict[str, str] = {
    "relayPassword": "Relay password (Brevo: the SMTP key, not the API key).",
    "gatewaySshPrivateKey": "Private key Pulumi uses to SSH into the gateway (matches one "
    "of gateway.sshPublicKeys).",
    "homeSshPrivateKey": "Private key Pulumi uses to SSH into the Mini PC.",
    "alertsRelayPassword": "The gateway's own relay key for its alerts (Brevo: a second SMTP "
    "key under the same login), so the internet-facing VM never holds the main one.",
    "banlistId": "The id of Mailcow's ban list (Configuration > Fail2ban in Mailcow's UI): "
    "the gateway fetches the list with it; anyone who has it can read your bans.",
    "alertsWebhookUrl": "A webhook URL the watchers also POST their alerts to, as JSON with "
    "`text` (what Slack's and Mattermost's incoming webhooks read), `title` and `status`.",
    ACME_CREDENTIALS: "dns-01: your DNS provider's API credentials for Mailcow's acme "
    "container, an object of the variables acme.sh's DNS API names (Cloudflare: CF_Token, "
    "CF_Account_ID); written to data/conf/acme/dns-01.conf, mode 0600.",
}
# Secrets set key by key (`pulumi config set --secret --path 'mailgate:<key>.<NAME>'`).
SECRET_OBJECT_KEYS = (ACME_CREDENTIALS,)
# With alerts on, the gateway needs a way to send that does not go through home.
GATEWAY_ALERT_CHANNELS = ("alertsRelayPassword", "alertsWebhookUrl")
REQUIRED_SECRET_KEYS = ("relayPassword",)


def _missing_home_host_key(home: dict) -> str:
    host, port = home.get("sshHost", "<sshHost>"), home.get("sshPort", 22)
    return ("missing; mailgate never trusts the Mini PC's SSH host on first sight. Get its key "
            f"with `ssh-keyscan -p {port} -t ed25519 {host} 2>/dev/null | cut -d' ' -f2-` (or "
            "`cat /etc/ssh/ssh_host_ed25519_key.pub` on the Mini PC), compare it there, then "
            "`pulumi config set mailgate:home.sshHostKey '<that line>'`")


MISSING_HINTS = {("home", "sshHostKey"): _missing_home_host_key}


def _alert_problems(settings: Settings, secrets_present: set[str] | None) -> list[str]:
    """What makes an alert undeliverable, found across sections and secrets."""
    alerts, key = settings.alerts, f"{NAMESPACE}:alerts.to"
    if not alerts.enabled:
        return []
    problems = []
    recipient_domain = alerts.to.rpartition("@")[2].lower()
    if recipient_domain == settings.domain or recipient_domain.endswith("." + settings.domain):
        problems.append(
            f"{key}: {alerts.to} is served by this Mailcow, which is what an alert may be about; "
            "expected an address elsewhere (e.g. at your phone's mail provider)")
    if not any(s.public_port != 25 for s in settings.enabled_services if s.group == catalogue.MAIL):
        problems.append(
            f"{key}: alerts need a forwarded mail service besides smtp: the Mini PC checks the "
            "gateway on one (its line blocks outgoing port 25); add e.g. submission to "
            f"{NAMESPACE}:services")
    if secrets_present is not None and not secrets_present.intersection(GATEWAY_ALERT_CHANNELS):
        problems.append(
            f"{key}: set, but the gateway has no way to send an alert that does not pass through "
            f"home; give it its own relay key, `pulumi config set --secret {NAMESPACE}:alertsRelayPassword "
            f"<a second SMTP key>`, or a webhook, `pulumi config set --secret {NAMESPACE}:alertsWebhookUrl <url>`")
    return problems


def load_settings(
    raw: dict[str, Any],
    *,
    stack: str,
    secrets_present: set[str] | None = None,
    extra_problems: list[str] | None = None,
    known_secrets: set[str] | None = None,
) -> Settings:
    """Validate the ``mailgate:`` config (keys without the namespace) or raise ConfigError.

    `stack` is the stack's name: every name two stacks could share carries it.
    `secrets_present`, when given, is checked for the required secret keys so a missing
    secret is reported together with every other problem. `known_secrets`: the secret keys
    a stack file sets, for a render, which needs none of them; they only turn features on
    (banlistId: bans).
    """
    problems: list[str] = list(extra_problems or [])
    if not valid_stack_name(stack):
        problems.append(f"stack {stack!r}: not a Pulumi stack name; expected letters, "
                        "digits, '_', '.' and '-'")
    plain = {key: value for key, value in raw.items() if key not in SECRET_KEYS}
    try:
        settings = Settings.model_validate(plain)
    except ValidationError as error:
        problems.extend(problems_from_validation_error(error, NAMESPACE, MISSING_HINTS))
        settings = None
    if secrets_present is not None:
        for key in REQUIRED_SECRET_KEYS:
            if key not in secrets_present:
                problems.append(
                    f"{NAMESPACE}:{key}: missing; set it with "
                    f"`pulumi config set --secret {NAMESPACE}:{key} <value>`"
                )
    if settings is not None:
        problems.extend(_alert_problems(settings, secrets_present))
        if secrets_present is not None and settings.acme.method == "dns-01" and ACME_CREDENTIALS not in secrets_present:
            problems.append(
                f"{NAMESPACE}:acme.method: dns-01, but Mailcow has no credentials for "
                f"{settings.acme.dns_provider}; set each variable its API needs with `pulumi config set "
                f"--secret --path '{NAMESPACE}:{ACME_CREDENTIALS}.<NAME>' <value>`")
        if secrets_present is not None and settings.bans.enabled and "banlistId" not in secrets_present:
            problems.append(
                f"{NAMESPACE}:bans.enabled: true, but there is no ban list to fetch; set its id with "
                f"`pulumi config set --secret {NAMESPACE}:banlistId <id>` (Mailcow's UI: "
                "Configuration > Fail2ban), or unset bans.enabled")
    if problems or settings is None:
        raise ConfigError(problems)
    settings._stack = stack
    settings._banlist_id_set = "banlistId" in (secrets_present or known_secrets or ())
    return settings
