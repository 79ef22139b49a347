"""The paged bitfield against a plain Python set, plus page persistence and big logs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperlog.bitfield import PAGE_BITS, PAGE_BYTES, Bitfield

# Indices cluster around page boundaries so the cross-page paths are exercised.
_index = st.one_of(
    st.integers(0, 200),
    st.integers(PAGE_BITS - 100, PAGE_BITS + 100),
    st.integers(3 * PAGE_BITS - 50, 3 * PAGE_BITS + 50),
)
_op = st.one_of(
    st.tuples(st.just("set"), _index, st.booleans()),
    st.tuples(st.just("range"), _index, st.integers(0, PAGE_BITS + 300), st.booleans()),
    st.tuples(st.just("clear_from"), _index),
)


def _apply(bf: Bitfield, model: set[int], op: tuple[object, ...]) -> None:
    if op[0] == "set":
        _, i, v = op
        assert isinstance(i, int) and isinstance(v, bool)
        changed = bf.set(i, v)
        assert changed == ((i in model) != v)
        (model.add if v else model.discard)(i)
    elif op[0] == "range":
        _, start, n, v = op
        assert isinstance(start, int) and isinstance(n, int) and isinstance(v, bool)
        bf.set_range(start, start + n, v)
        for i in range(start, start + n):
            (model.add if v else model.discard)(i)
    else:
        _, start = op
        assert isinstance(start, int)
        bf.clear_from(start)
        for i in [i for i in model if i >= start]:
            model.discard(i)


def _first_unset(model: set[int], start: int) -> int:
    i = start
    while i in model:
        i += 1
    return i


@given(st.lists(_op, max_size=25), st.lists(_index, min_size=1, max_size=5))
def test_bitfield_matches_set_model(ops: list[tuple[object, ...]], probes: list[int]) -> None:
    bf = Bitfield()
    model: set[int] = set()
    for op in ops:
        _apply(bf, model, op)
    assert list(bf) == sorted(model)
    assert bf.count() == len(model)
    assert bf.contiguous_length == _first_unset(model, 0)
    assert bf.last_set() == (max(model) if model else None)
    assert bf.is_prefix() == (model == set(range(len(model))))
    for p in probes:
        assert bf.get(p) == (p in model)
        assert bf.first_unset(p) == _first_unset(model, p)
        later = [i for i in model if i >= p]
        assert bf.first_set(p) == (min(later) if later else None)
        assert bf.count_range(p, p + 500) == len([i for i in model if p <= i < p + 500])
    runs = list(bf.runs())
    assert [i for a, b in runs for i in range(a, b)] == sorted(model)
    assert all(b < c for (_, b), (c, _) in itertools.pairwise(runs))
    top = (max(model) + 3) if model else 10
    holes = [i for a, b in bf.missing(0, top) for i in range(a, b)]
    assert holes == [i for i in range(top) if i not in model]


@given(st.lists(_op, max_size=20))
def test_dirty_pages_round_trip_through_storage(ops: list[tuple[object, ...]]) -> None:
    bf = Bitfield()
    model: set[int] = set()
    stored: dict[int, bytes] = {}
    for op in ops:
        _apply(bf, model, op)
        stored.update(bf.take_dirty())
    again = Bitfield()
    for page, data in stored.items():
        assert len(data) == PAGE_BYTES
        again.load_page(page, data)
    assert list(again) == sorted(model)
    assert again.contiguous_length == bf.contiguous_length
    assert bf.take_dirty() == {}


def test_page_layout_is_hypercores_lsb_first() -> None:
    bf = Bitfield()
    for i in (0, 3, 9, PAGE_BITS + 1):
        bf.set(i)
    pages = bf.take_dirty()
    assert pages[0][:2] == bytes([0b00001001, 0b00000010])
    assert pages[1][0] == 0b10


def test_load_page_rejects_wrong_size() -> None:
    with pytest.raises(ValueError, match="bytes"):
        Bitfield().load_page(0, b"\xff")
    with pytest.raises(ValueError):
        Bitfield().set(-1)
    with pytest.raises(ValueError):
        Bitfield().set_range(5, 4)


def test_millions_of_blocks_stay_cheap() -> None:
    bf = Bitfield()
    n = 5_000_000
    bf.set_range(0, n)
    assert bf.contiguous_length == n
    bf.set(n // 2, False)
    assert bf.contiguous_length == n // 2
    assert bf.first_unset(n // 2 + 1) == n
    assert bf.first_set(n // 2) == n // 2 + 1
    assert list(bf.runs()) == [(0, n // 2), (n // 2 + 1, n)]
    assert bf.count() == n - 1
    # A sparse reader of a huge log: two far-apart blocks use two pages.
    sparse = Bitfield()
    sparse.set(10**12)
    sparse.set(7)
    assert sparse.pages() == [0, 10**12 // PAGE_BITS]
    assert list(sparse.runs()) == [(7, 8), (10**12, 10**12 + 1)]
    assert sparse.first_set(8) == 10**12
