"""Guard rails checked by `pulumi preview --policy-pack policy`, independently of the code
that builds the resources: a mistake in the catalogue or a hand-added rule still cannot
open the gateway to the internet.

Mandatory: nothing reaches SSH or every port from 0.0.0.0/0 or ::/0, and no TCP/UDP
ingress rule lacks a port range (OCI reads a missing range as "all ports"); no remote
command that undoes something on delete has `triggers`; no tailnet key in user data.
Advisory: the reserved MX address is protected, the VM gets no ephemeral public IP, and
the VM is deleted before its replacement is created.

Props arrive as the engine sends them: camelCase names, numbers as floats.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from pulumi_policy import EnforcementLevel, ResourceValidationPolicy

SECURITY_LIST = "oci:Core/securityList:SecurityList"
NSG_RULE = "oci:Core/networkSecurityGroupSecurityRule:NetworkSecurityGroupSecurityRule"
PUBLIC_IP = "oci:Core/publicIp:PublicIp"
INSTANCE = "oci:Core/instance:Instance"
REMOTE_COMMAND = "command:remote:Command"
TAILNET_KEY_PREFIX = "tskey-"

WORLD = ("0.0.0.0/0", "::/0")
TCP, UDP, ALL = "6", "17", "all"
SSH_PORT = 22

ReportViolation = Callable[..., None]


@dataclass(frozen=True)
class Ingress:
    """An ingress rule from a security list or a network security group, made alike."""

    protocol: str
    source: str
    ports: tuple[int, int] | None
    """(min, max) destination ports; None when the rule names no range."""


def _range(options: Mapping[str, Any] | None) -> tuple[int, int] | None:
    if not options or options.get("min") is None or options.get("max") is None:
        return None
    return int(options["min"]), int(options["max"])


def _options(rule: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return rule.get({TCP: "tcpOptions", UDP: "udpOptions"}.get(str(rule.get("protocol")), ""))


def ingress_rules(resource_type: str, props: Mapping[str, Any]) -> Iterator[Ingress]:
    if resource_type == SECURITY_LIST:
        for rule in props.get("ingressSecurityRules") or []:
            yield Ingress(str(rule.get("protocol")), str(rule.get("source")),
                          _range(_options(rule)))
    elif resource_type == NSG_RULE and str(props.get("direction")).upper() == "INGRESS":
        options = _options(props) or {}
        yield Ingress(str(props.get("protocol")), str(props.get("source")),
                      _range(options.get("destinationPortRange")))


def no_world_ssh_or_all_ports(args, report_violation: ReportViolation) -> None:
    for rule in ingress_rules(args.resource_type, args.props):
        if rule.source not in WORLD:
            continue
        if rule.protocol == ALL:
            report_violation(f"every protocol and port is open to {rule.source}")
        elif rule.protocol in (TCP, UDP) and rule.ports is None:
            report_violation(f"every {'TCP' if rule.protocol == TCP else 'UDP'} port is open "
                             f"to {rule.source}")
        elif rule.protocol == TCP and rule.ports[0] <= SSH_PORT <= rule.ports[1]:
            report_violation(f"SSH (port {SSH_PORT}) is open to {rule.source}; allow it only "
                             "from mailgate:gateway.adminCidrs")


def tcp_udp_ingress_has_port_range(args, report_violation: ReportViolation) -> None:
    for rule in ingress_rules(args.resource_type, args.props):
        if rule.protocol in (TCP, UDP) and rule.ports is None:
            report_violation(f"protocol {rule.protocol} ingress from {rule.source} names no port "
                             "range, which OCI reads as every port")


def reserved_public_ip_is_protected(args, report_violation: ReportViolation) -> None:
    if (args.resource_type == PUBLIC_IP and args.props.get("lifetime") == "RESERVED"
            and not args.opts.protect):
        report_violation("the reserved public IP is the MX address; protect it so a destroy or "
                         "replacement cannot release it")


def instance_has_no_ephemeral_public_ip(args, report_violation: ReportViolation) -> None:
    if args.resource_type != INSTANCE:
        return
    assign = (args.props.get("createVnicDetails") or {}).get("assignPublicIp")
    # OCI assigns an ephemeral address in a public subnet unless told "false".
    if str(assign).lower() != "false":
        report_violation("the instance would get an ephemeral public IP besides the reserved "
                         "one; set create_vnic_details.assign_public_ip to \"false\"")


def instance_deleted_before_replace(args, report_violation: ReportViolation) -> None:
    if args.resource_type == INSTANCE and not args.opts.delete_before_replace:
        report_violation("replacing the instance create-first needs twice the Always Free "
                         "quota; set delete_before_replace")


def restoring_command_has_no_triggers(args, report_violation: ReportViolation) -> None:
    # pulumi-command replaces a Command whose triggers change, and a replacement runs the
    # NEW create first and the OLD delete last: a delete that restores the host would
    # undo what the new create just did.
    props = args.props
    if args.resource_type == REMOTE_COMMAND and props.get("delete") and props.get("triggers"):
        report_violation("a remote command with a `delete` must not have `triggers`: a change "
                         "of them replaces it, and the old delete then undoes the new create; "
                         "send changing content on stdin, so that a change is an update")


def remote_command_pins_host_keys(args, report_violation: ReportViolation) -> None:
    # Without a host key pulumi-command accepts any server (InsecureIgnoreHostKey), and
    # these sessions carry Mailcow's and the relay's passwords. An unknown key (a preview
    # before the gateway's key exists) raises UnknownValueError, which skips the check.
    if args.resource_type != REMOTE_COMMAND:
        return
    connection = args.props.get("connection") or {}
    hops = [("connection", connection)]
    if connection.get("proxy"):
        hops.append(("connection.proxy", connection["proxy"]))
    for where, hop in hops:
        if not hop.get("hostKey"):
            report_violation(f"{where} to {hop.get('host')} pins no host key: any server on that "
                             "address would be trusted; set host_key")


def user_data_holds_no_tailnet_key(args, report_violation: ReportViolation) -> None:
    # Every process on the VM can read its user data, and a key minted before the VM is
    # expired or spent when a VM is created later: each VM fetches its own.
    if args.resource_type != INSTANCE:
        return
    user_data = (args.props.get("metadata") or {}).get("user_data")
    if not isinstance(user_data, str):
        return  # unknown during a preview
    try:
        text = base64.b64decode(user_data, validate=True).decode(errors="replace")
    except (binascii.Error, ValueError):
        text = user_data
    if TAILNET_KEY_PREFIX in text:
        report_violation("the instance's user data carries a Tailscale key; the VM must fetch "
                         "its own enrolment after it exists (components/bootstrap.py)")


POLICIES = [
    ResourceValidationPolicy(
        name="no-world-ssh-or-all-ports",
        description="No ingress to SSH or to every port from 0.0.0.0/0 or ::/0.",
        validate=no_world_ssh_or_all_ports,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="tcp-udp-ingress-has-port-range",
        description="Every TCP or UDP ingress rule names its destination ports.",
        validate=tcp_udp_ingress_has_port_range,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="restoring-command-has-no-triggers",
        description="No remote command with a delete step has triggers (a replace would "
                    "run the old delete after the new create).",
        validate=restoring_command_has_no_triggers,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="remote-command-pins-host-keys",
        description="Every remote command's connection, and its jump, pins the server's host key.",
        validate=remote_command_pins_host_keys,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="user-data-holds-no-tailnet-key",
        description="The gateway's user data holds no Tailscale key.",
        validate=user_data_holds_no_tailnet_key,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="reserved-public-ip-protected",
        description="The reserved public IP (the MX address) is protected.",
        validate=reserved_public_ip_is_protected,
        enforcement_level=EnforcementLevel.ADVISORY,
    ),
    ResourceValidationPolicy(
        name="instance-no-ephemeral-public-ip",
        description="The gateway VM gets no ephemeral public IP.",
        validate=instance_has_no_ephemeral_public_ip,
        enforcement_level=EnforcementLevel.ADVISORY,
    ),
    ResourceValidationPolicy(
        name="instance-delete-before-replace",
        description="The gateway VM is deleted before its replacement is created.",
        validate=instance_deleted_before_replace,
        enforcement_level=EnforcementLevel.ADVISORY,
    ),
]
