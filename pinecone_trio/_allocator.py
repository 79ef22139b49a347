"""Keep glibc's heap from shrinking and growing again for every large packet.

A node moving bulk data allocates and frees several buffers of about 62 KB per
packet (the session's plaintext and ciphertext, the packet with its header, the
link's batch of up to ~320 KB). glibc's malloc returns the free top of the heap to the
kernel once it exceeds its trim threshold (128 KiB), and the next packet's buffers
fault those pages back in: measured on the 1-hop session benchmark, about seven minor
page faults per 62.6 KB packet on each side, 15-25 % of the sender's CPU. Keeping
`pad` bytes at the top of the heap when trimming (`M_TOP_PAD`) ends the faults (0.1-0.3
per packet with 4 MiB, 0.7-1.2 with 2 MiB).

What it costs: each malloc arena keeps up to `pad` bytes of free memory instead of
returning it (glibc has one arena for the main thread and more for other threads
that allocate; an arena that never grew that large keeps less). Setting `M_TOP_PAD`
switches off glibc's dynamic mmap threshold, which would otherwise have settled at
the size of the link's batches; it is fixed at `MMAP_THRESHOLD` instead, so those
batches stay on the heap rather than being mapped and faulted in each time.

This is process-wide, so it is done once, by the first node, and only on glibc
(`NodeConfig.tune_allocator=False` leaves the allocator alone).
"""

from __future__ import annotations

import ctypes
import logging
import platform
import threading
from typing import Final

__all__ = ["DEFAULT_HEAP_PAD", "MMAP_THRESHOLD", "keep_heap_top"]

logger = logging.getLogger(__name__)

#: Bytes of free heap kept at the top instead of being returned to the kernel.
DEFAULT_HEAP_PAD: Final = 4 << 20
#: Allocations below this come from the heap, above it from their own mapping (glibc's
#: default is 128 KiB, raised dynamically up to 32 MiB unless, as here, a parameter is
#: set): above the link's largest batch (`WRITE_BATCH_BYTES` + one frame).
MMAP_THRESHOLD: Final = 1 << 20

# glibc's <malloc.h> parameter numbers.
_M_TOP_PAD: Final = -2
_M_MMAP_THRESHOLD: Final = -3

_lock = threading.Lock()
_done = False


def keep_heap_top(pad: int = DEFAULT_HEAP_PAD) -> bool:
    """Tune glibc's malloc for packet-sized buffers, once per process.

    Returns whether the parameters were set (now or by an earlier call); False where
    the C library is not glibc or refuses them.
    """
    global _done
    with _lock:
        if _done:
            return True
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TOP_PAD, pad) == 1
        if not ok:
            logger.debug("glibc refused the malloc parameters; left as they were")
            return False
        _done = True
        return True
