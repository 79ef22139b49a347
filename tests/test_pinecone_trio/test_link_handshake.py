"""The sans-IO Noise XX handshake engine and the Noise-format AEAD helper (no trio)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinecone_trio.errors import (
    BadHandshake,
    DecryptionFailed,
    LinkError,
    LocalProtocolError,
    WrongRemoteKey,
)
from pinecone_trio.identity import Identity, PublicKey
from pinecone_trio.link import (
    MAX_HANDSHAKE_MESSAGE_SIZE,
    HandshakeResult,
    NoiseCipher,
    NoiseHandshake,
    noise_nonce,
)
from pinecone_trio.link.payload import PAYLOAD_TAG, decode_payload, static_key_signable

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(1, 33)))
MALLORY = Identity.from_seed(bytes(range(2, 34)))


def run_pair(
    initiator: NoiseHandshake, responder: NoiseHandshake
) -> tuple[HandshakeResult, HandshakeResult]:
    """Drive two engines to completion; return (initiator result, responder result)."""
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())
    return initiator.result, responder.result


def test_handshake_completes_and_keys_match() -> None:
    i = NoiseHandshake(ALICE, initiator=True, expected_key=BOB.public_key, capabilities={"a"})
    r = NoiseHandshake(BOB, initiator=False, capabilities=("b", "future-thing"))
    ri, rr = run_pair(i, r)
    assert i.complete and r.complete
    assert ri.remote_key == BOB.public_key and isinstance(ri.remote_key, PublicKey)
    assert rr.remote_key == ALICE.public_key
    assert ri.handshake_hash == rr.handshake_hash and len(ri.handshake_hash) == 64
    assert ri.send_key == rr.recv_key and ri.recv_key == rr.send_key
    assert ri.send_key != ri.recv_key
    assert ri.remote_capabilities == {"b", "future-thing"}
    assert rr.remote_capabilities == {"a"}
    assert ri.version == rr.version == 1
    assert ri.initiator and not rr.initiator


def test_each_handshake_is_fresh() -> None:
    r1, _ = run_pair(NoiseHandshake(ALICE, initiator=True), NoiseHandshake(BOB, initiator=False))
    r2, _ = run_pair(NoiseHandshake(ALICE, initiator=True), NoiseHandshake(BOB, initiator=False))
    assert r1.handshake_hash != r2.handshake_hash
    assert r1.send_key != r2.send_key


def test_transport_keys_interoperate_with_noiseprotocol() -> None:
    # Our direct AEAD must produce exactly what noiseprotocol's CipherState produces.
    i = NoiseHandshake(ALICE, initiator=True)
    r = NoiseHandshake(BOB, initiator=False)
    ri, rr = run_pair(i, r)
    noise = i._noise  # the engine's own noiseprotocol connection, now in transport mode
    ours = NoiseCipher(ri.send_key)
    theirs = NoiseCipher(rr.recv_key)
    for counter, message in enumerate([b"", b"x", b"hello" * 1000]):
        ct = noise.encrypt(message)
        assert ct == ours.encrypt(counter, b"", message)
        assert theirs.decrypt(counter, b"", ct) == message


def test_wrong_expected_key_is_refused_before_message_3() -> None:
    i = NoiseHandshake(ALICE, initiator=True, expected_key=BOB.public_key)
    r = NoiseHandshake(MALLORY, initiator=False)
    r.read_message(i.write_message())
    with pytest.raises(WrongRemoteKey) as info:
        i.read_message(r.write_message())
    assert info.value.remote_key == MALLORY.public_key
    assert info.value.expected_key == BOB.public_key
    with pytest.raises(LocalProtocolError):
        i.write_message()  # dead engine: never sends message 3


def test_responder_expected_key() -> None:
    i = NoiseHandshake(MALLORY, initiator=True)
    r = NoiseHandshake(BOB, initiator=False, expected_key=ALICE.public_key)
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    with pytest.raises(WrongRemoteKey):
        r.read_message(i.write_message())


def test_prologue_mismatch_fails() -> None:
    i = NoiseHandshake(ALICE, initiator=True, prologue=b"chat")
    r = NoiseHandshake(BOB, initiator=False, prologue=b"files")
    r.read_message(i.write_message())
    with pytest.raises(BadHandshake, match="message 2"):
        i.read_message(r.write_message())


@pytest.mark.parametrize("position", [0, 40, 100, -1])
def test_tampered_message_2_fails(position: int) -> None:
    i = NoiseHandshake(ALICE, initiator=True)
    r = NoiseHandshake(BOB, initiator=False)
    r.read_message(i.write_message())
    msg = bytearray(r.write_message())
    msg[position] ^= 0x01
    with pytest.raises(BadHandshake):
        i.read_message(msg)


def test_tampered_message_1_fails_at_initiator() -> None:
    i = NoiseHandshake(ALICE, initiator=True)
    r = NoiseHandshake(BOB, initiator=False)
    msg = bytearray(i.write_message())
    msg[5] ^= 0x80
    r.read_message(msg)  # undetectable here: message 1 is a bare ephemeral key
    with pytest.raises(BadHandshake, match="message 2"):
        i.read_message(r.write_message())


def test_tampered_message_3_fails() -> None:
    i = NoiseHandshake(ALICE, initiator=True)
    r = NoiseHandshake(BOB, initiator=False)
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    msg = bytearray(i.write_message())
    msg[-3] ^= 0x10
    with pytest.raises(BadHandshake, match="message 3"):
        r.read_message(msg)


def test_replayed_message_3_from_an_earlier_session_fails() -> None:
    i1 = NoiseHandshake(ALICE, initiator=True)
    r1 = NoiseHandshake(BOB, initiator=False)
    msg1 = i1.write_message()
    r1.read_message(msg1)
    i1.read_message(r1.write_message())
    recorded_msg3 = i1.write_message()
    r1.read_message(recorded_msg3)
    # An attacker replays the whole recorded initiator side to a new responder.
    r2 = NoiseHandshake(BOB, initiator=False)
    r2.read_message(msg1)
    r2.write_message()  # fresh responder ephemeral: the old message 3 cannot match it
    with pytest.raises(BadHandshake, match="message 3"):
        r2.read_message(recorded_msg3)


def test_replayed_message_2_fails() -> None:
    i1 = NoiseHandshake(ALICE, initiator=True)
    r1 = NoiseHandshake(BOB, initiator=False)
    r1.read_message(i1.write_message())
    recorded_msg2 = r1.write_message()
    i2 = NoiseHandshake(ALICE, initiator=True)
    i2.write_message()
    with pytest.raises(BadHandshake):
        i2.read_message(recorded_msg2)


def test_size_checks() -> None:
    r = NoiseHandshake(BOB, initiator=False)
    with pytest.raises(BadHandshake, match="must be 32 bytes"):
        r.read_message(b"\x00" * 33)
    r = NoiseHandshake(BOB, initiator=False)
    with pytest.raises(BadHandshake, match="limit"):
        r.read_message(b"\x00" * (MAX_HANDSHAKE_MESSAGE_SIZE + 1))
    i = NoiseHandshake(ALICE, initiator=True)
    i.write_message()
    with pytest.raises(BadHandshake, match="at least"):
        i.read_message(b"\x01" * 40)


def test_low_order_ephemeral_key_is_refused() -> None:
    i = NoiseHandshake(ALICE, initiator=True)
    i.write_message()
    r = NoiseHandshake(BOB, initiator=False)
    r.read_message(b"\x00" * 32)  # the all-zero point: accepted as bytes...
    with pytest.raises(BadHandshake, match="ephemeral key is invalid"):
        r.write_message()  # ...but the ee DH must not silently yield a zero secret


def test_out_of_turn_calls_are_local_errors() -> None:
    i = NoiseHandshake(ALICE, initiator=True)
    with pytest.raises(LocalProtocolError):
        i.read_message(b"\x00" * 32)
    r = NoiseHandshake(BOB, initiator=False)
    with pytest.raises(LocalProtocolError):
        r.write_message()
    with pytest.raises(LocalProtocolError):
        _ = r.result
    ri, _ = run_pair(i, r)
    with pytest.raises(LocalProtocolError):
        i.write_message()
    assert ri is i.result


def test_capability_limits() -> None:
    with pytest.raises(ValueError):
        NoiseHandshake(ALICE, initiator=True, capabilities={"x" * 65})
    with pytest.raises(ValueError):
        NoiseHandshake(ALICE, initiator=True, capabilities={str(n) for n in range(33)})
    with pytest.raises(ValueError):
        NoiseHandshake(ALICE, initiator=True, capabilities={""})


def test_payload_signature_must_cover_the_static_key() -> None:
    import msgpack

    static = b"\x07" * 32
    sig = ALICE.sign(static_key_signable(static))
    good = msgpack.packb([PAYLOAD_TAG, 1, bytes(ALICE.public_key), sig, ["a"], "future", 7])
    decoded = decode_payload(good, static)
    assert decoded.identity_key == ALICE.public_key and decoded.capabilities == {"a"}
    with pytest.raises(BadHandshake, match="did not sign"):
        decode_payload(good, b"\x08" * 32)
    # A signature without the domain prefix (e.g. one made for another purpose) fails.
    bare = msgpack.packb([PAYLOAD_TAG, 1, bytes(ALICE.public_key), ALICE.sign(static), []])
    with pytest.raises(BadHandshake):
        decode_payload(bare, static)
    for bad in (
        msgpack.packb([PAYLOAD_TAG, 0, bytes(ALICE.public_key), sig, []]),
        msgpack.packb([2, 1, bytes(ALICE.public_key), sig, []]),
        msgpack.packb([PAYLOAD_TAG, 1, bytes(31), sig, []]),
        msgpack.packb([PAYLOAD_TAG, 1, bytes(ALICE.public_key), sig[:63], []]),
        msgpack.packb([PAYLOAD_TAG, 1, bytes(ALICE.public_key), sig, [1]]),
        msgpack.packb([PAYLOAD_TAG, 1, bytes(ALICE.public_key), sig]),
        msgpack.packb({"tag": 1}),
        b"\xc1",
    ):
        with pytest.raises(BadHandshake):
            decode_payload(bad, static)


def test_noise_cipher_nonce_and_failures() -> None:
    assert noise_nonce(1) == b"\x00" * 4 + b"\x01" + b"\x00" * 7
    with pytest.raises(LocalProtocolError):
        noise_nonce(2**64 - 1)
    c = NoiseCipher(b"k" * 32)
    ct = c.encrypt(5, b"ad", b"data")
    assert c.decrypt(5, b"ad", ct) == b"data"
    for counter, ad, data in [(6, b"ad", ct), (5, b"", ct), (5, b"ad", ct[:-1] + b"\x00")]:
        with pytest.raises(DecryptionFailed):
            c.decrypt(counter, ad, data)
    with pytest.raises(DecryptionFailed):
        c.decrypt(0, b"", b"short")
    with pytest.raises(ValueError):
        NoiseCipher(b"short")


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=3), st.booleans())
def test_arbitrary_bytes_only_raise_link_errors(messages: list[bytes], initiator: bool) -> None:
    """Whatever a peer sends, the engine raises a LinkError subclass or carries on."""
    hs = NoiseHandshake(ALICE, initiator=initiator)
    for message in messages:
        if hs.complete:
            break
        try:
            if hs.writing:
                hs.write_message()
            hs.read_message(message)
        except LinkError:
            return
    # Random bytes can pass as message 1 (a bare key) but never authenticate later.
    assert not hs.complete
