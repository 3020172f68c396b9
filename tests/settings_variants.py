"""Settings built from the example stack with a few keys changed, for renderer tests."""

from __future__ import annotations

import copy

from mailgate.catalogue import MAIL_SERVICE_NAMES
from mailgate.settings import Settings, load_settings


def variant(dev_raw: dict, **changes) -> Settings:
    """variant(dev_raw, services=[...], web={"enabled": True}, relay__port=465, gateway__ipv6=True)"""
    raw = copy.deepcopy(dev_raw)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    return load_settings(raw, stack="dev")


def everything(dev_raw: dict) -> Settings:
    return variant(dev_raw, services=list(MAIL_SERVICE_NAMES), web={"enabled": True}, gateway__ipv6=True)
