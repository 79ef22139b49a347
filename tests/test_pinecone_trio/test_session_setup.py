"""Session setup: no timer on the path of a cold connect, and `close_session` ends a
session on both sides so the next connect runs a fresh handshake."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pinecone_trio.identity import Identity
from pinecone_trio.sessions import SessionManager, SessionStream
from pinecone_trio.sessions.testing import PathModel, open_memory_overlay

PROTO = "/test/echo/1"
ONE_WAY = 0.001  # virtual seconds per packet on the memory overlay


async def _echo(stream: SessionStream) -> None:
    try:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def test_cold_connect_takes_round_trips_not_timers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ia, ib = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    model = PathModel(delay=(ONE_WAY, ONE_WAY))
    async with open_memory_overlay(model, seed=0) as overlay, trio.open_nursery() as nursery:
        a = SessionManager(overlay.endpoint(ia.public_key), ia)
        b = SessionManager(overlay.endpoint(ib.public_key), ib)
        await nursery.start(a.run)
        await nursery.start(b.run)
        async with b.listen(PROTO) as listener:

            async def serve() -> None:
                while True:
                    nursery.start_soon(_echo, await listener.accept())

            nursery.start_soon(serve)
            for _ in range(3):  # sequential cold sessions, as a setup benchmark runs them
                start = trio.current_time()
                await a.wait_session(ib.public_key)
                # INITIATION, RESPONSE, then FINISH: established on sending it.
                assert trio.current_time() - start == pytest.approx(2 * ONE_WAY)
                await a.close_session(ib.public_key)
                await trio.sleep(0.01)

                start = trio.current_time()
                stream = await a.connect(ib.public_key, PROTO)
                # connect waits for the handshake only (the stream opens optimistically).
                assert trio.current_time() - start == pytest.approx(2 * ONE_WAY)
                await stream.send_all(b"!")
                assert await stream.receive_some(1) == b"!"
                # OPEN and the byte travel behind FINISH, the echo comes back: one more
                # round trip, no ACK delay, no retransmission timer.
                assert trio.current_time() - start == pytest.approx(4 * ONE_WAY)
                await stream.aclose()
                await a.close_session(ib.public_key)
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def test_close_session_ends_it_on_both_sides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ia, ib = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    async with open_memory_overlay(None, seed=0) as overlay, trio.open_nursery() as nursery:
        a = SessionManager(overlay.endpoint(ia.public_key), ia)
        b = SessionManager(overlay.endpoint(ib.public_key), ib)
        await nursery.start(a.run)
        await nursery.start(b.run)
        async with b.listen(PROTO) as listener:
            client = await a.connect(ib.public_key, PROTO)
            server = await listener.accept()
            first = a._by_address[ib.public_key].engine.handshake_hash
            await a.close_session(ib.public_key, "done here")
            with pytest.raises(trio.BrokenResourceError):
                await client.send_all(b"x")
            with pytest.raises(trio.BrokenResourceError) as info:
                await server.receive_some()
            assert "done here" in str(info.value.__cause__)
            assert a.statistics()["sessions"] == 0
            assert b.statistics()["sessions"] == 0
            # The next connect is a new session with a new handshake.
            again = await a.connect(ib.public_key, PROTO)
            server2 = await listener.accept()
            assert a._by_address[ib.public_key].engine.handshake_hash != first
            await again.send_all(b"hello")
            assert await server2.receive_some() == b"hello"
        await a.close_session(Identity.from_seed(b"\x09" * 32).public_key)  # no session: no-op
        nursery.cancel_scope.cancel()
