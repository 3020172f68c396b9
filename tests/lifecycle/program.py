"""Runs the real __main__.py once, as `pulumi up` does, with the engine model as the
SDK's mocks: EngineMonitor passes the options mocks do not see (protect,
deleteBeforeReplace, ignoreChanges, replacement_trigger, dependencies) to EngineMocks,
which asks the engine for each resource's outputs and the world for each invoke."""

from __future__ import annotations

from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime import mocks

from tests.pulumi_harness import execute, plain


def run_program(engine, raw: dict, secrets: dict[str, str]) -> dict[str, Any]:
    """The real __main__.py once, with the engine deciding every step; the exports."""
    engine_mocks = EngineMocks(engine)
    exports = execute(engine_mocks, EngineMonitor(engine_mocks), raw, secrets, engine.stack)
    return {name: export["value"] for name, export in exports.items()}


class EngineMocks(pulumi.runtime.Mocks):
    def __init__(self, engine) -> None:
        self.engine = engine
        self.options: dict[tuple[str, str], dict] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        options = self.options.pop((args.typ, args.name))
        if not options["custom"]:  # a component: no provider, no step
            return args.name, dict(args.inputs)
        return self.engine.register(dict(args.inputs), options)

    def call(self, args: pulumi.runtime.MockCallArgs):
        return self.engine.providers.world.invoke(args.token, plain(dict(args.args)))


class EngineMonitor(mocks.MockMonitor):
    """Hands the options that mocks do not see to EngineMocks, keyed by type and name."""

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        if request.type != "pulumi:pulumi:Stack":
            self.mocks.options[(request.type, request.name)] = {
                "urn": self.make_urn(request.parent, request.type, request.name),
                "type": request.type, "name": request.name, "custom": request.custom,
                "protect": request.protect,
                "delete_before_replace": request.deleteBeforeReplace,
                "ignore_changes": list(request.ignoreChanges),
                "replace_on_changes": list(request.replaceOnChanges),
                "replacement_trigger": json_format.MessageToDict(request.replacement_trigger)
                if request.HasField("replacement_trigger") else None,
                "dependencies": list(request.dependencies),
                "property_dependencies": {key: list(value.urns)
                                          for key, value in request.propertyDependencies.items()},
            }
        return super().RegisterResource(request)
