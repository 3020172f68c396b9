"""What the engine's steps act on, outside the state file: a clock, a tailnet, OCI
(object storage, gateway VMs, reserved IPs, invokes) and the home Mini PC.

Each stand-in keeps one contract of the real service, named in its docstring, and
nothing more. Providers (create/update/delete of a resource type) are in `provide`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.lifecycle.hosts import GatewayMachine, HomeMachine
from tests.pulumi_harness import UBUNTU_IMAGES

REGION_HOST = "https://objectstorage.eu-frankfurt-1.oraclecloud.com"
NAMESPACE = "mglcns"
BOOTSTRAP_URL_PATH = "/etc/mailgate/bootstrap-url"
LEGACY_AUTH_KEY_PATH = "/run/mailgate/tailscale-auth-key"


class StepFailed(Exception):
    """A provider operation failed; the engine stops the update there."""


class Clock:
    """Wall-clock seconds; tests advance it between `pulumi up`s."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def advance(self, hours: float) -> None:
        self.now += hours * 3600


@dataclass
class AuthKey:
    key: str
    created: float
    expiry: float
    reusable: bool
    tags: list[str]
    used: bool = False
    revoked: bool = False


@dataclass
class Device:
    hostname: str
    address: str
    tags: list[str]
    machine: GatewayMachine | None = None
    """The disk the node lives on; a new boot volume is a new node."""
    node_id: str = ""
    key_expiry_disabled: bool = False


class Tailnet:
    """Tailscale's control plane as nodes see it (tailscale.com/kb/1085/auth-keys): a key
    joins until `expiry` seconds after it was made; a single-use key joins once; a joined
    node stays registered (tagged nodes never expire) until someone removes it, so a
    rebuilt VM is a second device. getDevice answers the FIRST device with that hostname,
    as terraform-provider-tailscale's data source does; getDevices lists them all. A
    device's key expiry is on unless it is tagged or someone turned it off (a DeviceKey)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.keys: dict[str, AuthKey] = {}
        self.devices: list[Device] = []
        self._numbers = itertools.count(10)

    def mint(self, inputs: dict) -> AuthKey:
        number = next(self._numbers)
        key = AuthKey(f"tskey-auth-mglc{number}-{hashlib.sha256(str(number).encode()).hexdigest()[:16]}",
                      self.clock.now, float(inputs.get("expiry") or 90 * 86400),
                      bool(inputs.get("reusable")), list(inputs.get("tags") or []))
        self.keys[key.key] = key
        return key

    def join(self, key_text: str, hostname: str, machine: GatewayMachine) -> Device:
        key = self.keys.get(key_text)
        if key is None or key.revoked:
            raise StepFailed(f"tailscale up: invalid key: {key_text[:20]}...")
        if self.clock.now > key.created + key.expiry:
            raise StepFailed("tailscale up: invalid key: auth key expired")
        if key.used and not key.reusable:
            raise StepFailed("tailscale up: invalid key: auth key already used")
        key.used = True
        number = next(self._numbers)
        return self.add(hostname, f"100.64.{number // 256}.{number % 256}", key.tags, machine)

    def add(self, hostname: str, address: str, tags: list[str],
            machine: GatewayMachine | None = None) -> Device:
        """A node that logged in (`tailscale up`)."""
        device = Device(hostname, address, list(tags), machine,
                        node_id=f"n{hostname}{len(self.devices)}CNTRL", key_expiry_disabled=bool(tags))
        self.devices.append(device)
        return device

    def by_node_id(self, node_id: str) -> Device:
        device = next((d for d in self.devices if d.node_id == node_id), None)
        if device is None:
            raise StepFailed(f"404 device {node_id} not found")
        return device

    def first(self, hostname: str) -> Device | None:
        return next((d for d in self.devices if d.hostname == hostname), None)

    def by_address(self, address: str) -> Device | None:
        return next((d for d in self.devices if d.address == address), None)


class ObjectStore:
    """OCI Object Storage in one namespace: buckets of objects, and pre-authenticated
    requests whose URL (`accessUri` on the regional host) reads objects without keys."""

    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, str]] = {}
        self.pars: dict[str, dict] = {}

    def fetch(self, url: str) -> str | None:
        match = re.fullmatch(rf"{re.escape(REGION_HOST)}/p/([^/]+)/n/([^/]+)/b/([^/]+)/o/(.+)", url)
        if not match:
            return None
        token, namespace, bucket, name = match.groups()
        par = self.pars.get(token)
        if not par or par["bucket"] != bucket or namespace != NAMESPACE:
            return None
        if par["accessType"] not in ("AnyObjectRead", "AnyObjectReadWrite") and par.get("objectName") != name:
            return None
        return self.buckets.get(bucket, {}).get(name)


@dataclass
class Vm:
    """A gateway instance: its OCID, its user data, and the machine it runs (a fresh one
    when the boot volume is replaced). Boots (runs cloud-init) once per boot volume. A
    stopped VM keeps its OCID, disk and tailnet node but answers nothing until started."""

    ocid: str
    stack: str
    user_data: str
    machine: GatewayMachine
    booted: bool = False
    boot_error: str = ""
    devices: list[Device] = field(default_factory=list)
    stopped: bool = False


class World:
    def __init__(self, directory: Path, home: HomeMachine, home_ssh_host: str) -> None:
        self.directory = directory
        self.clock = Clock()
        self.tailnet = Tailnet(self.clock)
        self.store = ObjectStore()
        self.home = home
        self.home_ssh_host = home_ssh_host
        self.vms: dict[str, Vm] = {}
        self.public_ips: dict[str, str] = {}
        """reserved address -> private IP OCID it is attached to."""
        self._numbers = itertools.count(1)
        self.out_of_capacity = False
        """Oracle answers "Out of host capacity" to a launch (common on A1.Flex)."""

    # ---- gateway VMs -------------------------------------------------------------
    def launch(self, stack: str, inputs: dict) -> Vm:
        if self.out_of_capacity:
            raise StepFailed("500-InternalError, Out of host capacity.")
        number = next(self._numbers)
        ocid = f"ocid1.instance.oc1.eu-frankfurt-1.mglc{stack}{number:04d}"
        vm = Vm(ocid, stack, inputs["metadata"]["user_data"], self._machine(number))
        self.vms[ocid] = vm
        return vm

    def _machine(self, number: int) -> GatewayMachine:
        return GatewayMachine(self.directory / f"vm{number}", "mglc-gw")

    def replace_boot_volume(self, vm: Vm) -> None:
        """An in-place image change: same OCID, a fresh disk, cloud-init runs again."""
        vm.machine.stop()
        vm.machine = self._machine(next(self._numbers))
        vm.booted, vm.boot_error = False, ""

    def stop(self, ocid: str) -> None:
        """What Oracle does to an idle Always Free VM: stop it, not delete it."""
        self.vms[ocid].stopped = True

    def start(self, vm: Vm) -> None:
        """InstanceAction START: the same disk boots again (cloud-init's first boot is over)."""
        vm.stopped = False

    def terminate(self, ocid: str) -> None:
        vm = self.vms.pop(ocid, None)
        if vm:
            vm.machine.stop()

    def boot(self, vm: Vm) -> None:
        """cloud-init's first boot: the part of the user data that joins the tailnet."""
        if vm.booted:
            return
        vm.booted = True
        try:
            key, hostname = self._bootstrap_credentials(vm)
            vm.devices.append(self.tailnet.join(key, hostname, vm.machine))
        except StepFailed as error:
            vm.boot_error = str(error)

    def _bootstrap_credentials(self, vm: Vm) -> tuple[str, str]:
        config = yaml.safe_load(base64.b64decode(vm.user_data).decode())
        files = {entry["path"]: entry.get("content", "") for entry in config.get("write_files", [])}
        if BOOTSTRAP_URL_PATH in files:
            # Fetch <PAR URL><own OCID> (the OCID from the metadata service).
            body = self.store.fetch(files[BOOTSTRAP_URL_PATH].strip() + vm.ocid)
            if body is None:
                raise StepFailed("bootstrap object not readable: 404")
            values = dict(line.split("=", 1) for line in body.splitlines() if "=" in line)
            if "SSH_HOST_KEY" in values:  # the join script puts it in place and restarts sshd
                vm.machine.sshd.replace_host_key(base64.b64decode(values["SSH_HOST_KEY"]).decode())
            return values["TS_AUTHKEY"], values["TS_HOSTNAME"]
        # Earlier design: the key itself in write_files, the name on `tailscale up`.
        up = next(c for c in config["runcmd"] if isinstance(c, str) and c.startswith("tailscale up"))
        hostname = next(a.split("=", 1)[1] for a in shlex.split(up) if a.startswith("--hostname="))
        return files[LEGACY_AUTH_KEY_PATH].strip(), hostname

    def boot_all(self) -> None:
        for vm in list(self.vms.values()):
            self.boot(vm)

    # ---- SSH: which machine a connection reaches ---------------------------------
    def reach(self, connection: dict) -> tuple[str, Any]:
        """(label, machine) behind `connection` (its proxy reached first), booted; or
        StepFailed, as pulumi-command reports a dial that never succeeds."""
        proxy = connection.get("proxy")
        if proxy:
            label, jump = self.reach(proxy)
            pinned = (proxy.get("hostKey") or "").strip()
            if pinned and pinned != jump.sshd.host_public_key():
                raise StepFailed(f"Error: proxy: ssh: handshake failed: ssh: host key mismatch at {label}")
        host = connection.get("host", "")
        if host == self.home_ssh_host:
            return "home", self.home
        vm = self._vm_at(host)
        if vm is None or vm.stopped:
            raise StepFailed(f"Error: dial tcp {host}:22: connect: no route to host "
                             f"(tried {int(connection.get('dialErrorLimit') or 10)} times)")
        self.boot(vm)  # the first SSH step waits for cloud-init (`cloud-init status --wait`)
        return vm.ocid, vm.machine

    def _vm_at(self, host: str) -> Vm | None:
        private_ip = self.public_ips.get(host)
        for vm in self.vms.values():
            if private_ip and private_ip == private_ip_of(vm.ocid):
                return vm
        device = self.tailnet.by_address(host)
        return next((vm for vm in self.vms.values() if device and device.machine is vm.machine), None)

    # ---- invokes -----------------------------------------------------------------
    def invoke(self, token: str, args: dict) -> dict:
        if token == "tailscale:index/getDevice:getDevice":
            self.boot_all()  # the program waits for the device: cloud-init has run by then
            device = self.tailnet.first(args.get("hostname") or args.get("name"))
            if device is None:
                raise StepFailed(f"timed out after {args.get('waitFor')} waiting for device "
                                 f"{args.get('hostname')!r}")
            return {"addresses": [device.address], "hostname": device.hostname,
                    "name": device.hostname, "tags": device.tags, "id": device.address}
        if token == "tailscale:index/getDevices:getDevices":
            return {"devices": [
                {"addresses": [device.address], "hostname": device.hostname,
                 "name": f"{device.hostname}.tail0123.ts.net", "tags": device.tags,
                 "nodeId": device.node_id, "id": device.node_id,
                 "keyExpiryDisabled": device.key_expiry_disabled}
                for device in self.tailnet.devices]}
        if token == "oci:Core/getVnicAttachments:getVnicAttachments":
            instance = args["instanceId"]
            return {"vnicAttachments": [{"vnicId": f"vnic-of-{instance}", "instanceId": instance,
                                         "nicIndex": 0.0}]}
        if token == "oci:Core/getPrivateIps:getPrivateIps":
            instance = args["vnicId"].removeprefix("vnic-of-")
            return {"privateIps": [{"id": private_ip_of(instance), "isPrimary": True,
                                    "ipAddress": "10.0.0.2"}]}
        if token == "oci:ObjectStorage/getNamespace:getNamespace":
            return {"namespace": NAMESPACE}
        if token == "oci:Core/getImages:getImages":
            return {"images": list(UBUNTU_IMAGES)}
        if token == "oci:Identity/getAvailabilityDomains:getAvailabilityDomains":
            return {"availabilityDomains": [{"name": "Uocm:EU-FRANKFURT-1-AD-1"}]}
        if token == "oci:Core/getShapes:getShapes":
            return {"shapes": [{"name": name} for name in (
                "VM.Standard.A1.Flex", "VM.Standard.E2.1.Micro")]}
        if token == "oci:Core/getIpv6s:getIpv6s":
            return {"ipv6s": [{"ipAddress": "2603:c020:4000:aa00::25"}]}
        raise StepFailed(f"the world does not answer the invoke {token}")


def private_ip_of(instance_ocid: str) -> str:
    return f"ocid1.privateip.of.{instance_ocid}"
