"""A second review's finding: keys under a directory 8 or more levels deep share one path.

Eight 4-byte directory hashes fill the 32-byte trie path, so every key under such a
directory lands in one collision bucket: at most 4,096 of them. The path layout is
the stored format (it decides where every existing entry sits), so the limit stays;
before, the 4,097th put failed with a bare "collision bucket full" that named neither
the directory nor the cause. These tests pin the limit and the message.
"""

from __future__ import annotations

import pytest

import hamt
from hamt.constants import MAX_BUCKET_ENTRIES
from hamt.hashing import FULL_PATH_DIRS, full_path_directory
from hamt.index import load_hamt

from .helpers import constant_hash

DEEP = "home/user/src/proj/pkg/mod/sub/dir"  # 8 directory levels


def test_the_directories_that_fill_a_path() -> None:
    assert FULL_PATH_DIRS == 8
    assert full_path_directory(f"{DEEP}/a.txt") == DEEP
    assert full_path_directory(f"{DEEP}/deeper/still/a.txt") == DEEP
    assert full_path_directory("home/user/src/proj/pkg/mod/sub/a.txt") is None
    assert full_path_directory("a") is None


async def test_a_directory_8_levels_deep_holds_4096_keys_and_says_why() -> None:
    db = await load_hamt(hamt.MemoryLog())
    hasher = db._s.hasher
    assert hasher.path(f"{DEEP}/a") == hasher.path(f"{DEEP}/x/b")  # one path for all
    async with db.batch() as batch:
        for i in range(MAX_BUCKET_ENTRIES):
            batch.put(f"{DEEP}/file{i}", b"x")
    assert await db.get(f"{DEEP}/file4095") == b"x"
    await db.put(f"{DEEP}/file7", b"replaced")  # an existing key still takes a new value
    assert await db.get(f"{DEEP}/file7") == b"replaced"
    expected = (
        rf"collision bucket full: 4096 keys already have the path of '{DEEP}/x/new'.*"
        rf"directory '{DEEP}' \(8 levels deep\) fill the whole 32-byte path.*"
        r"at most 4096 keys fit under a directory 8 or more levels deep"
    )
    with pytest.raises(hamt.BatchTooLargeError, match=expected):
        await db.put(f"{DEEP}/x/new", b"x")
    assert await db.get(f"{DEEP}/x/new") is None


async def test_a_full_bucket_of_colliding_keys_does_not_blame_a_directory() -> None:
    db = await load_hamt(hamt.MemoryLog(), hash_function=constant_hash())
    async with db.batch() as batch:
        for i in range(MAX_BUCKET_ENTRIES):
            batch.put(f"k{i}", b"x")
    with pytest.raises(hamt.BatchTooLargeError) as info:
        await db.put("one/more", b"x")
    assert str(info.value) == (
        "collision bucket full: 4096 keys already have the path of 'one/more'"
    )
