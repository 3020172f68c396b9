"""Turns validation failures into one readable report keyed by the user's config paths."""

from __future__ import annotations

import re
from typing import Callable

from pydantic import ValidationError


class ConfigError(Exception):
    """The stack config is invalid; `problems` holds one line per mistake."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.problems)
        head = f"mailgate: the stack config has {count} problem{'s' if count != 1 else ''}:"
        return "\n".join([head, *(f"  - {line}" for line in self.problems)])


def key_path(namespace: str, location: tuple[int | str, ...]) -> str:
    """('gateway', 'adminCidrs', 1) -> 'mailgate:gateway.adminCidrs[1]'."""
    text = f"{namespace}:"
    for index, part in enumerate(location):
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += part if index == 0 else f".{part}"
    return text


_SNAKE = re.compile(r"_([a-z0-9])")
_EXPECTATIONS = {
    "missing": "missing; this key is required",
    "extra_forbidden": "unknown key; check the spelling against the README's configuration table",
}


def problems_from_validation_error(
    error: ValidationError, namespace: str,
    missing_hints: dict[tuple[str, ...], Callable[[dict], str]] | None = None,
) -> list[str]:
    """`missing_hints`: for a required key (its location), what to say when it is missing,
    from the object that lacks it (e.g. a command built from its other keys)."""
    problems = []
    for item in error.errors(include_url=False):
        # Validator internals such as 'function-after[...]' are not keys the user typed.
        location = tuple(p for p in item["loc"] if isinstance(p, int) or p.isidentifier())
        if item["type"] != "extra_forbidden":
            # A key validated at its default is named by its field, not by the key users type.
            location = tuple(p if isinstance(p, int) else _SNAKE.sub(lambda m: m[1].upper(), p) for p in location)
        hint = (missing_hints or {}).get(location) if item["type"] == "missing" else None
        message = (hint(item["input"] if isinstance(item["input"], dict) else {}) if hint
                   else _EXPECTATIONS.get(item["type"]) or item["msg"].removeprefix("Value error, "))
        if item["type"].endswith(("_type", "_parsing")):
            got = repr(item["input"])
            message += f" (got {got if len(got) <= 60 else got[:57] + '...'})"
        problems.append(f"{key_path(namespace, location)}: {message}")
    return problems
