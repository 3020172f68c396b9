"""The host's block programs (home-blocks.sh.j2 with block.awk and compose.awk), run
here with the host's own sh and awk on files in a temporary directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mailgate.renderers import render_template
from mailgate.renderers.compose import compose_entries, render_compose_override
from mailgate.renderers.remote_scripts import splice_context


class Splicer:
    def __init__(self, tmp: Path, stack: str = "dev"):
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.prelude = render_template("scripts/home-blocks.sh.j2", **splice_context(stack))
        self.count = 0

    def file(self, text: str | None) -> str:
        """A path holding `text` (None: a file that does not exist, as the host reads it)."""
        if text is None:
            return "/dev/null"
        self.count += 1
        path = self.tmp / f"input-{self.count}"
        path.write_text(text)
        return str(path)

    def call(self, function: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", f'{self.prelude}\n"$@"', "sh", function, *args],
                              capture_output=True, text=True, timeout=30)

    def ok(self, function: str, *args: str) -> str:
        result = self.call(function, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def splice(self, live: str | None, block: str) -> str:
        return self.ok("block_splice", "extra.cf", self.file(block), self.file(live))

    def remove(self, live: str) -> str:
        return self.ok("block_remove", "extra.cf", self.file(live))

    def regions(self, live: str) -> str:
        return self.ok("block_regions", "extra.cf", self.file(live))

    def later(self, live: str, keys: str) -> str:
        return self.ok("block_later", "extra.cf", self.file(live), keys)

    def compose(self, settings, live: str | None) -> subprocess.CompletedProcess:
        return self.call("compose_splice", "docker-compose.override.yml", self.file(compose_entries(settings)),
                         self.file(render_compose_override(settings)), self.file(live))
