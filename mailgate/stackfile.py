"""Reads a Pulumi stack file (Pulumi.<stack>.yaml) into the raw ``mailgate:`` config.

This is how `python -m mailgate render` and the lab see the same config `pulumi up`
sees, without the Pulumi CLI. Encrypted values (`secure:`) are never decrypted here:
only their presence is reported, and renderers show placeholders instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mailgate.config_report import ConfigError
from mailgate.settings import NAMESPACE, SECRET_KEYS


@dataclass(frozen=True)
class StackConfig:
    values: dict[str, Any]
    """Plain ``mailgate:`` keys without the namespace, as written."""
    secrets_present: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    """Key-level mistakes (a secret in plain text), reported with the model's."""


def read_stack_file(path: Path) -> StackConfig:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file; expected a Pulumi stack file such as Pulumi.dev.yaml"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML: {error}"]) from None
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise ConfigError([f"{path}: expected a top-level 'config:' mapping, as in Pulumi.dev.yaml"])

    values: dict[str, Any] = {}
    secrets: set[str] = set()
    problems: list[str] = []
    prefix = NAMESPACE + ":"
    for full_key, value in document["config"].items():
        if not str(full_key).startswith(prefix):
            continue  # other providers' keys (oci:region, tailscale:tailnet, ...)
        key = str(full_key)[len(prefix):]
        is_secure = isinstance(value, dict) and set(value) == {"secure"}
        if key in SECRET_KEYS:
            if is_secure:
                secrets.add(key)
            else:
                problems.append(
                    f"{full_key}: stored in plain text; expected a secret, set it with "
                    f"`pulumi config set --secret {full_key} <value>`"
                )
        elif is_secure:
            problems.append(f"{full_key}: is a secret, but this key is not secret; set it in plain text")
        else:
            values[key] = value
    return StackConfig(values, secrets, problems)
