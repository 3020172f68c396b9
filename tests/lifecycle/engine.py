"""A model of the Pulumi engine's `up`, `refresh` and `destroy` for one stack, driven by
the real __main__.py under the SDK's mocks.

The mocks object IS the engine: for each resource the program registers it compares the
inputs and options with the previous deployment's state, decides same / update /
replace / create, and performs the step at once through the providers (so a remote
Command's script runs, over SSH, when the resource registers, and the program receives
the outputs the engine would hand it). Deletes of replaced and removed resources run
after the program, in reverse dependency order. Sources, pulumi/pulumi
pkg/resource/deploy/:
- step_generator.go generateStepsFromDiff: `replacement_trigger` replaces when old and
  new are both set and differ (shouldTriggerReplace); otherwise the provider's diff,
  after processIgnoreChanges has put the OLD value at each ignore_changes path.
- step_generator.go continueStepsFromDiff: replace when the diff says so; the goal's
  deleteBeforeReplace picks delete-then-create; otherwise the new resource is created
  and the old one "pending delete" until the end. A protected resource is never replaced.
  With delete-before-replace, calculateDependentReplacements first deletes dependents
  whose properties take a value from it and would be replaced by its change.
- step_generator.go GenerateDeletes / ScheduleDeletes: after a program that finished
  without error, resources not registered and pending deletes (also those left by an
  earlier, failed update) are deleted, dependents before their dependencies.
- deployment_executor.go: a failed step stops the update; steps not reached keep their
  old state, a failed update keeps the old inputs, pending deletes stay in the state.
Diffs, pulumi-go-provider v1.3.0 infer/resource.go diff(): without a CustomDiff (remote.
Command has none) every changed input is an update, except replaceOnChanges inputs:
`triggers` (pulumi-command v1.2.1 provider/pkg/provider/common/inputs.go tags it
`provider:"replaceOnChanges"`, and sdk/python/pulumi_command/remote/command.py hard-codes
replace_on_changes=["triggers[*]"]). `depends_on` is no input, so never a change.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.lifecycle.program import run_program
from tests.lifecycle.providers import (BUCKET, COMMAND, DEVICE_KEY, INSTANCE, OBJECT, PAR, PUBLIC_IP,
                                       TAILNET_KEY, Providers)
from tests.lifecycle.world import StepFailed
from tests.pulumi_harness import plain

# Input paths whose change makes the provider answer "replace", per type token.
REPLACE_ON: dict[str, tuple[str, ...]] = {
    COMMAND: ("triggers",),
    # oracle/terraform-provider-oci internal/service/core/core_instance_resource.go:
    # availability_domain and create_vnic_details.{subnet_id,assign_ipv6ip,private_ip}
    # are ForceNew; CustomizeDiff ForceNewIfChange("metadata") for ssh_authorized_keys and
    # user_data. source_details.source_id is NOT: Update() swaps the boot volume in place.
    INSTANCE: ("availabilityDomain", "metadata.user_data", "metadata.ssh_authorized_keys",
               "createVnicDetails.subnetId", "createVnicDetails.assignIpv6ip",
               "createVnicDetails.privateIp"),
    # core_public_ip_resource.go: lifetime is ForceNew, private_ip_id is updatable.
    PUBLIC_IP: ("lifetime",),
    # terraform-provider-tailscale resource_tailnet_key.go: every argument is ForceNew.
    TAILNET_KEY: ("*",),
    # resource_device_key.go: device_id RequiresReplace; key_expiry_disabled is updatable.
    DEVICE_KEY: ("deviceId",),
    # objectstorage_object_resource.go: bucket, namespace, content (and its metadata,
    # content_type, ...) ForceNew; object (the name) is updatable.
    OBJECT: ("bucket", "namespace", "content", "contentType", "metadata", "cacheControl"),
    # objectstorage_preauthrequest_resource.go: no Update; every argument ForceNew.
    PAR: ("*",),
    # objectstorage_bucket_resource.go: namespace ForceNew; name as the lead's table says.
    BUCKET: ("namespace", "name"),
}


@dataclass
class Resource:
    """One resource in the state file."""

    urn: str
    type: str
    name: str
    inputs: dict
    id: str = ""
    outputs: dict = field(default_factory=dict)
    protect: bool = False
    delete_before_replace: bool = False
    ignore_changes: list[str] = field(default_factory=list)
    replace_on_changes: list[str] = field(default_factory=list)
    replacement_trigger: Any = None
    dependencies: list[str] = field(default_factory=list)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Step:
    op: str
    """same, create, update, replace, delete-replaced, delete, refresh-drop"""
    name: str
    ok: bool = True
    error: str = ""


@dataclass
class Result:
    steps: list[Step]
    error: str | None
    exports: dict[str, Any] = field(default_factory=dict)

    def ops(self) -> dict[str, str]:
        """resource name -> the last step the engine took for it ("same" left out)."""
        return {s.name: s.op for s in self.steps if s.op != "same"}


def changed_paths(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [p for key in sorted(set(old) | set(new))
                for p in changed_paths(old.get(key), new.get(key), f"{path}.{key}".lstrip("."))]
    return [] if old == new else [path]


def forces_replace(type_: str, path: str) -> bool:
    rules = REPLACE_ON.get(type_, ())
    return any(rule == "*" or path == rule or path.startswith(rule + ".") or rule.startswith(path + ".")
               for rule in rules)


def with_ignored(new: dict, old: dict, ignore_changes: list[str]) -> dict:
    """processIgnoreChanges: each ignored path takes the old value."""
    result = copy.deepcopy(new)
    for path in ignore_changes:
        *parents, leaf = path.split(".")
        source, target = old, result
        for part in parents:
            source, target = (source or {}).get(part), (target or {}).get(part)
        if isinstance(source, dict) and isinstance(target, dict) and leaf in source:
            target[leaf] = source[leaf]
    return result


def decide(old: Resource | None, new: Resource) -> str:
    if old is None:
        return "create"
    if old.replacement_trigger is not None and new.replacement_trigger is not None and (
            old.replacement_trigger != new.replacement_trigger):
        return "replace"
    new.inputs = with_ignored(new.inputs, old.inputs, new.ignore_changes)
    changed = changed_paths(old.inputs, new.inputs)
    if not changed:
        return "same"
    # The replace_on_changes option turns a change at those paths into a replace whatever
    # the provider says (step_generator.go, applyReplaceOnChanges).
    by_option = [p for p in changed
                 if any(p == rule or p.startswith(rule + ".") for rule in new.replace_on_changes)]
    return "replace" if by_option or any(forces_replace(new.type, p) for p in changed) else "update"


def delete_order(resources: list[Resource]) -> list[Resource]:
    """Reverse dependency order: nothing is deleted before a resource that depends on it."""
    remaining, ordered = list(resources), []
    while remaining:
        for candidate in remaining:
            if not any(candidate.urn in other.dependencies for other in remaining if other is not candidate):
                ordered.append(candidate)
                remaining.remove(candidate)
                break
        else:  # a cycle cannot happen in a real state; keep going rather than hang
            ordered.extend(reversed(remaining))
            break
    return ordered


class Engine:
    """One stack's state and the engine operations on it."""

    def __init__(self, stack: str, providers: Providers) -> None:
        self.stack = stack
        self.providers = providers
        self.resources: dict[str, Resource] = {}
        self.pending_deletes: list[Resource] = []
        self._lock = threading.RLock()

    # ---- pulumi up ---------------------------------------------------------------
    def up(self, raw: dict, secrets: dict[str, str]) -> Result:
        self._old = dict(self.resources)
        self._seen: set[str] = set()
        self._deleted_for_replace: set[str] = set()
        self._failed: str | None = None
        self._steps: list[Step] = []
        exports: dict[str, Any] = {}
        try:
            exports = run_program(self, raw, secrets)
        except Exception as error:  # noqa: BLE001 (the program's error ends the update)
            self._failed = self._failed or f"{type(error).__name__}: {error}"
        if self._failed is None:
            unseen = [r for urn, r in self._old.items() if urn not in self._seen]
            for resource in unseen:
                self.resources.pop(resource.urn, None)
            self._delete(self.pending_deletes + unseen, "delete", pending=True)
        return Result(self._steps, self._failed, exports)

    def register(self, inputs: dict, options: dict) -> tuple[str, dict]:
        with self._lock:
            urn = options["urn"]
            self._seen.add(urn)
            new = Resource(urn, options["type"], options["name"], plain(inputs),
                           protect=options["protect"],
                           delete_before_replace=options["delete_before_replace"],
                           ignore_changes=options["ignore_changes"],
                           replace_on_changes=options["replace_on_changes"],
                           replacement_trigger=options["replacement_trigger"],
                           dependencies=options["dependencies"],
                           property_dependencies=options["property_dependencies"])
            if self._failed:
                raise StepFailed(f"not run: the update stopped at {self._failed}")
            old = None if urn in self._deleted_for_replace else self._old.get(urn)
            op = decide(old, new)
            try:
                self._perform(op, old, new)
            except StepFailed as error:
                self._failed = str(error)
                self._steps.append(Step(op, new.name, ok=False, error=str(error)))
                raise
            self._steps.append(Step(op, new.name))
            self.resources[urn] = new
            return new.id, new.outputs

    def _perform(self, op: str, old: Resource | None, new: Resource) -> None:
        p, stack = self.providers, self.stack
        if op == "same":
            new.id, new.outputs = old.id, old.outputs
        elif op == "create":
            new.id, new.outputs = p.create(stack, new.type, new.name, new.inputs)
        elif op == "update":
            new.id, new.outputs = old.id, p.update(stack, new.type, new.name, old, new.inputs)
        elif old.protect and new.protect:
            raise StepFailed(f"unable to replace resource {new.urn} as it is currently marked for protection")
        elif new.delete_before_replace:
            self._delete(self._dependent_replacements(old), "delete-replaced")
            self._delete([old], "delete-replaced")
            if self._failed:
                raise StepFailed(self._failed)
            new.id, new.outputs = p.create(stack, new.type, new.name, new.inputs)
        else:
            new.id, new.outputs = p.create(stack, new.type, new.name, new.inputs)
            self.pending_deletes.append(old)

    def _dependent_replacements(self, root: Resource) -> list[Resource]:
        """calculateDependentReplacements: dependents that take a value from the replaced
        set in a property whose change replaces them."""
        replace_set, found = {root.urn}, []
        for resource in list(self.resources.values()):
            keys = [key for key, urns in resource.property_dependencies.items()
                    if replace_set.intersection(urns)]
            if resource.urn != root.urn and any(forces_replace(resource.type, key) for key in keys):
                replace_set.add(resource.urn)
                found.append(resource)
                self._deleted_for_replace.add(resource.urn)
        return found

    def _delete(self, resources: list[Resource], op: str, pending: bool = False) -> None:
        for resource in delete_order(resources):
            if self._failed:
                return
            try:
                if resource.protect:
                    raise StepFailed(f"unable to delete resource {resource.urn} as it is currently "
                                     "marked for protection")
                self.providers.delete(self.stack, resource.type, resource.name, resource)
            except StepFailed as error:
                self._failed = str(error)
                self._steps.append(Step(op, resource.name, ok=False, error=str(error)))
                if resource not in self.pending_deletes:
                    self.pending_deletes.append(resource)
                return
            self._steps.append(Step(op, resource.name))
            if resource in self.pending_deletes:
                self.pending_deletes.remove(resource)
            if self.resources.get(resource.urn) is resource:
                del self.resources[resource.urn]

    # ---- pulumi refresh / destroy / state unprotect ------------------------------
    def refresh(self) -> list[str]:
        """Drop what the providers no longer find (a Command has no Read: kept), and take
        what they read back for the rest."""
        gone = [r for r in self.resources.values() if not self.providers.exists(r.type, r)]
        for resource in gone:
            del self.resources[resource.urn]
        for resource in self.resources.values():
            resource.inputs = self.providers.read(resource.type, resource)
        return [r.name for r in gone]

    def destroy(self) -> Result:
        self._failed, self._steps = None, []
        self._delete(list(self.resources.values()) + self.pending_deletes, "delete")
        return Result(self._steps, self._failed)

    def unprotect_all(self) -> None:
        """`pulumi state unprotect --all --yes`."""
        for resource in self.resources.values():
            resource.protect = False

    def find(self, name: str) -> Resource:
        return next(r for r in self.resources.values() if r.name == name)
