"""Runs the real __main__.py (or a component) under Pulumi's mocks and records what the
engine would see: every resource with its inputs and options, every invoke, the exports.

Mocks run with preview=False, so values inside Outputs are known and assertions on them
really execute.
"""

from __future__ import annotations

import asyncio
import json
import runpy
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pulumi.runtime import mocks, settings as runtime_settings
from pulumi.runtime.stack import wait_for_rpcs

from tests.conftest import ROOT

PROJECT, STACK = "mailgate", "dev"


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


class RecordingMocks(pulumi.runtime.Mocks):
    """Echoes inputs as outputs; `outputs` lets a test add provider-computed values."""

    def __init__(self, outputs=None, invokes=None):
        self.resources: list[Registered] = []
        self.invokes: list[tuple[str, dict]] = []
        self._outputs = outputs or (lambda args: {})
        self._invokes = invokes or (lambda args: {})

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", {**args.inputs, **self._outputs(args)}

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.invokes.append((args.token, dict(args.args)))
        return self._invokes(args)


class RecordingMonitor(mocks.MockMonitor):
    """Sees the resource options (protect, deleteBeforeReplace, ...) that mocks do not."""

    def __init__(self, recorder: RecordingMocks):
        super().__init__(recorder)
        self.options: dict[str, dict[str, Any]] = {}

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        self.options[request.name] = {
            "protect": request.protect,
            "delete_before_replace": request.deleteBeforeReplace,
            "dependencies": list(request.dependencies),
            "additional_secret_outputs": list(request.additionalSecretOutputs),
            "parent": request.parent,
            "object": request.object,
        }
        return super().RegisterResource(request)


@dataclass
class Run:
    resources: list[Registered]
    invokes: list[tuple[str, dict]]
    exports: dict[str, Any]
    monitor: RecordingMonitor

    def of_type(self, type_token: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str) -> Registered:
        found = self.of_type(type_token)
        assert len(found) == 1, f"expected one {type_token}, got {[r.name for r in found]}"
        return found[0]


def stack_config(raw: dict[str, Any], secrets: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Config as the Pulumi engine hands it over: fully qualified keys, JSON for objects."""
    config = {
        f"mailgate:{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in raw.items()
    }
    config.update({f"mailgate:{key}": value for key, value in secrets.items()})
    return config, [f"mailgate:{key}" for key in secrets]


def run_program(
    raw: dict[str, Any],
    secrets: dict[str, str] | None = None,
    recorder: RecordingMocks | None = None,
    program=None,
) -> Run:
    """Run __main__.py (or `program`, a callable) with the given mailgate: config."""
    secrets = {"relayPassword": "relay-secret-for-tests"} if secrets is None else secrets
    recorder = recorder or RecordingMocks()
    monitor = RecordingMonitor(recorder)
    config, secret_keys = stack_config(raw, secrets)
    runtime_config.set_all_config(config, secret_keys)
    # The root Stack that set_mocks creates belongs to the current event loop.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack=STACK, preview=False, monitor=monitor)

    async def go() -> None:
        if program is None:
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        else:
            program()
        await wait_for_rpcs()

    try:
        loop.run_until_complete(go())
        exports = loop.run_until_complete(_resolved_exports())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    return Run(recorder.resources, recorder.invokes, exports, monitor)


async def _resolved_exports() -> dict[str, Any]:
    root = runtime_settings.get_root_resource()
    outputs = getattr(root, "outputs", None) or {}
    resolved = {}
    for key, value in outputs.items():
        output = pulumi.Output.from_input(value)
        resolved[key] = {
            "value": await output.future(),
            "secret": await output.is_secret(),
        }
    return resolved
