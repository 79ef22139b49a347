"""flat-tree index arithmetic: tables from the research notes plus brute-force properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperlog import flat_tree as ft

# (index, depth, offset, parent, sibling, children, spans)
TABLE = [
    (0, 0, 0, 1, 2, None, (0, 0)),
    (2, 0, 1, 1, 0, None, (2, 2)),
    (4, 0, 2, 5, 6, None, (4, 4)),
    (1, 1, 0, 3, 5, (0, 2), (0, 2)),
    (5, 1, 1, 3, 1, (4, 6), (4, 6)),
    (9, 1, 2, 11, 13, (8, 10), (8, 10)),
    (3, 2, 0, 7, 11, (1, 5), (0, 6)),
    (11, 2, 1, 7, 3, (9, 13), (8, 14)),
    (7, 3, 0, 15, 23, (3, 11), (0, 14)),
    (23, 3, 1, 15, 7, (19, 27), (16, 30)),
]


@pytest.mark.parametrize(("i", "d", "o", "par", "sib", "kids", "span"), TABLE)
def test_table(
    i: int,
    d: int,
    o: int,
    par: int,
    sib: int,
    kids: tuple[int, int] | None,
    span: tuple[int, int],
) -> None:
    assert ft.depth(i) == d
    assert ft.offset(i) == o
    assert ft.index(d, o) == i
    assert ft.parent(i) == par
    assert ft.sibling(i) == sib
    assert ft.children(i) == kids
    assert ft.left_child(i) == (kids[0] if kids else None)
    assert ft.right_child(i) == (kids[1] if kids else None)
    assert ft.spans(i) == span
    assert (ft.left_span(i), ft.right_span(i)) == span
    assert ft.count(i) == span[1] - span[0] + 1
    assert ft.count_leaves(i) == 2**d
    assert ft.uncle(i) == ft.sibling(par)


@pytest.mark.parametrize(
    ("length", "roots"),
    [
        (0, []),
        (1, [0]),
        (2, [1]),
        (3, [1, 4]),
        (4, [3]),
        (5, [3, 8]),
        (7, [3, 9, 12]),
        (8, [7]),
        (11, [7, 17, 20]),
    ],
)
def test_full_roots(length: int, roots: list[int]) -> None:
    assert ft.full_roots(2 * length) == roots


def test_full_roots_rejects_odd() -> None:
    with pytest.raises(ValueError):
        ft.full_roots(3)


def test_root_for_leaf() -> None:
    assert ft.root_for_leaf(4, 10) == 3
    assert ft.root_for_leaf(8, 10) == 8
    with pytest.raises(ValueError):
        ft.root_for_leaf(10, 10)


def _ref_depth(i: int) -> int:
    d = 0
    while i & 1:
        i >>= 1
        d += 1
    return d


@given(st.integers(min_value=0, max_value=2**70))
def test_properties(i: int) -> None:
    d = ft.depth(i)
    assert d == _ref_depth(i)
    o = ft.offset(i)
    assert ft.index(d, o) == i
    p = ft.parent(i)
    assert ft.depth(p) == d + 1
    kids = ft.children(p)
    assert kids is not None and i in kids
    assert ft.sibling(i) in kids and ft.sibling(i) != i
    assert ft.sibling(ft.sibling(i)) == i
    lo, hi = ft.spans(i)
    assert lo % 2 == 0 and hi % 2 == 0
    assert ft.contains(i, lo) and ft.contains(i, hi) and ft.contains(i, i)
    assert not ft.contains(i, hi + 1) and (lo == 0 or not ft.contains(i, lo - 1))
    assert (hi - lo) // 2 + 1 == ft.count_leaves(i)


@given(st.integers(min_value=0, max_value=2**64))
def test_full_roots_cover_exactly(length: int) -> None:
    roots = ft.full_roots(2 * length)
    assert len(roots) == bin(length).count("1")
    expected_left = 0
    for r in roots:
        lo, hi = ft.spans(r)
        assert lo == expected_left
        expected_left = hi + 2
    assert expected_left == 2 * length
