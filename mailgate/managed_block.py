"""mailgate's marked block inside a file the user and Mailcow also edit (mailcow.conf,
extra.cf, extra.conf, docker-compose.override.yml).

mailgate owns only the lines between its markers; every other line stays as the host
has it. The block is spliced into the LIVE file on the host at every run (the awk
programs beside the scripts, `block.awk` and `compose.awk`, each behind `markers.awk`), so a Mailcow update or a
user's edit outside the block never conflicts with mailgate, and `destroy` takes out
only the block. The markers name the stack, so two stacks sharing a file never touch
each other's block.

Here: the marker lines and the block's text; the host side does the splicing.
"""

from __future__ import annotations

from pathlib import Path

AWK_DIR = Path(__file__).resolve().parent / "templates" / "scripts"
MARKERS_AWK = AWK_DIR / "markers.awk"
BLOCK_AWK = AWK_DIR / "block.awk"
COMPOSE_AWK = AWK_DIR / "compose.awk"


def marker_prefix(stack: str) -> str:
    """What a BEGIN line starts with (followed by the end of the line, ':' or a blank):
    the words after it may change between versions without orphaning a block."""
    return f"# BEGIN mailgate {stack}"


def markers(stack: str) -> tuple[str, str]:
    """The stack's BEGIN and END lines."""
    return (f"{marker_prefix(stack)}: written by pulumi up from the stack config; an edit "
            "inside this block stops the next up",
            f"# END mailgate {stack}")


def block_text(body: str, stack: str) -> str:
    """The block as it stands in a file: BEGIN line, body, END line."""
    begin, end = markers(stack)
    return f"{begin}\n{body.rstrip()}\n{end}\n"


def awk_variables(stack: str) -> dict[str, str]:
    """The `-v` assignments both awk programs take (none holds a quote or a backslash)."""
    begin, end = markers(stack)
    values = {"begin_prefix": marker_prefix(stack), "begin_line": begin, "end_line": end}
    for value in values.values():
        if any(c in value for c in "'\\\n"):
            raise ValueError(f"a marker may not hold a quote, a backslash or a newline: {value!r}")
    return values
