"""mailgate's marked block inside files the user and Mailcow also edit, spliced by the
host's own awk (the programs the home step runs)."""

from __future__ import annotations

import pytest

from mailgate.managed_block import block_text, markers
from tests.splice import Splicer

BEGIN, END = markers("dev")


@pytest.fixture
def host(tmp_path):
    return Splicer(tmp_path)


def test_block_is_appended_then_replaced_in_place(host):
    user = "a = 1\nb = 2"  # no trailing newline
    once = host.splice(user, block_text("x = 1", "dev"))
    assert once == f"a = 1\nb = 2\n{BEGIN}\nx = 1\n{END}\n"
    edited = "# Mailcow's own line\n" + once + "c = 3\n"  # lines added around the block
    twice = host.splice(edited, block_text("x = 2", "dev"))
    assert twice == f"# Mailcow's own line\na = 1\nb = 2\n{BEGIN}\nx = 2\n{END}\nc = 3\n"
    assert host.splice(twice, block_text("x = 2", "dev")) == twice


def test_a_file_that_does_not_exist_gets_the_block_alone(host):
    """What `render` shows for a shared file is what the host writes where there is none."""
    assert host.splice(None, block_text("x = 1", "dev")) == block_text("x = 1", "dev")
    assert host.splice("", block_text("x = 1", "dev")) == block_text("x = 1", "dev")


def test_remove_gives_back_the_text_around_the_block(host):
    user = "a = 1\n"
    with_block = host.splice(user, block_text("x = 1", "dev"))
    assert host.remove(with_block) == user
    assert host.remove(user) == user
    # Lines added before and after the block since (Mailcow's update.sh appends) stay.
    grown = "first = 0\n" + with_block + "ENABLE_IPV6=true\n"
    assert host.remove(grown) == "first = 0\na = 1\nENABLE_IPV6=true\n"


def test_regions_are_the_block_with_its_markers(host):
    text = host.splice("a = 1\n", block_text("x = 1\ny = 2", "dev"))
    assert host.regions(text) == block_text("x = 1\ny = 2", "dev")
    assert host.regions("a = 1\n") == ""


def test_a_block_written_by_an_older_wording_is_still_found(host):
    old = "a = 1\n# BEGIN mailgate dev: managed by pulumi, edits inside this block are overwritten\nx = 0\n# END mailgate dev\n"
    assert host.splice(old, block_text("x = 1", "dev")) == "a = 1\n" + block_text("x = 1", "dev")


def test_a_damaged_block_is_refused_and_nothing_usable_is_printed(host):
    result = host.call("block_splice", "extra.cf", host.file(block_text("x = 2", "dev")), host.file(f"{BEGIN}\nx = 1\n"))
    assert result.returncode == 3
    assert f'extra.cf: mailgate block has no line "{END}" after its BEGIN line' in result.stderr
    assert host.call("block_remove", "extra.cf", host.file(f"{BEGIN}\nx = 1\n")).returncode == 3


def test_two_stacks_keep_their_blocks_apart(tmp_path):
    # 'dev' is a prefix of 'dev-2': neither marker may be mistaken for the other.
    dev, dev2 = Splicer(tmp_path / "dev", "dev"), Splicer(tmp_path / "dev-2", "dev-2")
    both = dev2.splice(dev.splice("a = 1\n", block_text("x = dev", "dev")), block_text("x = dev-2", "dev-2"))
    updated = dev.splice(both, block_text("x = dev again", "dev"))
    assert "x = dev-2" in updated and "x = dev again" in updated and "x = dev\n" not in updated
    assert dev.remove(dev2.remove(updated)) == "a = 1\n"
    assert dev.remove(updated) == dev2.splice("a = 1\n", block_text("x = dev-2", "dev-2"))


def test_a_later_line_setting_a_key_of_the_block_is_reported_with_its_number(host):
    text = ("relayhost = [before]:587\n" + block_text("relayhost = [ours]:587\nsmtp_tls_security_level = encrypt", "dev")
            + "# relayhost = [a comment]:1\nrelayhost_extra = 1\n  smtp_tls_security_level=may\n")
    assert host.later(text, "relayhost smtp_tls_security_level") == "line 8:   smtp_tls_security_level=may\n"
    assert host.later(text, "relayhost") == ""
