"""The README cannot name a config key, a secret or a command option that does not exist."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import ROOT
from tests.readme_commands import commands, readme_problems

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_config_key_and_command_the_readme_names_exists():
    checked = [line for line in commands(README)
               if "pulumi config set" in line or "pulumi config get" in line or "-m mailgate" in line]
    assert len(checked) >= 30  # the Deploy section's lines are found at all
    assert readme_problems(README) == []


def test_a_misspelt_key_secret_or_option_is_caught():
    broken = {
        "pulumi config set --path 'mailgate:gateway.compartmentId'": "pulumi config set --path 'mailgate:gateway.compartmentID'",
        "pulumi config set --secret mailgate:relayPassword": "pulumi config set mailgate:relayPassword",
        "pulumi config set oci:fingerprint": "pulumi config set oci:fingerprints",
        "python -m mailgate render --config Pulumi.dev.yaml --out render": "python -m mailgate render --conf Pulumi.dev.yaml --out render",
        "pulumi config set --path 'mailgate:acme.dnsProvider' dns_cf": "pulumi config set 'mailgate:acme.dnsProvider' dns_cf",
        "venv/bin/python -m mailgate --help": "venv/bin/python -m mailgate --hlep",
        "pulumi config get --path mailgate:home.sshHostKey": "pulumi config get mailgate:home.sshHostKey",
        "pulumi config get mailgate:relayPassword >": "pulumi config get mailgate:relayPasword >",
    }
    for right, wrong in broken.items():
        assert right in README, right
        problems = readme_problems(README.replace(right, wrong, 1))
        assert len(problems) == 1, (wrong, problems)
        assert wrong.split()[0] in problems[0] or wrong[:30] in problems[0], problems


# The example stack's values that are the user's own, never a default to keep.
USER_VALUES = ("oci:tenancyOcid", "oci:userOcid", "oci:fingerprint", "oci:region", "tailscale:tailnet",
               "tailscale:oauthClientId", "mailgate:domain", "mailgate:mailHostname", "compartmentId",
               "sshPublicKeys", "sshHost", "sshUser", "sshHostKey", "tailnetIp", "mailcowDir", "username",
               "adminCidrs")


def test_the_example_stack_marks_every_value_a_user_must_replace():
    lines = (ROOT / "Pulumi.dev.yaml").read_text(encoding="utf-8").splitlines()
    for key in USER_VALUES:
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
        # On the key's line, or on the comment line right above it.
        marked = "# REPLACE" in lines[at] or lines[at - 1].strip().startswith("# REPLACE")
        assert marked, f"Pulumi.dev.yaml: {key} does not say where its real value comes from"


def test_the_readmes_key_generation_makes_keys_pulumi_can_use(tmp_path):
    lines = [line for line in commands(README) if line.startswith("ssh-keygen ")]
    assert len(lines) == 2
    (tmp_path / ".ssh").mkdir()
    for line in lines:
        made = subprocess.run(["sh", "-c", line], env={**os.environ, "HOME": str(tmp_path)},
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
    for name in ("mailgate_home", "mailgate_gateway"):
        key = tmp_path / ".ssh" / name
        # No passphrase: the public half comes out with an empty one.
        public = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(key)], capture_output=True, text=True)
        assert public.returncode == 0, public.stderr
        assert public.stdout.split()[:2] == (tmp_path / ".ssh" / f"{name}.pub").read_text().split()[:2]
