"""The tailnet policy snippet (HuJSON): only the gateway may reach home's twin ports.

It is an output to paste into the tailnet policy file. With tailscale.manageAcl the same
rules become the whole policy, which `tailscale.Acl` then owns.
"""

from __future__ import annotations

import json

from mailgate import catalogue
from mailgate.settings import Settings, in_tailnet

HOME_HOST_ALIAS = "mailgate-home"


def gateway_home_ports(settings: Settings) -> list[int]:
    """What the gateway may reach at home: the twin ports, and with bans Mailcow's HTTPS
    port, where it fetches the ban list."""
    ports = [s.home_port for s in settings.enabled_services]
    if settings.bans_active and settings.bans.home_https_port not in ports:
        ports.append(settings.bans.home_https_port)
    return ports


def policy(settings: Settings) -> dict[str, object]:
    tags = settings.tailscale
    ports = ",".join(str(port) for port in gateway_home_ports(settings))
    home = tags.home_tag or HOME_HOST_ALIAS
    document: dict[str, object] = {
        "tagOwners": {tag: ["autogroup:admin"] for tag in (tags.gateway_tag, tags.home_tag) if tag},
        "acls": [
            {"action": "accept", "src": [tags.gateway_tag], "dst": [f"{home}:{ports}"]},
            # `pulumi up` configures the gateway over the tailnet, from an admin's machine.
            {"action": "accept", "src": ["autogroup:admin"],
             "dst": [f"{tags.gateway_tag}:{catalogue.SSH_PORT}"]},
        ],
    }
    if settings.home.via_gateway:
        # home.viaGateway: the last leg of `pulumi up`'s SSH to the Mini PC starts at the gateway.
        document["acls"].append(  # type: ignore[union-attr]
            {"action": "accept", "src": [tags.gateway_tag], "dst": [f"{home}:{settings.home.ssh_port}"]})
    elif in_tailnet(settings.home.ssh_host) or tags.manage_acl:
        # `pulumi up` may reach the Mini PC over the tailnet, from an admin's machine (an
        # address in it, or a name mailgate cannot place): a managed policy without this
        # would cut it off.
        document["acls"].append(  # type: ignore[union-attr]
            {"action": "accept", "src": ["autogroup:admin"], "dst": [f"{home}:{settings.home.ssh_port}"]})
    if tags.manage_acl:
        # The managed policy is the whole file: without this, every user's own devices would
        # lose each other. The Mini PC is tagged (settings require it), so it is not among them.
        document["acls"].append(  # type: ignore[union-attr]
            {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]})
    if not tags.home_tag:
        document["hosts"] = {HOME_HOST_ALIAS: f"{settings.home.tailnet_ip}/32"}
    document["tests"] = policy_tests(settings, home)
    return document


def policy_tests(settings: Settings, home: str) -> list[dict[str, object]]:
    """Tailscale's policy tests (checked on every save of the policy file): the gateway
    reaches the twin ports at home and none of Mailcow's own ports, nor SSH unless the
    jump needs it; with tailscale.policyTestUser, that user's devices reach no twin port."""
    twins = [f"{home}:{s.home_port}" for s in settings.enabled_services]
    reached = [f"{home}:{port}" for port in gateway_home_ports(settings)]
    plain = sorted({s.public_port for s in catalogue.SERVICES} | {catalogue.SSH_PORT, settings.home.ssh_port})
    if settings.home.via_gateway:
        plain = [port for port in plain if port != settings.home.ssh_port]
    denied = [f"{home}:{port}" for port in plain if f"{home}:{port}" not in reached]
    tests: list[dict[str, object]] = [{"src": settings.tailscale.gateway_tag, "accept": reached, "deny": denied}]
    if settings.tailscale.policy_test_user:
        # An untagged device (this user's) must not open the twin ports: nothing but the
        # gateway may send PROXY headers.
        tests.append({"src": settings.tailscale.policy_test_user, "deny": twins})
    return tests


def render_policy_snippet(settings: Settings) -> str:
    comment = (
        "// mailgate: merge these entries into your tailnet policy file.\n"
        f"// {settings.tailscale.gateway_tag} may reach the Mailcow twin ports at home"
        + (f" and Mailcow's HTTPS port {settings.bans.home_https_port} (the ban list)" if settings.bans_active else "")
        + " and nothing\n"
        "// else there; the home firewall keeps the twin ports to it on its side. Admins' machines may\n"
        "// reach the gateway's SSH port: `pulumi up` configures the gateway over the tailnet.\n"
        "// Tailscale's default rule {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}\n"
        "// lets every device reach every other one: while it is in your policy, these rules add\n"
        "// nothing. Delete it, and allow your own devices what they use, e.g.\n"
        "// {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self:*\"]}\n"
        "// with the Mini PC tagged (mailgate:tailscale.homeTag) so that rule leaves it out, plus\n"
        "// a rule for the Mini PC ports you use yourself (SSH, Mailcow's web UI).\n"
    )
    return comment + json.dumps(policy(settings), indent=2) + "\n"
