"""Reads the ``mailgate:`` stack config through Pulumi and validates it in one go.

Every key in the namespace is handed to the models, so an unknown or misspelt key is an
error rather than silently ignored. Secrets never enter the models: they are returned
as secret Outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
from pulumi.runtime import config as runtime_config

from mailgate.config_report import ConfigError
from mailgate.settings import (
    ACME_CREDENTIALS, NAMESPACE, SECRET_KEYS, Settings, acme_credentials_problems, load_settings,
)


@dataclass(frozen=True)
class StackSecrets:
    relay_password: pulumi.Output[str]
    gateway_ssh_private_key: pulumi.Output[str] | None
    home_ssh_private_key: pulumi.Output[str] | None
    alerts_relay_password: pulumi.Output[str] | None
    alerts_webhook_url: pulumi.Output[str] | None
    banlist_id: pulumi.Output[str] | None
    acme_dns_credentials: pulumi.Output[dict] | None


def _decode(value: str) -> object:
    # Pulumi hands structured values over as JSON text and top-level strings as-is.
    try:
        return json.loads(value)
    except ValueError:
        return value


def raw_namespace_config() -> tuple[dict[str, object], set[str], list[str]]:
    values: dict[str, object] = {}
    secrets: set[str] = set()
    problems: list[str] = []
    prefix = NAMESPACE + ":"
    everything = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    for full_key, value in everything.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix):]
        if key in SECRET_KEYS:
            secrets.add(key)
            if not runtime_config.is_config_secret(full_key):
                problems.append(
                    f"{full_key}: stored in plain text; expected a secret, set it with "
                    f"`pulumi config set --secret {full_key} <value>`"
                )
            if key == ACME_CREDENTIALS:
                # Checked here, where the value is at hand; a problem never quotes it.
                problems.extend(acme_credentials_problems(_decode(value)))
        else:
            values[key] = _decode(value)
    return values, secrets, problems


def load_stack_settings() -> tuple[Settings, StackSecrets]:
    """Validate the whole stack config or stop the program with one readable message."""
    values, secrets, problems = raw_namespace_config()
    try:
        settings = load_settings(values, stack=pulumi.get_stack(), secrets_present=secrets,
                                 extra_problems=problems)
    except ConfigError as error:
        # RunError ends the program with its message only, no traceback.
        raise pulumi.RunError(error.report()) from None
    config = pulumi.Config(NAMESPACE)
    return settings, StackSecrets(
        relay_password=config.require_secret("relayPassword"),
        gateway_ssh_private_key=config.get_secret("gatewaySshPrivateKey"),
        home_ssh_private_key=config.get_secret("homeSshPrivateKey"),
        alerts_relay_password=config.get_secret("alertsRelayPassword"),
        alerts_webhook_url=config.get_secret("alertsWebhookUrl"),
        banlist_id=config.get_secret("banlistId"),
        acme_dns_credentials=config.get_secret_object(ACME_CREDENTIALS),
    )
