"""What a check found, and the table and JSON the doctor prints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

OK, WARN, FAIL, SKIPPED = "ok", "warn", "FAIL", "skipped"


@dataclass(frozen=True)
class Finding:
    id: str
    title: str
    status: str
    saw: str
    fix: str = ""
    """For every status but ok: one line saying what to do (for skipped: how to run it)."""


def ok(id: str, title: str, saw: str) -> Finding:
    return Finding(id, title, OK, saw)


def warn(id: str, title: str, saw: str, fix: str) -> Finding:
    return Finding(id, title, WARN, saw, fix)


def fail(id: str, title: str, saw: str, fix: str) -> Finding:
    return Finding(id, title, FAIL, saw, fix)


def skipped(id: str, title: str, why: str, fix: str = "") -> Finding:
    return Finding(id, title, SKIPPED, why, fix)


def failed(findings: list[Finding]) -> int:
    return sum(f.status == FAIL for f in findings)


def as_json(findings: list[Finding]) -> str:
    return json.dumps({"checks": [asdict(f) for f in findings], "failed": failed(findings)}, indent=2)


def as_table(findings: list[Finding]) -> str:
    id_width = max(len(f.id) for f in findings)
    lines = []
    for f in findings:
        lines.append(f"{f.status:<7} {f.id:<{id_width}}  {f.title}: {f.saw}")
        if f.fix:
            lines.append(f"{'':<7} {'':<{id_width}}  -> {f.fix}")
    counts = {status: sum(f.status == status for f in findings) for status in (OK, WARN, FAIL, SKIPPED)}
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()))
    return "\n".join(lines) + "\n"
