"""One PASS/FAIL line of `lab check`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Result:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"
