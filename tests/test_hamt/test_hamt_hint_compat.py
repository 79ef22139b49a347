"""A new hint client and a hint server from before proofs (hint requests of exactly five
elements, anything else closes the connection) must keep talking: the client asks for
proofs only from a server that said it gives them."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import hamt
from hamt.hints import PathHintClient, _frame, _Framer, _next, serve_path_hints
from hamt.wire import HintReply, HintRequest, decode_hint, encode_hint
from hyperlog.log import open_store


async def old_serve_path_hints(
    stream: trio.abc.Stream,
    db: hamt.Hamt[Any],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The server as it was before proofs: a request with a fork is a bad message,
    which ends the exchange and closes the stream; replies never carry proofs."""
    framer = _Framer()
    task_status.started()
    async with stream:
        while (frame := await _next(stream, framer)) is not None:
            msg = decode_hint(frame)
            if not isinstance(msg, HintRequest) or msg.fork is not None:
                return  # the old decode_hint raised CorruptNodeError here
            version = db.version
            if 0 < msg.version < version:
                version = msg.version
            try:
                blocks = await db.checkout(version).path_hint(msg.key) if version > 1 else []
            except hamt.InvalidKeyError:
                blocks = []
            await stream.send_all(_frame(encode_hint(HintReply(msg.id, version, blocks))))


async def test_new_client_keeps_its_connection_to_an_old_server() -> None:
    with trio.fail_after(15):
        async with open_store() as ws:
            wlog = await ws.create_log()
            async with hamt.open_hamt(wlog) as writer, trio.open_nursery() as nursery:
                for i in range(50):
                    await writer.put(f"k{i}", b"v")
                a, b = trio.testing.memory_stream_pair()
                await nursery.start(old_serve_path_hints, a, writer)
                client = PathHintClient(b)
                # A reader whose log verifies proofs asks with its fork: the old server
                # must still answer (without proofs), and keep answering.
                for key in ("k7", "k7", "k8"):
                    reply = await client.path_hint(key, wlog.length, wlog.fork)
                    assert reply.proofs == ()
                    assert reply.blocks == await writer.path_hint(key)
                await b.aclose()


async def test_new_server_still_gives_proofs_to_a_new_client() -> None:
    with trio.fail_after(15):
        async with open_store() as ws:
            wlog = await ws.create_log()
            async with hamt.open_hamt(wlog) as writer, trio.open_nursery() as nursery:
                for i in range(50):
                    await writer.put(f"k{i}", b"v")
                a, b = trio.testing.memory_stream_pair()
                await nursery.start(serve_path_hints, a, writer)
                client = PathHintClient(b)
                for _ in range(2):
                    reply = await client.path_hint("k7", wlog.length, wlog.fork)
                    assert reply.blocks == await writer.path_hint("k7")
                    assert {p.index for p in reply.proofs} == set(reply.blocks)
                await b.aclose()


async def test_an_old_client_never_sees_a_proof_field() -> None:
    # Old clients send five-element requests for valid keys and accept only
    # five-element replies: the new server must answer them in that shape.
    with trio.fail_after(15):
        async with open_store() as ws:
            wlog = await ws.create_log()
            async with hamt.open_hamt(wlog) as writer, trio.open_nursery() as nursery:
                await writer.put("k", b"v")
                a, b = trio.testing.memory_stream_pair()
                await nursery.start(serve_path_hints, a, writer)
                await b.send_all(_frame(encode_hint(HintRequest(1, "k", 0))))
                frame = await _next(b, _Framer(1 << 20))
                assert frame is not None
                reply = decode_hint(frame)
                assert isinstance(reply, HintReply)
                assert not reply.offers_proofs
                assert encode_hint(HintReply(reply.id, reply.version, reply.blocks)) == frame
                await b.aclose()


async def test_a_server_that_cannot_prove_is_asked_without_a_fork() -> None:
    with trio.fail_after(15):
        async with hamt.open_hamt(hamt.MemoryLog()) as writer, trio.open_nursery() as nursery:
            for i in range(20):
                await writer.put(f"k{i}", b"v")
            a, b = trio.testing.memory_stream_pair()
            await nursery.start(serve_path_hints, a, writer)
            client = PathHintClient(b)
            for _ in range(2):
                reply = await client.path_hint("k3", writer.version, 0)
                assert reply.blocks == await writer.path_hint("k3")
                assert not reply.offers_proofs
            await b.aclose()
