"""A marked block inside a file the user also edits (mailcow.conf, extra.cf, extra.conf).

mailgate owns only the lines between its markers; everything else stays as the user
wrote it. Merging again with the same block returns the same text (idempotent). The
markers name the stack, so two stacks sharing a file never touch each other's block.
"""

from __future__ import annotations


def markers(stack: str) -> tuple[str, str]:
    """The stack's BEGIN and END lines."""
    return (f"# BEGIN mailgate {stack}: managed by pulumi, edits inside this block are overwritten",
            f"# END mailgate {stack}")


def _line(text: str, line: str, start: int = 0) -> int:
    """Offset of `line` as a whole line of `text` at or after `start`, else -1."""
    at = start
    while (at := text.find(line, at)) >= 0:
        whole = (at == 0 or text[at - 1] == "\n") and text[at + len(line):at + len(line) + 1] in ("", "\n")
        if whole:
            return at
        at += 1
    return -1


def _span(text: str, stack: str) -> tuple[int, int] | None:
    """Start and end (after the END line's newline) of the stack's block, if any."""
    begin, end = markers(stack)
    start = _line(text, begin)
    if start < 0:
        return None
    stop = _line(text, end, start)
    if stop < 0:
        raise ValueError(f"found the mailgate {stack} BEGIN marker without its END marker")
    stop += len(end)
    return start, stop + 1 if text[stop:stop + 1] == "\n" else stop


def merge_block(existing: str | None, body: str, stack: str) -> str:
    """Put `body` between the stack's markers, replacing its earlier block in place."""
    begin, end = markers(stack)
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = existing or ""
    span = _span(text, stack)
    if span:
        return text[:span[0]] + block + text[span[1]:]
    if text and not text.endswith("\n"):
        text += "\n"
    return text + block


def remove_block(text: str, stack: str) -> str:
    """The text without the stack's block (what merge_block added to an empty file)."""
    span = _span(text, stack)
    return text if span is None else text[:span[0]] + text[span[1]:]
