"""hyperlog: a hypercore-11-compatible, Merkle-verified, signed append-only log on SQLite."""

__all__: list[str] = []
