"""The home step's non-local bind setting, run for real over SSH (tests/test_remote_home.py
has the fixture): the real `sysctl` inside a private network namespace, whose keys stand
for the Mini PC's kernel."""

from __future__ import annotations

import copy
import shutil

import pytest

from mailgate.renderers.remote_scripts import render_home_restore
from mailgate.renderers.sysctl import NONLOCAL_BIND_KEYS, render_nonlocal_bind_sysctl
from mailgate.settings import load_settings
from tests.test_remote_home import Home
from tests.validators import Netns

IPV4, IPV6 = NONLOCAL_BIND_KEYS
OFF = {IPV4: "0", IPV6: "0"}
ON = {IPV4: "1", IPV6: "1"}


@pytest.fixture
def home(tmp_path, dev_settings):
    with Netns("mgnb") as netns:
        instance = Home(tmp_path, dev_settings, netns)
        try:
            yield instance
        finally:
            instance.sshd.stop()


def kernel(home: Home) -> dict[str, str]:
    return {key: home.netns.run(["sysctl", "-n", key]).stdout.strip() for key in NONLOCAL_BIND_KEYS}


def set_kernel(home: Home, values: dict[str, str]) -> None:
    home.netns.run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]).check_returncode()


def sysctl_file(home: Home, settings=None):
    return home.root / (settings or home.settings).names.home_nonlocal_bind_sysctl.lstrip("/")


def second_stack(home: Home, dev_raw: dict):
    """Stack `prod` on the same Mini PC, with a Mailcow checkout of its own."""
    raw = copy.deepcopy(dev_raw)
    raw["home"]["mailcowDir"] = "/opt/mailcow-prod"
    shutil.copytree(home.mailcow, home.root / "opt/mailcow-prod")
    return load_settings(raw, stack="prod")


def test_the_keys_are_set_when_the_file_is_new_or_changed_and_only_then(home):
    assert kernel(home) == OFF
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert sysctl_file(home).read_text() == render_nonlocal_bind_sysctl("dev")
    assert kernel(home) == ON

    set_kernel(home, OFF)
    again = home.apply()
    assert again.returncode == 0 and "already up to date" in again.stdout
    assert kernel(home) == OFF  # the file did not change, so sysctl did not run

    # A file that an earlier mailgate wrote differently is replaced and applied.
    older = "net.ipv4.ip_nonlocal_bind = 1\n"
    applied_copy = home.root / home.settings.names.home_state_dir.lstrip("/") / "applied" / \
        home.settings.names.home_nonlocal_bind_sysctl.lstrip("/")
    for path in (sysctl_file(home), applied_copy):
        path.write_text(older)
    result = home.apply()
    assert result.returncode == 0, result.stderr
    assert sysctl_file(home).read_text() == render_nonlocal_bind_sysctl("dev")
    assert kernel(home) == ON


@pytest.mark.parametrize("before", [OFF, {IPV4: "1", IPV6: "0"}], ids=["defaults", "ipv4-set-by-hand"])
def test_destroy_puts_back_the_values_from_before_mailgate(home, before):
    set_kernel(home, before)
    original = home.tree()
    assert home.apply().returncode == 0
    assert kernel(home) == ON
    result = home.destroy()
    assert result.returncode == 0, result.stderr
    assert kernel(home) == before
    assert not sysctl_file(home).exists()
    assert home.tree(without_state=False) == original


def test_a_failed_first_apply_puts_the_values_back(home):
    result = home.apply(fail_on="up -d")
    assert result.returncode == 1
    assert kernel(home) == OFF and not sysctl_file(home).exists()
    assert home.apply().returncode == 0 and kernel(home) == ON
    assert home.destroy().returncode == 0 and kernel(home) == OFF


def test_destroying_one_stack_keeps_the_keys_another_stack_still_sets(home, dev_raw):
    """Two stacks on one Mini PC (two Mailcow checkouts): the first destroyed leaves the
    keys on, because the other's file still sets them and will at every boot."""
    prod = second_stack(home, dev_raw)

    assert home.apply().returncode == 0
    result = home.apply(settings=prod)
    assert result.returncode == 0, result.stderr
    assert kernel(home) == ON

    result = home.destroy()  # dev, whose values from before were the defaults
    assert result.returncode == 0, result.stderr
    assert not sysctl_file(home).exists() and sysctl_file(home, prod).exists()
    assert kernel(home) == ON

    result = home.run(render_home_restore(prod, home.commands))
    assert result.returncode == 0, result.stderr
    assert not sysctl_file(home, prod).exists()
    # prod found the keys on (dev had set them) and kept dev's record of the values
    # from before mailgate instead.
    assert kernel(home) == OFF


def test_either_stack_may_be_destroyed_first(home, dev_raw):
    prod = second_stack(home, dev_raw)
    assert home.apply().returncode == 0 and home.apply(settings=prod).returncode == 0
    assert home.run(render_home_restore(prod, home.commands)).returncode == 0
    assert kernel(home) == ON  # dev's file still sets them
    assert home.destroy().returncode == 0
    assert kernel(home) == OFF

