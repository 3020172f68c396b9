"""Runs the real __main__.py once, as `pulumi up` does, with the engine model as the
SDK's mocks: EngineMonitor passes the options mocks do not see (protect,
deleteBeforeReplace, ignoreChanges, replacement_trigger, dependencies) to EngineMocks,
which asks the engine for each resource's outputs and the world for each invoke."""

from __future__ import annotations

import asyncio
import runpy
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime import config as runtime_config
from pulumi.runtime import mocks, settings as runtime_settings
from pulumi.runtime.stack import wait_for_rpcs

from tests.conftest import ROOT
from tests.pulumi_harness import plain, stack_config

PROJECT = "mailgate"


def run_program(engine, raw: dict, secrets: dict[str, str]) -> dict[str, Any]:
    engine_mocks = EngineMocks(engine)
    monitor = EngineMonitor(engine_mocks)
    config, secret_keys = stack_config(raw, secrets)
    runtime_config.set_all_config(config, secret_keys)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    runtime_settings.set_root_resource(None)  # type: ignore[arg-type]
    pulumi.runtime.set_mocks(engine_mocks, project=PROJECT, stack=engine.stack, preview=False,
                             monitor=monitor)

    async def go() -> dict[str, Any]:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        await wait_for_rpcs()
        outputs = getattr(runtime_settings.get_root_resource(), "outputs", None) or {}
        return {k: await pulumi.Output.from_input(v).future() for k, v in outputs.items()}

    try:
        return loop.run_until_complete(go())
    except BaseException:
        try:
            loop.run_until_complete(wait_for_rpcs())
        except Exception:  # noqa: BLE001 (the first error is the one to report)
            pass
        loop.run_until_complete(_settle_tracked_outputs())
        raise
    finally:
        loop.close()
        asyncio.set_event_loop(None)




async def _settle_tracked_outputs() -> None:
    """A failed Output stays tracked for program exit in this loop; let it finish."""
    while True:
        with runtime_settings.SETTINGS.lock:
            tasks = list(runtime_settings.SETTINGS.outputs)
            runtime_settings.SETTINGS.outputs.clear()
        if not tasks:
            return
        await asyncio.gather(*tasks, return_exceptions=True)


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
