"""The lean noiseprotocol backend computes exactly what the default one does."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st
from noise.backends.default import noise_backend as default_backend
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseProtocolNameError

from pinecone_trio.link.constants import PROTOCOL_NAME
from pinecone_trio.link.noise_backend import LEAN_BACKEND, hkdf, hmac_blake2b


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_matches_the_standard_library(key: bytes, data: bytes) -> None:
    assert hmac_blake2b(key, data) == hmac.new(key, data, hashlib.blake2b).digest()


def test_hkdf_outputs_chain_as_noise_specifies() -> None:
    ck, ikm = b"c" * 64, b"i" * 32
    temp = hmac.new(ck, ikm, hashlib.blake2b).digest()
    one = hmac.new(temp, b"\x01", hashlib.blake2b).digest()
    two = hmac.new(temp, one + b"\x02", hashlib.blake2b).digest()
    three = hmac.new(temp, two + b"\x03", hashlib.blake2b).digest()
    assert hkdf(ck, ikm, 2) == (one, two)
    assert hkdf(ck, ikm, 3) == (one, two, three)


def _connection(backend: object, initiator: bool, prologue: bytes) -> NoiseConnection:
    noise = NoiseConnection.from_name(PROTOCOL_NAME, backend=backend)
    if initiator:
        noise.set_as_initiator()
    else:
        noise.set_as_responder()
    noise.set_keypair_from_private_bytes(Keypair.STATIC, (b"\x11" if initiator else b"\x22") * 32)
    noise.set_prologue(prologue)
    noise.start_handshake()
    return noise


@pytest.mark.parametrize("lean_initiates", [True, False])
def test_handshake_across_lean_and_default_backends(lean_initiates: bool) -> None:
    prologue = b"test prologue"
    initiator = _connection(LEAN_BACKEND if lean_initiates else default_backend, True, prologue)
    responder = _connection(default_backend if lean_initiates else LEAN_BACKEND, False, prologue)
    responder.read_message(initiator.write_message(b""))
    assert initiator.read_message(responder.write_message(b"from responder")) == (b"from responder")
    assert responder.read_message(initiator.write_message(b"from initiator")) == (b"from initiator")
    assert initiator.handshake_finished and responder.handshake_finished
    assert initiator.get_handshake_hash() == responder.get_handshake_hash()
    assert responder.decrypt(initiator.encrypt(b"ping")) == b"ping"
    assert initiator.decrypt(responder.encrypt(b"pong")) == b"pong"


def test_other_suites_are_not_offered() -> None:
    with pytest.raises(NoiseProtocolNameError):
        NoiseConnection.from_name(b"Noise_XX_25519_AESGCM_SHA256", backend=LEAN_BACKEND)


def _transcript(backend: object) -> list[bytes]:
    """All messages and the handshake hash of one handshake with fixed keys."""
    a = _connection(backend, True, b"p")
    b = _connection(backend, False, b"p")
    # Fixed ephemeral keys, set after start_handshake as NoiseHandshake sets its own.
    a.noise_protocol.handshake_state.e = a.noise_protocol.dh_fn.klass.from_private_bytes(
        b"\x33" * 32
    )
    b.noise_protocol.handshake_state.e = b.noise_protocol.dh_fn.klass.from_private_bytes(
        b"\x44" * 32
    )
    out = [bytes(a.write_message(b""))]
    b.read_message(out[-1])
    out.append(bytes(b.write_message(b"payload 2")))
    a.read_message(out[-1])
    out.append(bytes(a.write_message(b"payload 3")))
    b.read_message(out[-1])
    out.append(bytes(a.get_handshake_hash()))
    out.append(bytes(a.encrypt(b"transport")))
    return out


def test_same_keys_give_byte_identical_handshakes() -> None:
    assert _transcript(LEAN_BACKEND) == _transcript(default_backend)
