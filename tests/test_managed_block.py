"""mailgate's marked block inside files the user also edits."""

from __future__ import annotations

import pytest

from mailgate.managed_block import markers, merge_block, remove_block

BEGIN, END = markers("dev")


def test_block_is_appended_then_replaced_in_place():
    user = "a = 1\nb = 2"  # no trailing newline
    once = merge_block(user, "x = 1", "dev")
    assert once == f"a = 1\nb = 2\n{BEGIN}\nx = 1\n{END}\n"
    edited = once + "c = 3\n"
    assert merge_block(edited, "x = 2", "dev") == f"a = 1\nb = 2\n{BEGIN}\nx = 2\n{END}\nc = 3\n"
    assert merge_block(merge_block(edited, "x = 2", "dev"), "x = 2", "dev") == merge_block(edited, "x = 2", "dev")


def test_remove_block_gives_back_the_users_text():
    user = "a = 1\n"
    assert remove_block(merge_block(user, "x = 1", "dev"), "dev") == user
    assert remove_block(user, "dev") == user


def test_a_damaged_block_is_refused():
    with pytest.raises(ValueError, match="without its END marker"):
        merge_block(f"{BEGIN}\nx = 1\n", "x = 2", "dev")


def test_two_stacks_keep_their_blocks_apart():
    # 'dev' is a prefix of 'dev-2': neither marker may be mistaken for the other.
    both = merge_block(merge_block("a = 1\n", "x = dev", "dev"), "x = dev-2", "dev-2")
    updated = merge_block(both, "x = dev again", "dev")
    assert "x = dev-2" in updated and "x = dev again" in updated and "x = dev\n" not in updated
    assert remove_block(remove_block(updated, "dev-2"), "dev") == "a = 1\n"
    assert remove_block(updated, "dev") == merge_block("a = 1\n", "x = dev-2", "dev-2")
