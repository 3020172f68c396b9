"""docker-compose.override.yml: publish the twin ports, in mailgate's marked blocks.

The user's override is spliced on the host, as it is at each run (compose.awk): this
renders what goes in. `render_compose_override` is the file as mailgate creates it where
there is none; `compose_entries` is one line per mapping for the host to place under
each service's `ports:` in an existing file.
"""

from __future__ import annotations

from mailgate.managed_block import block_text
from mailgate.settings import Settings

# The host program reads the entries split on this; no field may hold it.
ENTRY_SEPARATOR = "\t"


def twin_port_items(settings: Settings) -> list[tuple[str, int, str, str]]:
    """(Compose service, container port, mailcow.conf variable, list item) per enabled
    twin port. The item reads the variable that mailgate's mailcow.conf block sets; `:?`
    makes Compose refuse to start the service without it rather than publish elsewhere."""
    return [
        (s.container, s.home_port, s.mailcow_variable,
         f'- "${{{s.mailcow_variable}:?set by mailgate in mailcow.conf}}:{s.home_port}"')
        for s in settings.enabled_services if s.mailcow_variable
    ]


def render_compose_override(settings: Settings) -> str:
    """The override as mailgate writes it where the user has none (or one without
    `services:`)."""
    items: dict[str, list[str]] = {}
    for service, _port, _variable, item in twin_port_items(settings):
        items.setdefault(service, []).append(f"      {item}")
    lines = ["services:"]
    for service, service_items in items.items():
        lines += [f"  {service}:", "    ports:", *service_items]
    return block_text("\n".join(lines), settings.names.stack)


def compose_entries(settings: Settings) -> str:
    return "".join(ENTRY_SEPARATOR.join(map(str, item)) + "\n" for item in twin_port_items(settings))
