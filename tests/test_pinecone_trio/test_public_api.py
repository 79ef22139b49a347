"""The public surface of pinecone_trio: every exported name exists and is documented."""

from __future__ import annotations

import pinecone_trio


def test_every_export_exists() -> None:
    for name in pinecone_trio.__all__:
        assert hasattr(pinecone_trio, name), name


def test_core_entry_points_are_exported() -> None:
    for name in ("open_node", "Node", "Identity", "PublicKey", "NoiseLink", "SessionStream"):
        assert name in pinecone_trio.__all__
        assert getattr(pinecone_trio, name).__doc__, name
