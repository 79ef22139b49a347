"""Exception groups, unwrapped where a caller expects one exception.

A context manager that runs background tasks in a nursery around its caller's block
(`replicate`, `follow`) would hand the block's own exception back wrapped in an
`ExceptionGroup` (trio's strict groups): ``except BlockNotAvailableError`` around a
`log.get` inside the block would never match, and a Ctrl-C would end the program as a
`BaseExceptionGroup` traceback. `raise_body_alone` gives the block's exception back as
itself when nothing else failed, as `pinecone_trio.open_node` does.
"""

from __future__ import annotations

import trio

__all__ = ["leaves", "raise_body_alone", "single_failure"]


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every exception in `group` that is not itself a group, depth first."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(leaves(exc))
        else:
            found.append(exc)
    return found


def single_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in `group` that is not a cancellation, if there is exactly one
    (the failure that cancelled its siblings); None otherwise."""
    failures = [e for e in leaves(group) if not isinstance(e, trio.Cancelled)]
    return failures[0] if len(failures) == 1 else None


def raise_body_alone(group: BaseExceptionGroup[BaseException], body: BaseException | None) -> None:
    """Raise `body` (what the caller's block raised) as itself if the rest of `group` is
    only the cancellations it caused; otherwise return, and the caller re-raises the
    group (a background task failed as well: the group carries both)."""
    if body is None:
        return
    body_leaves = leaves(body) if isinstance(body, BaseExceptionGroup) else [body]
    for leaf in leaves(group):
        if not isinstance(leaf, trio.Cancelled) and not any(leaf is b for b in body_leaves):
            return
    # Raised here, inside the handler of `group`, it would take the group as its
    # context: keep the chain it was raised with (a `raise ... from cause` in the block).
    cause, context, suppress = body.__cause__, body.__context__, body.__suppress_context__
    try:
        raise body
    finally:
        body.__cause__, body.__context__ = cause, context
        body.__suppress_context__ = suppress
