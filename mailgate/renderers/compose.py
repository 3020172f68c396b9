"""docker-compose.override.yml: publish the twin ports, merged into the user's own file.

Round-trip YAML keeps the user's services, comments and order. A user mapping for the
same container port (Mailcow's HAPROXY example publishes them on 127.0.0.1) is
replaced by mailgate's, since two mappings of one port cannot both bind.
"""

from __future__ import annotations

import io

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from mailgate.renderers.mailcow import container_port, published_twin_ports
from mailgate.settings import Settings

HEADER = "# Twin-port entries rendered by mailgate; `pulumi destroy` restores this file.\n"


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


def render_compose_override(settings: Settings, existing: str | None = None) -> str:
    yaml = _yaml()
    document = yaml.load(existing) if existing and existing.strip() else None
    if document is None:
        document = CommentedMap()
    if not isinstance(document, dict):
        raise ValueError("docker-compose.override.yml is not a YAML mapping; fix it by hand first")
    services = document.setdefault("services", CommentedMap())
    if services is None:
        services = document["services"] = CommentedMap()
    for container, mappings in published_twin_ports(settings).items():
        service = services.setdefault(container, CommentedMap())
        if service is None:
            service = services[container] = CommentedMap()
        ports = service.setdefault("ports", CommentedSeq())
        ours = {container_port(m) for m in mappings}
        kept = [p for p in ports if container_port(str(p)) not in ours or str(p) in mappings]
        for mapping in mappings:
            if mapping not in [str(p) for p in kept]:
                kept.append(mapping)
        ports[:] = kept
    out = io.StringIO()
    yaml.dump(document, out)
    text = out.getvalue()
    return text if existing and existing.strip() else HEADER + text
