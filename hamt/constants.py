"""Limits and format constants of the HAMT, one comment each.

Every size a block, a key or a value can have is bounded here; decoding checks
every limit before it trusts a byte (docs/hamt.md, "Limits").
"""

from __future__ import annotations

from typing import Final

#: Version of the block layouts in `wire.py`; a header with another version is refused.
FORMAT_VERSION: Final = 1
#: The protocol name stored in the header block (block 0), like hyperbee's "hyperbee".
PROTOCOL_NAME: Final = "hamt"

#: Bits of the key hash consumed per trie level: 4 bits = 16-way nodes, so a get
#: touches about log16(n) nodes (hypertrie reads 2 bits per level: log4(n)).
CHUNK_BITS: Final = 4
#: Children per node.
FANOUT: Final = 1 << CHUNK_BITS
#: Mask of one chunk.
CHUNK_MASK: Final = FANOUT - 1
#: Bytes of keyed BLAKE2b per path component. The last component of a key keeps all
#: of them; earlier ("directory") components keep `DIR_HASH_BYTES`, so keys under one
#: directory share a hash prefix (listing a prefix walks one subtree) without
#: making the shared part of every path 16 levels deep.
COMPONENT_HASH_BYTES: Final = 8
#: Bytes kept for a non-final path component.
DIR_HASH_BYTES: Final = 4
#: Width of a key's trie path in bytes: longer concatenations are cut, shorter ones
#: padded with zeros. Keys whose paths are equal end in one collision bucket, where
#: full keys are compared.
PATH_HASH_BYTES: Final = 32
#: Bits of a trie path.
PATH_BITS: Final = PATH_HASH_BYTES * 8
#: Trie levels: a node at this depth is a collision bucket (a list of full keys).
MAX_DEPTH: Final = PATH_BITS // CHUNK_BITS
#: Bytes of random salt in the header block (mixed into the hash key).
SALT_BYTES: Final = 16
#: Bytes of the derived BLAKE2b hash key.
HASH_KEY_BYTES: Final = 32

#: Largest key in UTF-8 bytes (hypertrie keys are paths; 1 KiB is plenty).
MAX_KEY_BYTES: Final = 1024
#: Largest value in bytes after the codec. Values live inline in blocks; a block must
#: stay below hyperlog's 8 MiB block limit even for a batch of large values.
MAX_VALUE_BYTES: Final = 1024 * 1024
#: Largest block this module writes or decodes (hyperlog's MAX_BLOCK_SIZE).
MAX_BLOCK_BYTES: Final = 8 * 1024 * 1024
#: Most operations in one batch (one block).
MAX_BATCH_OPS: Final = 65_536
#: Most entries a collision bucket may hold (keys whose whole path hash is equal).
MAX_BUCKET_ENTRIES: Final = 4096
#: Most nodes one block may carry (a batch of 65,536 keys rewrites fewer than this).
MAX_NODES_PER_BLOCK: Final = 1 << 20
#: Trie depth from which a writer does not keep nodes decoded between writes
#: (`mutate.Retained`): it keeps depths 0-3, at most 1 + 16 + 256 + 4,096 nodes
#: (~2 MB), the part every put rewrites or often passes; deeper nodes are copied
#: from their (cached) blocks when a write passes them.
RETAIN_DEPTH: Final = 4

#: Default LRU limits of decoded blocks: a count and the sum of their encoded sizes
#: (a decoded block takes about 10x its encoded size in memory: ~2.5 KB for a single
#: put's block). The defaults hold a 100,000-key HAMT built by single puts (~25 MB
#: encoded) or by batches (~14 MB).
DEFAULT_CACHE_BLOCKS: Final = 131_072
DEFAULT_CACHE_BYTES: Final = 32 * 1024 * 1024

#: Blocks at least this large (a batch's block: ~140 KB for 1,000 keys) are not
#: decoded when a get first reads them: the get walks the few nodes on its path in
#: the encoded bytes (`wire.LazyBlock`), since decoding and checking a whole batch
#: block (~2,000 nodes) costs milliseconds and a cold get needs one node of it.
LAZY_BLOCK_BYTES: Final = 16 * 1024
#: A block kept encoded is decoded in full once gets have read it this many times
#: (or at once, when anything but a get reads it): an often-read block then costs a
#: cached-tuple lookup per hop again, one that is read a few times never costs a full
#: decode. A full decode of a batch's block costs about as much as 16-27 reads in
#: place (~4 ms against 0.04-0.25 ms), so this is renting until buying would have been
#: cheaper; measured on a warm remote reader (200 gets, 100 batch blocks), 16 beat 2,
#: 4 and 8 on median, p90 and total time.
LAZY_PROMOTE_USES: Final = 16

#: Seconds a get waits for a path hint (`open_hamt(hints=...)`) before it reads its
#: blocks without one: a peer that never answers must not stall gets. The hint's
#: answer, if it comes later, is skipped by the client (`hints.MAX_ABANDONED_HINTS`).
#: A hint saves the round trips of a path (~4-5 levels); waiting for it much longer
#: than a few round trips never pays. It normally comes in ~2 ms on loopback.
HINT_TIMEOUT: Final = 2.0
