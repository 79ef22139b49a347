"""hamt: a hash-array-mapped-trie key-value store built on a hyperlog."""

__all__: list[str] = []
