"""Value codecs: how user values become the bytes stored in a block.

A HAMT stores bytes. Pass a codec to `open_hamt` to store other values: `JSON`
(UTF-8 JSON text) or `MSGPACK`. A codec is any object with ``encode(value) ->
bytes`` and ``decode(bytes) -> value``.
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol, TypeVar, final

from .wire import pack_value, unpack_value

__all__ = ["BYTES", "JSON", "MSGPACK", "BytesCodec", "Codec", "JsonCodec", "MsgpackCodec"]

V = TypeVar("V")


class Codec(Protocol[V]):
    """Turns values of type V into bytes and back."""

    def encode(self, value: V, /) -> bytes: ...

    def decode(self, data: bytes, /) -> V: ...


@final
class BytesCodec:
    """The identity codec: values are `bytes` (the default)."""

    def encode(self, value: bytes, /) -> bytes:
        if type(value) is bytes:
            return value
        if not isinstance(value, bytearray | memoryview):
            raise TypeError(f"values are bytes, not {type(value).__name__} (pass a codec)")
        return bytes(value)

    def decode(self, data: bytes, /) -> bytes:
        return data


@final
class JsonCodec:
    """Values are JSON-serializable objects, stored as compact UTF-8 JSON."""

    def encode(self, value: Any, /) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def decode(self, data: bytes, /) -> Any:
        return json.loads(data)


@final
class MsgpackCodec:
    """Values are msgpack-serializable objects."""

    def encode(self, value: Any, /) -> bytes:
        return pack_value(value)

    def decode(self, data: bytes, /) -> Any:
        return unpack_value(data)


BYTES: Final = BytesCodec()
JSON: Final = JsonCodec()
MSGPACK: Final = MsgpackCodec()
