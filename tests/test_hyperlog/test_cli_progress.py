"""The `clone` progress bar: honest when there is no total to show a percentage of.

Before the fix a live clone (no total) and a clone with nothing to fetch both drew a
full bar, "100.0% 0/0 blocks".
"""

from __future__ import annotations

import io

from hyperlog.cli_clone_state import _Bar
from hyperlog.replication import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _draw(total: int | None, p: Progress) -> str:
    out = _Terminal()
    _Bar(out, total)(p, final=True)
    return out.getvalue()


def test_a_live_clone_shows_counts_not_a_percentage() -> None:
    line = _draw(None, Progress(blocks=7, bytes=700, missing=3))
    assert "%" not in line and "0/0" not in line
    assert "7 blocks fetched" in line and "3 to go" in line
    assert "up to date" in _draw(None, Progress(blocks=7, bytes=700, missing=0))


def test_nothing_to_fetch_is_not_a_full_bar() -> None:
    line = _draw(0, Progress(blocks=0, bytes=0, missing=0))
    assert "%" not in line and "nothing to fetch" in line


def test_a_known_total_still_shows_a_bar() -> None:
    line = _draw(10, Progress(blocks=4, bytes=400, missing=6))
    assert " 40.0% 4/10 blocks" in line


def test_no_terminal_no_bar() -> None:
    out = io.StringIO()
    _Bar(out, None)(Progress(blocks=1, bytes=1, missing=0), final=True)
    assert out.getvalue() == ""
