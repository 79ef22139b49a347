"""Small helpers shared by the Trio shells."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from .errors import NodeCrashedError

#: The distribution the command-line tools report with `--version` (pyproject.toml).
DISTRIBUTION: Final = "pinecone-trio"


def installed_version() -> str:
    """The installed version of `DISTRIBUTION`, for the CLIs' `--version`."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "(not installed)"


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def single_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one non-cancellation exception in `group`, or None if there is not exactly one.

    Cancellations beside it are ignored (the failure cancelled its siblings).
    """
    failures = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
    return failures[0] if len(failures) == 1 else None


@asynccontextmanager
async def open_service_nursery(what: str) -> AsyncIterator[trio.Nursery]:
    """A nursery for a long-lived service, with one exception policy for its users.

    Background tasks handle their own expected failures (a peer that misbehaves ends
    its own peering, nothing more). When the block exits, everything still running is
    cancelled. Then, of what escaped:

    - cancellation (only `trio.Cancelled`) propagates unchanged, so outer cancel scopes
      work;
    - if the body raised and no background task failed, the body's exception propagates
      as itself, not wrapped in a group;
    - `KeyboardInterrupt` and `SystemExit` (from the body or a task) propagate as
      themselves;
    - any other background failure becomes `NodeCrashedError(what)` chained from the group.
    """
    body_exc: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                body_exc = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        body_leaves: list[BaseException] = []
        if isinstance(body_exc, BaseExceptionGroup):
            body_leaves = _leaves(body_exc)
        elif body_exc is not None:
            body_leaves = [body_exc]
        failures = [
            e
            for e in leaves
            if not any(e is b for b in body_leaves) and not isinstance(e, trio.Cancelled)
        ]
        if not failures:
            if body_exc is not None and not isinstance(body_exc, trio.Cancelled):
                # As itself, with the chain it was raised with (`raise ... from cause`
                # in the block), not the group it was handled in.
                cause, context = body_exc.__cause__, body_exc.__context__
                suppress = body_exc.__suppress_context__
                try:
                    raise body_exc
                finally:
                    body_exc.__cause__, body_exc.__context__ = cause, context
                    body_exc.__suppress_context__ = suppress
            raise
        if isinstance(body_exc, KeyboardInterrupt | SystemExit):
            raise body_exc from group  # Ctrl-C in the body wins over a crash it caused
        for failure in failures:
            if isinstance(failure, KeyboardInterrupt | SystemExit):
                raise failure from group
        raise NodeCrashedError(f"{what} crashed: {failures[0]!r}") from group


class ConflictDetector:
    """Raise `trio.BusyResourceError` when two tasks use one side of a stream at once.

    `with detector:` around the body of `send_all` (or `receive_some`), as Trio's own
    streams do; `held` says whether a task is inside.
    """

    __slots__ = ("_what", "held")

    def __init__(self, what: str) -> None:
        self._what = what
        self.held = False

    def __enter__(self) -> None:
        if self.held:
            raise trio.BusyResourceError(f"another task is already {self._what}")
        self.held = True

    def __exit__(self, *exc: object) -> None:
        self.held = False
