"""`python -m mailgate render` and `docs`, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from mailgate import docs
from tests.conftest import DEV_STACK, ROOT


def mailgate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailgate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_render_writes_the_tree_and_prints_the_summary(tmp_path):
    out = tmp_path / "r"
    result = mailgate("render", "--config", str(DEV_STACK), "--out", str(out),
                      "--gateway-tailnet-ip", "100.100.1.1", "--public-ipv4", "203.0.113.10")
    assert result.returncode == 0, result.stderr
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files - {".mailgate-render"} == {
        "gateway/cloud-init/user-data.yaml",
        "gateway/etc/nginx/modules-enabled/70-mailgate-stream.conf",
        "gateway/etc/nginx/conf.d/70-mailgate-http.conf",
        "gateway/etc/iptables/mailgate.rules.v4",
        "gateway/usr/local/lib/mailgate/dev/watch.py",
        "gateway/etc/mailgate/dev/watch.json",
        "gateway/etc/systemd/system/mailgate-dev-watch.service",
        "gateway/etc/systemd/system/mailgate-dev-watch.timer",
        "gateway/usr/local/lib/mailgate/dev/banlist.py",
        "gateway/etc/mailgate/dev/bans.json",
        "gateway/etc/systemd/system/mailgate-dev-bans.service",
        "gateway/etc/systemd/system/mailgate-dev-bans.timer",
        "home/opt/mailcow-dockerized/docker-compose.override.yml",
        "home/opt/mailcow-dockerized/mailcow.conf",
        "home/opt/mailcow-dockerized/data/conf/dovecot/extra.conf",
        "home/opt/mailcow-dockerized/data/conf/postfix/extra.cf",
        "home/opt/mailcow-dockerized/data/conf/acme/dns-01.conf",
        "home/opt/mailcow-dockerized/data/conf/postfix/mailgate_relay_passwd",
        "home/etc/mailgate/dev/home-firewall.rules",
        "home/etc/mailgate/dev/home-firewall.rules.v6",
        "home/etc/systemd/system/docker.service.d/mailgate-dev-after-tailscaled.conf",
        "home/etc/sysctl.d/60-mailgate-dev-nonlocal-bind.conf",
        "home/usr/local/lib/mailgate/dev/watch.py",
        "home/etc/mailgate/dev/watch.json",
        "home/etc/systemd/system/mailgate-dev-watch.service",
        "home/etc/systemd/system/mailgate-dev-watch.timer",
        "publish/dns-records.txt",
        "publish/tailscale-policy.hujson",
    }
    assert "haproxy_trusted_networks = 100.100.1.1/32" in (
        out / "home/opt/mailcow-dockerized/data/conf/dovecot/extra.conf").read_text()
    assert "mail.example.com" in result.stdout and "203.0.113.10" in result.stdout
    assert "smtp            25 -> 100.64.0.2:10025  PROXY idle 600s" in result.stdout
    # Secret files are placeholders and readable by their owner only.
    password_map = out / "home/opt/mailcow-dockerized/data/conf/postfix/mailgate_relay_passwd"
    assert "<relay password" in password_map.read_text()
    assert oct(password_map.stat().st_mode & 0o777) == "0o640"
    assert oct((out / "gateway/cloud-init/user-data.yaml").stat().st_mode & 0o777) == "0o600"
    for end in ("gateway", "home"):
        assert oct((out / end / "etc/mailgate/dev/watch.json").stat().st_mode & 0o777) == "0o600"
    assert oct((out / "gateway/etc/mailgate/dev/bans.json").stat().st_mode & 0o777) == "0o600"


def test_render_is_repeatable(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        assert mailgate("render", "--out", str(out)).returncode == 0
    for path in first.rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (second / path.relative_to(first)).read_bytes(), path


def bad_stack(tmp_path: Path) -> Path:
    document = yaml.safe_load(DEV_STACK.read_text())
    config = document["config"]
    config["mailgate:gateway"]["adminCidrs"][1] = "0.0.0.0/0"
    config["mailgate:gateway"]["subnetCidr"] = "10.9.0.0/24"
    config["mailgate:home"]["tailnetIp"] = "192.168.1.4"
    config["mailgate:relay"]["port"] = 2526
    config["mailgate:services"].append("pop4")
    config["mailgate:relayPassword"] = "typed-in-plain-text"
    config["mailgate:tailscale"]["gatewayTag"] = "mailgw"
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_config_with_several_mistakes_lists_them_all_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    result = mailgate("render", "--config", str(bad_stack(tmp_path)), "--out", str(out))
    assert result.returncode == 2
    assert not out.exists()
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "mailgate: the stack config has 7 problems:"
    keys = [line.split(": ", 1)[0].strip(" -") for line in lines[1:]]
    assert keys == [
        "mailgate:relayPassword", "mailgate:gateway.adminCidrs[1]", "mailgate:gateway.subnetCidr",
        "mailgate:home.tailnetIp", "mailgate:services[6]", "mailgate:relay.port",
        "mailgate:tailscale.gatewayTag",
    ]


def test_missing_or_broken_stack_file_is_one_clear_line(tmp_path):
    result = mailgate("render", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr
    broken = tmp_path / "Pulumi.x.yaml"
    broken.write_text("config: [unclosed\n")
    result = mailgate("render", "--config", str(broken), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_render_options_are_checked():
    result = mailgate("render", "--out", "/tmp/x", "--gateway-tailnet-ip", "192.168.0.1")
    assert result.returncode == 2 and "outside Tailscale's 100.64.0.0/10" in result.stderr


def test_readme_table_and_pulumi_yaml_match_the_models():
    assert docs.stale(ROOT) == [], "run `python -m mailgate docs --write`"
    assert mailgate("docs").returncode == 0


def test_pulumi_yaml_declares_every_top_level_key_with_the_models_defaults():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}}
    config = project["config"]
    assert config["services"]["default"] == ["smtp", "submissions", "submission", "imap", "imaps", "managesieve"]
    assert config["relayPassword"]["secret"] is True
    assert {"domain", "mailHostname", "gateway", "home", "relay", "tailscale", "web"} <= set(config)


def test_every_key_of_the_example_stack_is_documented():
    table = (ROOT / "README.md").read_text()
    config = yaml.safe_load(DEV_STACK.read_text())["config"]
    for key, value in config.items():
        if not key.startswith("mailgate:"):
            continue
        assert f"`{key}`" in table, key
        for sub in value if isinstance(value, dict) else {}:
            assert f"`{key}.{sub}`" in table, f"{key}.{sub}"


def test_render_refuses_a_foreign_directory_and_tidies_its_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    result = mailgate("render", "--out", str(foreign))
    assert result.returncode == 2 and "not made by `mailgate render`" in result.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "r"
    stack = yaml.safe_load(DEV_STACK.read_text())
    stack["config"]["mailgate:gateway"]["ipv6"] = True
    ipv6_stack = tmp_path / "Pulumi.v6.yaml"
    ipv6_stack.write_text(yaml.safe_dump(stack))
    assert mailgate("render", "--config", str(ipv6_stack), "--out", str(out)).returncode == 0
    assert (out / "gateway/etc/iptables/mailgate.rules.v6").exists()
    assert mailgate("render", "--out", str(out)).returncode == 0
    assert not (out / "gateway/etc/iptables/mailgate.rules.v6").exists()
