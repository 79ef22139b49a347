"""`RouterStateBase`: every field of the router engine, initialised in one place.

`RouterState` (state.py) is assembled from one mixin per subject (state_tree.py,
state_snake.py, state_traffic.py), each a subclass of `RouterStateBase`: the fields
(and `__slots__`) live here, so each part sees all of them with their types, and the
few methods one part calls in another are declared here for the type checker only
(they add nothing at run time). Only `__init__` runs here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import LocalProtocolError
from .constants import KEY_SIZE
from .forward import KeyIndex
from .signer import NullSigner, Signer
from .snake import SnakeTable
from .state_config import RouterConfig, RouterStatistics
from .tree import Peer
from .wire import Announcement, Coords

if TYPE_CHECKING:
    from .actions import Action
    from .wire import Bootstrap


class RouterStateBase:
    """The state of one router; see `RouterState` (state.py) for what it does."""

    __slots__ = (
        "_bootstrap_due",
        "_bootstrap_seq",
        "_bootstrap_target",
        "_cfg",
        "_coords",
        "_coords_cache",
        "_descending",
        "_ev_coords",
        "_ev_parent",
        "_ev_root",
        "_index",
        "_index_dirty",
        "_key",
        "_last_bootstrap",
        "_next_cache_sweep",
        "_next_maintain",
        "_next_root_announce",
        "_now",
        "_ordering",
        "_parent",
        "_peer_list",
        "_peers",
        "_root_ann",
        "_sequence",
        "_signed_ann",
        "_signed_sig",
        "_signer",
        "_stats",
        "_table",
        "_verify",
        "_waiting_until",
    )

    def __init__(
        self,
        public_key: bytes,
        signer: Signer,
        *,
        config: RouterConfig | None = None,
        now: float = 0.0,
    ) -> None:
        key = bytes(public_key)
        if len(key) != KEY_SIZE:
            raise LocalProtocolError("a router key is 32 bytes")
        if bytes(signer.public_key) != key:
            raise LocalProtocolError("the signer's key is not the router's key")
        cfg = config if config is not None else RouterConfig()
        self._key = key
        self._signer = signer
        #: NullSigner accepts everything: skip building the signed bytes at all.
        self._verify = not isinstance(signer, NullSigner)
        self._cfg = cfg
        self._now = now
        self._stats = RouterStatistics()
        self._peers: dict[int, Peer] = {}
        self._peer_list: list[Peer] = []
        # tree
        self._parent: Peer | None = None
        self._sequence = 0
        self._ordering = 0
        self._waiting_until: float | None = None
        self._next_root_announce = now + cfg.announcement_interval
        self._root_ann = Announcement.new(key, 0)
        self._signed_ann: Announcement | None = None
        self._signed_sig = b""
        self._coords: Coords = ()
        self._ev_root: tuple[bytes, int] = (key, 0)
        self._ev_parent: int | None = None
        self._ev_coords: Coords = ()
        # snake
        self._index = KeyIndex()
        #: Peers whose announcement changed since the key index last saw it. Indexing
        #: waits for the next snake lookup: a cold start brings many announcements per
        #: peer between two lookups, and only the last one matters.
        self._index_dirty: dict[int, Peer] = {}
        self._table = SnakeTable(cfg.max_snake_entries)
        self._descending: bytes | None = None
        self._last_bootstrap = -math.inf
        #: When a bootstrap wanted "soon" is due (math.inf: none wanted).
        self._bootstrap_due = math.inf
        #: The key our last bootstrap headed for (None: none sent); a key learnt between
        #: ours and this one is a closer successor, worth bootstrapping to at once.
        self._bootstrap_target: bytes | None = None
        self._bootstrap_seq = 0
        self._next_maintain = now + cfg.snake_maintain_interval
        # forwarding
        self._coords_cache: dict[bytes, tuple[Coords, float]] = {}
        self._next_cache_sweep = now + cfg.coords_cache_sweep

    if TYPE_CHECKING:
        # Implemented by `RouterState` (state.py).
        @property
        def parent_port(self) -> int | None: ...
        def _drop(self, reason: str) -> None: ...
        def _current_ann(self) -> Announcement: ...
        def _snake(
            self, dest: bytes, bootstrap: bool, wm_key: bytes, wm_seq: int, exclude: int = -1
        ) -> tuple[int | None, bytes, int]: ...

        # Implemented by `TreeMixin` (state_tree.py).
        def _on_announcement(
            self, peer: Peer, ann: Announcement, now: float, out: list[Action]
        ) -> None: ...

        # Implemented by `SnakeMixin` (state_snake.py).
        def _bootstrap_soon(self) -> None: ...
        def _closer_successor(self, key: bytes) -> None: ...
        def _set_descending(self, key: bytes | None, out: list[Action]) -> None: ...
        def _on_bootstrap(self, port: int, f: Bootstrap, now: float, out: list[Action]) -> None: ...
