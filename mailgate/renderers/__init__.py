"""Pure renderers: settings in, file text out. One module per file mailgate lays down."""

from __future__ import annotations

from pathlib import Path

import jinja2

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def render_template(name: str, **context: object) -> str:
    return _ENVIRONMENT.get_template(name).render(**context)
