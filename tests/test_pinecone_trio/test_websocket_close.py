"""A dialled WebSocket whose reader task has ended does not wait for the close answer.

A node leaving with a ws:// peer it dialled spent `CLOSE_TIMEOUT` (the peering's 1 s)
in every such link's close: trio-websocket's `aclose` waits for the peer's close
frame, which only the connection's reader task reads, and that task is cancelled with
the node. Its end is now told to the stream (`_run_client`), and `aclose` sends the
close frame without waiting for an answer nobody would read.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pinecone_trio import Identity, open_node
from pinecone_trio.transports.websocket import WebSocketStream


class _Connection:
    """Stands in for a trio-websocket connection whose close waits for the answer."""

    def __init__(self) -> None:
        self.closing = False

    async def aclose(self) -> None:
        self.closing = True
        await trio.sleep_forever()  # the peer's close frame: read by the reader task


async def test_aclose_waits_for_the_answer_only_while_the_reader_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reading = WebSocketStream(_Connection())  # type: ignore[arg-type]
    start = trio.current_time()
    await reading.aclose()
    assert trio.current_time() - start > 1.0  # CLOSE_TIMEOUT: its reader might answer

    gone = WebSocketStream(_Connection())  # type: ignore[arg-type]
    gone._reader_ended()
    start = trio.current_time()
    await gone.aclose()
    assert trio.current_time() == start

    ending = WebSocketStream(_Connection())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ending.aclose)
        await trio.sleep(0.5)  # waiting for the answer, then the reader task ends
        ending._reader_ended()
    assert trio.current_time() - start == 0.5


async def test_a_node_that_dialled_a_ws_peer_tells_its_stream_the_reader_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Real sockets: the dialler's reader task is cancelled with the node, and the
    # stream hears of it. (Measured: a node with one dialled ws:// peer took 1.005 s to
    # leave before, 0.004 s after.)
    told: list[WebSocketStream] = []
    ended = WebSocketStream._reader_ended

    def record(stream: WebSocketStream) -> None:
        told.append(stream)
        ended(stream)

    monkeypatch.setattr(WebSocketStream, "_reader_ended", record)
    async with open_node(Identity.generate(), listen="ws://127.0.0.1:0/close") as b:
        async with open_node(Identity.generate()) as a:
            await a.connect(b.listen_uris[0])
            with trio.fail_after(10):
                await a.wait_for(lambda: any(a.snake_neighbours()))
            assert told == []
        assert len(told) == 1 and told[0].socket_stream is not None  # the dialled one
