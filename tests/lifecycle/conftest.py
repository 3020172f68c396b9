"""The lab the scenarios run in: one world (clock, tailnet, OCI, the home Mini PC) and a
stack engine per stack name, with the deployed scripts aimed at the throwaway hosts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import mailgate.renderers.nginx as nginx_renderer
from mailgate.renderers.remote_scripts import DEPLOY_TARGETS
from mailgate.settings import load_settings
from tests.lifecycle.engine import Engine, Result
from tests.lifecycle.hosts import GATEWAY_COMMANDS, GATEWAY_NGINX, HomeMachine
from tests.lifecycle.providers import CommandRun, Providers
from tests.conftest import need_program
from tests.fake_docker import FakeDocker
from tests.lifecycle.world import Vm, World

MAILCOW_DIRS = {"dev": "/opt/mailcow-dockerized", "prod": "/opt/mailcow-prod"}
RELAY_PASSWORD = "xsmtpsib-first-relay-key"


class Lab:
    def __init__(self, directory: Path, dev_raw: dict):
        compose = need_program("docker-compose")  # checks the staged override and mailcow.conf
        self.home = HomeMachine(directory / "home", list(MAILCOW_DIRS.values()),
                                lambda path: FakeDocker(path, real_config=compose))
        self.world = World(directory, self.home, dev_raw["home"]["sshHost"])
        # The Mini PC logged in to the tailnet as a user's device: its key expires.
        self.home_device = self.world.tailnet.add("minipc", dev_raw["home"]["tailnetIp"], [])
        self.providers = Providers(self.world)
        self.engines: dict[str, Engine] = {}
        self.raw: dict[str, dict] = {}
        self.secrets: dict[str, dict] = {}
        self.runs: list[CommandRun] = []
        """The scripts the last operation ran."""
        for stack, mailcow_dir in MAILCOW_DIRS.items():
            raw = copy.deepcopy(dev_raw)
            raw["home"]["mailcowDir"] = mailcow_dir
            # The Mini PC's real host key, as `ssh-keyscan` would print it.
            raw["home"]["sshHostKey"] = self.home.sshd.host_public_key()
            self.raw[stack] = raw
            self.secrets[stack] = {"relayPassword": RELAY_PASSWORD}
            self.engines[stack] = Engine(stack, self.providers)

    def _track(self, operation) -> Result:
        start = len(self.providers.runs)
        result = operation()
        self.runs = self.providers.runs[start:]
        return result

    def up(self, stack: str = "dev") -> Result:
        return self._track(lambda: self.engines[stack].up(self.raw[stack], self.secrets[stack]))

    def destroy(self, stack: str = "dev") -> Result:
        return self._track(self.engines[stack].destroy)

    def ran(self) -> list[tuple[str, str]]:
        """(command resource name, script) of each script the last operation ran."""
        return [(run.name, run.script) for run in self.runs]

    def settings(self, stack: str = "dev"):
        try:
            return load_settings(self.raw[stack], stack=stack)
        except TypeError:  # before settings knew their stack
            return load_settings(self.raw[stack])

    def vm(self, stack: str = "dev") -> Vm:
        return self.world.vms[self.engines[stack].find("gateway-instance").id]

    def mailcow(self, stack: str = "dev") -> Path:
        return self.home.mailcow(MAILCOW_DIRS[stack])


@pytest.fixture
def lab(tmp_path, dev_raw):
    saved = dict(DEPLOY_TARGETS), nginx_renderer.DEPLOY_RUNTIME
    lab = Lab(tmp_path, dev_raw)
    DEPLOY_TARGETS.update(gateway=GATEWAY_COMMANDS, home=lab.home.commands)
    nginx_renderer.DEPLOY_RUNTIME = GATEWAY_NGINX
    try:
        yield lab
    finally:
        DEPLOY_TARGETS.update(saved[0])
        nginx_renderer.DEPLOY_RUNTIME = saved[1]
        for vm in list(lab.world.vms.values()):
            lab.world.terminate(vm.ocid)
        lab.home.stop()
