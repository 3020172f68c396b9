"""mailgate's marked block inside files the user also edits."""

from __future__ import annotations

import pytest

from mailgate.managed_block import BEGIN, END, merge_block, remove_block


def test_block_is_appended_then_replaced_in_place():
    user = "a = 1\nb = 2"  # no trailing newline
    once = merge_block(user, "x = 1")
    assert once == f"a = 1\nb = 2\n{BEGIN}\nx = 1\n{END}\n"
    edited = once + "c = 3\n"
    assert merge_block(edited, "x = 2") == f"a = 1\nb = 2\n{BEGIN}\nx = 2\n{END}\nc = 3\n"
    assert merge_block(merge_block(edited, "x = 2"), "x = 2") == merge_block(edited, "x = 2")


def test_remove_block_gives_back_the_users_text():
    user = "a = 1\n"
    assert remove_block(merge_block(user, "x = 1")) == user
    assert remove_block(user) == user


def test_a_damaged_block_is_refused():
    with pytest.raises(ValueError, match="without its END marker"):
        merge_block(f"{BEGIN}\nx = 1\n", "x = 2")
