"""What each provider does when the engine asks it to create, update, delete or read a
resource, acting on the world. Only the resource types mailgate uses.

tls.PrivateKey makes a real key (ssh-keygen), as the tls provider does at create.

remote.Command follows pulumi-command v1.2.1 provider/pkg/provider/remote/
commandController.go: Create runs `create` (nothing when unset); Update runs `update`,
else `create`, with the NEW inputs (connection, stdin); Delete runs the OLD `delete` with
the OLD connection and stdin, and returns without connecting when `delete` is unset.
commandOutputs.go run(): non-empty `stdin` is piped to every script, Delete's too.
There is no Read: a refresh keeps a Command as it is.

tailscale.DeviceKey follows terraform-provider-tailscale tailscale/resource_device_key.go:
Create and Update set the device's key expiry as asked (SetKey); Delete sends an empty
DeviceKey, i.e. key expiry back ON, whatever it was before.
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lifecycle.world import NAMESPACE, REGION_HOST, StepFailed, World

COMMAND = "command:remote:Command"
INSTANCE = "oci:Core/instance:Instance"
PUBLIC_IP = "oci:Core/publicIp:PublicIp"
TAILNET_KEY = "tailscale:index/tailnetKey:TailnetKey"
BUCKET = "oci:ObjectStorage/bucket:Bucket"
PAR = "oci:ObjectStorage/preauthrequest:Preauthrequest"
OBJECT = "oci:ObjectStorage/storageObject:StorageObject"
HOST_KEY = "tls:index/privateKey:PrivateKey"
DEVICE_KEY = "tailscale:index/deviceKey:DeviceKey"


@dataclass
class CommandRun:
    """One script a remote.Command ran: which resource, which script, where, result."""

    name: str
    script: str
    host: str
    ok: bool
    stdout: str = ""
    stderr: str = ""


class Providers:
    def __init__(self, world: World) -> None:
        self.world = world
        self.runs: list[CommandRun] = []
        self._numbers = itertools.count(1)

    # ---- remote.Command ----------------------------------------------------------
    def _run(self, name: str, kind: str, inputs: dict, text: str | None) -> dict:
        if text is None:
            return {}
        connection = inputs.get("connection") or {}
        host, machine = self.world.reach(connection)
        result = machine.sshd.run(text, inputs.get("stdin") or "", host_key=connection.get("hostKey"))
        if result.returncode == 255 and "Host key verification failed" in result.stderr:
            # What pulumi-command's FixedHostKey callback reports.
            raise StepFailed(f"{name}: {kind}: ssh: handshake failed: ssh: host key mismatch at {host}")
        self.runs.append(CommandRun(name, kind, host, result.returncode == 0, result.stdout, result.stderr))
        if result.returncode != 0:
            raise StepFailed(f"{name}: {kind} exited {result.returncode} on {host}: {result.stderr.strip()}")
        return {"stdout": result.stdout.rstrip("\n"), "stderr": result.stderr.rstrip("\n")}

    # ---- the four operations -----------------------------------------------------
    def create(self, stack: str, type_: str, name: str, inputs: dict) -> tuple[str, dict]:
        number = next(self._numbers)
        computed: dict[str, Any] = {}
        if type_ == COMMAND:
            computed = self._run(name, "create", inputs, inputs.get("create"))
            return f"{name}-{number:08x}", {**inputs, **computed}
        if type_ == INSTANCE:
            vm = self.world.launch(stack, inputs)
            return vm.ocid, {**inputs, "id": vm.ocid, "state": "RUNNING"}
        if type_ == PUBLIC_IP:
            address = f"203.0.113.{number}"
            self.world.public_ips[address] = inputs["privateIpId"]
            return f"ocid1.publicip.mglc{number}", {**inputs, "ipAddress": address}
        if type_ == TAILNET_KEY:
            key = self.world.tailnet.mint(inputs)
            return f"key-{number}", {**inputs, "key": key.key}
        if type_ == DEVICE_KEY:
            self.world.tailnet.by_node_id(inputs["deviceId"]).key_expiry_disabled = bool(
                inputs.get("keyExpiryDisabled"))
            return inputs["deviceId"], dict(inputs)
        if type_ == HOST_KEY:
            private, public = new_ed25519_key()
            return f"host-key-{number}", {**inputs, "privateKeyOpenssh": private, "publicKeyOpenssh": public}
        if type_ == BUCKET:
            self.world.store.buckets.setdefault(inputs["name"], {})
            return f"n/{NAMESPACE}/b/{inputs['name']}", dict(inputs)
        if type_ == PAR:
            token = f"par-token-{number}"
            self.world.store.pars[token] = dict(inputs)
            uri = f"/p/{token}/n/{NAMESPACE}/b/{inputs['bucket']}/o/"
            return f"n/{NAMESPACE}/b/{inputs['bucket']}/p/{token}", {
                **inputs, "accessUri": uri, "fullPath": REGION_HOST + uri, "parId": token}
        if type_ == OBJECT:
            self._bucket(inputs)[inputs["object"]] = inputs.get("content", "")
            return f"n/{NAMESPACE}/b/{inputs['bucket']}/o/{inputs['object']}", dict(inputs)
        return f"ocid1.{type_.rsplit(':', 1)[-1].lower()}.mglc{stack}{number}", dict(inputs)

    def update(self, stack: str, type_: str, name: str, old: Any, inputs: dict) -> dict:
        if type_ == COMMAND:
            text = inputs.get("update") or inputs.get("create")
            # BaseOutputs are carried over; the run replaces stdout/stderr.
            carried = {k: old.outputs[k] for k in ("stdout", "stderr") if k in old.outputs}
            return {**inputs, **carried, **self._run(name, "update", inputs, text)}
        if type_ == INSTANCE:
            vm = self.world.vms.get(old.id)
            if vm is None:
                raise StepFailed(f"{name}: 404 NotAuthorizedOrNotFound: instance {old.id}")
            if _source(old.inputs) != _source(inputs):
                # core_instance_resource.go Update(): a new source_id replaces the boot
                # volume in place (updateOptionsViaWorkRequest); the OCID stays.
                self.world.replace_boot_volume(vm)
            # updateCoreInstance(): a changed `state` (updatable, not ForceNew) is an
            # InstanceAction START (RUNNING) or STOP (STOPPED) on the same instance.
            if inputs.get("state") == "RUNNING" and vm.stopped:
                self.world.start(vm)
            elif inputs.get("state") == "STOPPED":
                self.world.stop(vm.ocid)
            return {**inputs, "id": old.id, "state": "STOPPED" if vm.stopped else "RUNNING"}
        if type_ == PUBLIC_IP:
            self.world.public_ips[old.outputs["ipAddress"]] = inputs["privateIpId"]
            return {**inputs, "ipAddress": old.outputs["ipAddress"]}
        if type_ == DEVICE_KEY:
            self.world.tailnet.by_node_id(inputs["deviceId"]).key_expiry_disabled = bool(
                inputs.get("keyExpiryDisabled"))
        if type_ == OBJECT:  # a new name is a rename (TF Update calls PutObject/rename)
            objects = self._bucket(inputs)
            objects[inputs["object"]] = objects.pop(old.inputs["object"], inputs.get("content", ""))
        return {**old.outputs, **inputs}

    def delete(self, stack: str, type_: str, name: str, old: Any) -> None:
        if type_ == COMMAND:
            self._run(name, "delete", old.inputs, old.inputs.get("delete"))
        elif type_ == INSTANCE:
            self.world.terminate(old.id)
        elif type_ == PUBLIC_IP:
            self.world.public_ips.pop(old.outputs.get("ipAddress"), None)
        elif type_ == TAILNET_KEY:
            if key := self.world.tailnet.keys.get(old.outputs.get("key")):
                key.revoked = True
        elif type_ == DEVICE_KEY:
            self.world.tailnet.by_node_id(old.inputs["deviceId"]).key_expiry_disabled = False
        elif type_ == BUCKET:
            if self.world.store.buckets.get(old.inputs["name"]):
                raise StepFailed(f"{name}: 409 BucketNotEmpty")
            self.world.store.buckets.pop(old.inputs["name"], None)
        elif type_ == PAR:
            self.world.store.pars.pop(old.outputs.get("parId"), None)
        elif type_ == OBJECT:
            self._bucket(old.inputs).pop(old.inputs["object"], None)

    def read(self, type_: str, old: Any) -> dict:
        """What a refresh writes back into the state for the inputs the program sets.

        objectstorage_preauthrequest_resource.go: Get() rebuilds the request from the
        API's summary, which has no bucket listing action, and SetData() then stores ""
        for it (Optional+Computed+ForceNew): a program that sets it sees a replacement.
        core_instance_resource.go SetData() stores the instance's lifecycle state as
        `state`: a program that declares one sees the difference and updates.
        """
        inputs = dict(old.inputs)
        if type_ == PAR and "bucketListingAction" in inputs:
            inputs["bucketListingAction"] = ""
        if type_ == INSTANCE and "state" in inputs and old.id in self.world.vms:
            inputs["state"] = "STOPPED" if self.world.vms[old.id].stopped else "RUNNING"
        return inputs

    def exists(self, type_: str, old: Any) -> bool:
        """Read during `pulumi refresh`: False drops the resource from the state."""
        if type_ == INSTANCE:
            return old.id in self.world.vms
        return True

    def _bucket(self, inputs: dict) -> dict[str, str]:
        bucket = self.world.store.buckets.get(inputs["bucket"])
        if bucket is None:
            raise StepFailed(f"404 BucketNotFound: {inputs['bucket']}")
        return bucket


def new_ed25519_key() -> tuple[str, str]:
    """(OpenSSH private key, 'ssh-ed25519 AAAA...\\n')."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        return path.read_text(), " ".join(Path(f"{path}.pub").read_text().split()[:2]) + "\n"


def _source(inputs: dict) -> Any:
    return (inputs.get("sourceDetails") or {}).get("sourceId")
