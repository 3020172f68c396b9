"""A marked block inside a file the user also edits (mailcow.conf, extra.cf, extra.conf).

mailgate owns only the lines between its markers; everything else stays as the user
wrote it. Merging again with the same block returns the same text (idempotent).
"""

from __future__ import annotations

BEGIN = "# BEGIN mailgate: managed by pulumi, edits inside this block are overwritten"
END = "# END mailgate"


def merge_block(existing: str | None, body: str) -> str:
    """Put `body` between the markers, replacing an earlier mailgate block in place."""
    block = f"{BEGIN}\n{body.rstrip()}\n{END}\n"
    text = existing or ""
    start = text.find(BEGIN)
    if start >= 0:
        end = text.find(END, start)
        if end < 0:
            raise ValueError("found the mailgate BEGIN marker without its END marker")
        after = text[end + len(END):].removeprefix("\n")
        return text[:start] + block + after
    if text and not text.endswith("\n"):
        text += "\n"
    return text + block


def remove_block(text: str) -> str:
    """The text without mailgate's block (what merge_block added to an empty file)."""
    start = text.find(BEGIN)
    if start < 0:
        return text
    end = text.find(END, start)
    return text[:start] + text[end + len(END):].removeprefix("\n")
