"""Fixtures shared by the hyperlog tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio


@pytest.fixture
def inline_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Virtual time that passes only where a test says: the storage work a `Log` sends
    to a worker thread runs inline instead (MockClock's autojump would race a thread).
    Use with ``pytestmark = pytest.mark.usefixtures("inline_storage")``."""

    async def inline(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)
