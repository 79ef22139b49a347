"""The public surface of pinecone_trio.link and pinecone_trio.transports."""

from __future__ import annotations

import pinecone_trio.link as link
import pinecone_trio.transports as transports


def test_link_exports() -> None:
    assert set(link.__all__) == {
        "HANDSHAKE_TIMEOUT",
        "LINK_PROTOCOL_VERSION",
        "MAX_HANDSHAKE_MESSAGE_SIZE",
        "MAX_MESSAGE_SIZE",
        "MAX_PLAINTEXT_SIZE",
        "PROTOCOL_NAME",
        "HandshakeResult",
        "LinkHandler",
        "LinkServerStatistics",
        "LinkStatistics",
        "NoiseCipher",
        "NoiseHandshake",
        "NoiseLink",
        "connect_link",
        "noise_nonce",
        "serve_links",
    }
    for name in link.__all__:
        assert hasattr(link, name), name


def test_transport_exports() -> None:
    assert set(transports.__all__) == {
        "TRANSPORTS",
        "Address",
        "Handler",
        "Transport",
        "WebSocketStream",
        "dial",
        "parse_uri",
        "serve",
    }
    assert set(transports.TRANSPORTS) == {"tcp", "ws", "memory"}


def test_sans_io_modules_do_not_import_trio() -> None:
    import ast
    from pathlib import Path

    root = Path(link.__file__).parent
    for name in ("handshake.py", "aead.py", "framing.py", "payload.py", "constants.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("trio") for a in node.names), name
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("trio"), name
