"""Reproduce every value of vectors/hypercore.json (written by the real hypercore 11.37.1)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hyperlog import crypto, flat_tree
from hyperlog.crypto import TreeNode
from hyperlog.errors import DecodeError, InvalidSignatureError, NotWritableError
from hyperlog.merkle import MerkleTree
from hyperlog.proof import BlockRequest, ProofRequest, UpgradeRequest, create_proof, verify_proof
from tests.conftest import SHARED

VECTORS: dict[str, Any] = json.loads((SHARED / "vectors" / "hypercore.json").read_text())
SEED = bytes.fromhex(VECTORS["seed"])
BLOCKS = [b.encode() for b in VECTORS["blocks"]]


def _node(d: dict[str, Any]) -> TreeNode:
    return TreeNode(d["index"], d["size"], bytes.fromhex(d["hash"]))


def _build_tree() -> dict[int, TreeNode]:
    """Build every node of the 5-block tree from the leaf and parent hash rules alone."""
    nodes: dict[int, TreeNode] = {}
    for i, block in enumerate(BLOCKS):
        nodes[2 * i] = crypto.leaf_node(i, block)
    # parents bottom-up, only where both children exist
    for d in range(1, 4):
        for o in range(8):
            idx = flat_tree.index(d, o)
            kids = flat_tree.children(idx)
            assert kids is not None
            if kids[0] in nodes and kids[1] in nodes:
                nodes[idx] = crypto.parent_node(idx, nodes[kids[0]], nodes[kids[1]])
    return nodes


def test_key_pair_from_seed() -> None:
    kp = crypto.key_pair(SEED)
    assert kp.public_key.hex() == VECTORS["publicKey"]
    assert kp.secret_key is not None and kp.secret_key[:32] == SEED


@pytest.mark.parametrize(
    "name", ["TREE", "REPLICATE_INITIATOR", "REPLICATE_RESPONDER", "MANIFEST", "DEFAULT_NAMESPACE"]
)
def test_namespaces(name: str) -> None:
    ours = {
        "TREE": crypto.NS_TREE,
        "REPLICATE_INITIATOR": crypto.NS_REPLICATE_INITIATOR,
        "REPLICATE_RESPONDER": crypto.NS_REPLICATE_RESPONDER,
        "MANIFEST": crypto.NS_MANIFEST,
        "DEFAULT_NAMESPACE": crypto.DEFAULT_NAMESPACE,
    }[name]
    assert ours.hex() == VECTORS["namespaces"][name]


def test_every_node() -> None:
    built = _build_tree()
    expected = {n["index"]: _node(n) for n in VECTORS["nodes"]}
    assert built == expected


def test_roots_and_tree_hash() -> None:
    built = _build_tree()
    roots = flat_tree.full_roots(2 * len(BLOCKS))
    assert roots == VECTORS["roots"]
    assert crypto.tree_hash(built[r] for r in roots).hex() == VECTORS["treeHash"]


def test_discovery_key() -> None:
    # the vector's discovery key is of the compat key (= the public key)
    assert (
        crypto.discovery_key(bytes.fromhex(VECTORS["compat"]["key"])).hex()
        == (VECTORS["discoveryKey"])
    )


def test_compat_mode() -> None:
    kp = crypto.key_pair(SEED)
    v = crypto.Verifier.compat(kp.public_key)
    th = bytes.fromhex(VECTORS["treeHash"])
    assert v.key.hex() == VECTORS["compat"]["key"]
    assert v.is_compat
    assert v.signable(th, 5, 0).hex() == VECTORS["compat"]["signable"]
    assert crypto.compat_signable(th, 5, 0).hex() == VECTORS["compat"]["signable"]
    assert crypto.legacy_signable(th, 5, 0) == bytes.fromhex(VECTORS["compat"]["signable"])[32:]
    sig = v.sign(th, 5, 0, kp.secret_key)
    assert sig.hex() == VECTORS["compat"]["signature"]
    assert v.verify(th, 5, 0, sig)
    assert not v.verify(th, 5, 1, sig)
    assert not v.verify(th, 4, 0, sig)


def test_default_manifest_mode() -> None:
    kp = crypto.key_pair(SEED)
    vec = VECTORS["defaultManifestMode"]
    manifest = crypto.default_manifest(kp.public_key)
    assert manifest.encode().hex() == vec["manifest"]
    assert crypto.Manifest.decode(bytes.fromhex(vec["manifest"])) == manifest
    v = crypto.Verifier.from_manifest(manifest)
    assert v.key.hex() == vec["key"]
    assert not v.is_compat
    th = bytes.fromhex(VECTORS["treeHash"])
    assert v.signable(th, 5, 0).hex() == vec["signable"]
    assert crypto.tree_signable(v.key, th, 5, 0).hex() == vec["signable"]
    sig = v.sign(th, 5, 0, kp.secret_key)
    assert sig.hex() == vec["signature"]
    assert crypto.encode_multisig(sig).hex() == vec["signatureWrapped"]
    assert crypto.decode_multisig(bytes.fromhex(vec["signatureWrapped"])) == [(0, sig)]
    assert v.verify(th, 5, 0, sig)
    v.check(th, 5, 0, sig)
    with pytest.raises(InvalidSignatureError):
        v.check(th, 5, 1, sig)


def test_proof_block2_length5() -> None:
    built = _build_tree()
    p = VECTORS["proofBlock2Length5"]
    assert [_node(n) for n in p["blockNodes"]] == [built[6], built[1]]
    assert [_node(n) for n in p["upgradeNodes"]] == [built[8]]
    assert p["additionalNodes"] == []
    # and our engine builds exactly that proof, signed as hypercore signs it
    kp = crypto.key_pair(SEED)
    verifier = crypto.Verifier.from_manifest(crypto.default_manifest(kp.public_key))
    tree = MerkleTree()
    batch = tree.append(BLOCKS)
    batch.sign(verifier, kp.secret_key)
    tree.apply(batch)
    req = ProofRequest(0, block=BlockRequest(2, 0), upgrade=UpgradeRequest(0, 5))
    proof = create_proof(tree, req, built.get, value=BLOCKS[2])
    assert proof.block is not None and proof.upgrade is not None
    assert list(proof.block.nodes) == [_node(n) for n in p["blockNodes"]]
    assert list(proof.upgrade.nodes) == [_node(n) for n in p["upgradeNodes"]]
    assert proof.upgrade.additional_nodes == ()
    assert proof.upgrade.signature.hex() == VECTORS["defaultManifestMode"]["signature"]
    got = verify_proof(MerkleTree(), proof, verifier, built.get)
    assert got.tree_hash.hex() == VECTORS["treeHash"] and got.block == (2, b"hyper")


def test_for_key_accepts_matching_manifest_only() -> None:
    kp = crypto.key_pair(SEED)
    m = crypto.default_manifest(kp.public_key)
    v = crypto.Verifier.for_key(m.key(), m.encode())
    assert v.key == m.key()
    compat = crypto.Verifier.for_key(kp.public_key, crypto.compat_manifest(kp.public_key))
    assert compat.is_compat
    with pytest.raises(InvalidSignatureError):
        crypto.Verifier.for_key(bytes(32), m)


def test_sign_needs_matching_secret_key() -> None:
    kp = crypto.key_pair(SEED)
    other = crypto.key_pair(bytes(32))
    v = crypto.Verifier.from_manifest(crypto.default_manifest(kp.public_key))
    with pytest.raises(NotWritableError):
        v.sign(bytes(32), 1, 0, None)
    with pytest.raises(NotWritableError):
        v.sign(bytes(32), 1, 0, other.secret_key)


@pytest.mark.parametrize(
    "manifest",
    [
        crypto.Manifest(0, (crypto.ManifestSigner(b"\x01" * 32),)),
        crypto.Manifest(
            0,
            (crypto.ManifestSigner(b"\x01" * 32), crypto.ManifestSigner(b"\x02" * 32)),
            quorum=2,
            allow_patch=True,
        ),
        crypto.Manifest(0, (), quorum=0, prologue=crypto.Prologue(b"\x03" * 32, 0)),
        crypto.Manifest(
            1,
            (crypto.ManifestSigner(b"\x01" * 32),),
            allow_patch=True,
            prologue=crypto.Prologue(b"\x04" * 32, 300),
        ),
        crypto.Manifest(
            2,
            (crypto.ManifestSigner(b"\x01" * 32, b"\x05" * 32),),
            linked=(b"\x06" * 32,),
            user_data=b"hello",
        ),
    ],
)
def test_manifest_round_trip(manifest: crypto.Manifest) -> None:
    assert crypto.Manifest.decode(manifest.encode()) == manifest


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x04\x00\x00", b"\x01\x00\x01\x01\x01\x00", b"\x01\x00\x00\x01\x00\xff"],
)
def test_manifest_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(DecodeError):
        crypto.Manifest.decode(data)


def test_manifest_trailing_bytes_rejected() -> None:
    m = crypto.default_manifest(b"\x01" * 32).encode()
    with pytest.raises(DecodeError):
        crypto.Manifest.decode(m + b"\x00")


def test_for_key_refuses_non_canonical_manifest_bytes() -> None:
    kp = crypto.key_pair(SEED)
    m = crypto.default_manifest(kp.public_key)
    raw = bytearray(m.encode())
    raw[1] |= 0x10  # an unknown flag bit
    with pytest.raises(DecodeError):
        crypto.Manifest.decode(bytes(raw))
    # quorum 1 written as a 3-byte uint: decodes to the same manifest, hashes differently
    long_quorum = m.encode()[:3] + b"\xfd\x01\x00" + m.encode()[4:]
    assert crypto.Manifest.decode(long_quorum) == m
    with pytest.raises(InvalidSignatureError):
        crypto.Verifier.for_key(m.key(), long_quorum)
    compat = crypto.compat_manifest(kp.public_key).encode()
    assert crypto.Verifier.for_key(kp.public_key, compat).is_compat
    with pytest.raises(InvalidSignatureError):
        crypto.Verifier.for_key(kp.public_key, compat[:2] + b"\xfd\x01\x00" + compat[3:])
