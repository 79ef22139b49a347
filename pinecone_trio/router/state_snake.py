"""The virtual snake of the router engine (research §7): bootstraps, the descending
neighbour, handovers and path-break teardowns.

The 1 s maintenance tick (`_maintain_snake`) checks the descending neighbour, expires
snake entries and sends our bootstrap every `bootstrap_interval`; `_bootstrap_soon`
asks for one earlier (rate-limited by `bootstrap_min_gap`) when the tree or our
neighbours change. `_on_bootstrap` handles a bootstrap of another node: it checks the
signature and root, remembers the path in the snake table, updates the descending
neighbour and forwards it towards the origin's successor. Two kinds of bootstrap are
recognised by their watermark: a handover or path-break notice (watermark key at or
below the origin, `_on_handover`, deviations 21 and 24) and a teardown (watermark key
the origin, sequence 0, `_on_teardown`, deviation 24).
"""

from __future__ import annotations

import math

from .actions import Action, DescendingChanged, Emit, SendFrame
from .snake import SnakeEntry, worse
from .state_base import RouterStateBase
from .wire import FULL_MASK, Bootstrap, bootstrap_signed_bytes


class SnakeMixin(RouterStateBase):
    """`RouterState`'s virtual snake (see the module docstring)."""

    __slots__ = ()

    def _bootstrap_soon(self) -> None:
        """Want a bootstrap now, rate-limited to one per `bootstrap_min_gap`."""
        due = max(self._now, self._last_bootstrap + self._cfg.bootstrap_min_gap)
        if due < self._bootstrap_due:
            self._bootstrap_due = due

    def _closer_successor(self, key: bytes) -> None:
        """`key` was just learnt: if it lies between us and where our last bootstrap
        went, that was not our successor; bootstrap again soon."""
        target = self._bootstrap_target
        if target is not None and self._key < key < target:
            self._bootstrap_soon()

    def _set_descending(self, key: bytes | None, out: list[Action]) -> None:
        self._descending = key
        self._bootstrap_soon()
        out.append(Emit(DescendingChanged(key)))

    def _maintain_snake(self, now: float, out: list[Action]) -> None:
        cfg = self._cfg
        d = self._descending
        if d is not None:
            e = self._table.get(d)
            ann = self._current_ann()
            if (
                e is None
                or e.last_seen <= now - cfg.snake_expiry
                or e.root_key != ann.root_key
                or abs(e.root_seq - ann.root_seq) > cfg.root_seq_tolerance
            ):
                self._set_descending(None, out)
        self._table.sweep(now, cfg.snake_expiry + cfg.snake_path_grace)
        if self._parent is not None and (
            now - self._last_bootstrap >= cfg.bootstrap_interval - 1e-9
        ):
            self._send_bootstrap(now, out)

    def _send_bootstrap(self, now: float, out: list[Action]) -> None:
        self._bootstrap_due = math.inf
        self._last_bootstrap = now
        ann = self._current_ann()
        seq = max(self._bootstrap_seq + 1, int((now + self._cfg.wall_clock_offset) * 1000))
        self._bootstrap_seq = seq
        port, bk, bs = self._snake(self._key, True, FULL_MASK, 0)
        if port is None:
            self._bootstrap_target = None
            return
        self._bootstrap_target = bk
        sig = self._signer.sign(bootstrap_signed_bytes(seq, ann.root_key, ann.root_seq))
        out.append(
            SendFrame(port, Bootstrap(self._key, bk, bs, seq, ann.root_key, ann.root_seq, sig))
        )

    def _on_bootstrap(self, port: int, f: Bootstrap, now: float, out: list[Action]) -> None:
        origin = f.destination_key
        if origin == self._key:
            if f.watermark_key == origin and f.sequence == self._bootstrap_seq:
                # Our latest bootstrap, sent back: its path broke (deviation 24).
                self._bootstrap_soon()
            else:
                self._drop("own_bootstrap")
            return
        if self._verify and not self._signer.verify(
            origin, bootstrap_signed_bytes(f.sequence, f.root_key, f.root_seq), f.signature
        ):
            self._drop("bad_signature")
            return
        if f.watermark_key == origin and f.watermark_seq == 0:
            # A teardown removes only the very entry it names, whatever root that was
            # learnt under: when the dead node took the root with it, its paths must go
            # as well (deviation 24).
            self._on_teardown(port, f, out)
            return
        ann = self._current_ann()
        rk = f.root_key
        rs = f.root_seq
        tol = self._cfg.root_seq_tolerance
        if rk != ann.root_key or abs(rs - ann.root_seq) > tol:
            self._drop("wrong_root")
            return
        if f.watermark_key <= origin:
            # Routing never gives a bootstrap a watermark at or below its origin: this
            # is a handover towards the key in the watermark (deviation 21), or, when
            # that key is the origin's own, a path-break notice (deviation 24).
            self._on_handover(port, f, now, out)
            return
        table = self._table
        e = table.get(origin)
        if (
            e is not None
            and e.root_key == rk
            and abs(e.root_seq - rs) <= tol
            and f.sequence <= e.seq
        ):
            self._drop("replay")
            return
        nh, bk, bs = self._snake(origin, True, f.watermark_key, f.watermark_seq, port)
        displaced: bytes | None = None
        ne = SnakeEntry(origin, port, nh, now, rk, rs, f.sequence, f.signature)
        if e is not None:
            ne.inherit(e, now - self._cfg.snake_expiry - self._cfg.snake_path_grace)
        if table.put(ne):
            displaced = self._descending_update(origin, now, out)
            self._closer_successor(origin)
        else:
            self._drop("snake_table_full")
        if nh is None:
            # Dead end: we are the origin's ascending neighbour. If it took the place of
            # a descending neighbour that was still valid, that node does not know yet
            # that its successor changed: tell it (deviation 21).
            if displaced is not None and self._cfg.descending_handover:
                de = table.get(displaced)
                if de is not None:
                    ne.add_fanout(de.source, now)
                    out.append(
                        SendFrame(
                            de.source,
                            Bootstrap(origin, displaced, de.seq, f.sequence, rk, rs, f.signature),
                        )
                    )
            return
        if nh == port:
            self._drop("loop")
            return
        if worse(bk, bs, f.watermark_key, f.watermark_seq):
            self._drop("watermark")
            return
        out.append(SendFrame(nh, Bootstrap(origin, bk, bs, f.sequence, rk, rs, f.signature)))

    def _descending_update(self, origin: bytes, now: float, out: list[Action]) -> bytes | None:
        """§7.4 step 5 for a fresh entry of `origin`. Return the descending key that
        `origin` displaced if that one was still valid, else None."""
        if origin >= self._key:
            return None
        d = self._descending
        if d == origin:
            return None
        de = None if d is None else self._table.get(d)
        ann = self._current_ann()
        valid = (
            de is not None
            and de.last_seen > now - self._cfg.snake_expiry
            and de.root_key == ann.root_key
            and abs(de.root_seq - ann.root_seq) <= self._cfg.root_seq_tolerance
        )
        if not valid:
            self._set_descending(origin, out)
            return None
        if d is not None and d < origin:
            self._set_descending(origin, out)
            return d
        return None

    def _on_handover(self, port: int, f: Bootstrap, now: float, out: list[Action]) -> None:
        """A bootstrap of `origin` passed on by its dead end towards `target`, the
        descending neighbour it displaced there (deviation 21).

        It follows `target`'s own bootstrap path backwards: at every hop the snake entry
        of `target`, whose sequence may never be older than the previous hop's (carried
        in the watermark sequence). Along one such chain sequences never decrease and a
        single bootstrap round never visits a node twice, so the chain has no cycle.
        Every hop also learns a route to `origin` (back the way the handover came) if it
        had none as fresh; `target` thereby learns its closer successor and bootstraps.
        """
        origin = f.destination_key
        target = f.watermark_key
        rk = f.root_key
        rs = f.root_seq
        tol = self._cfg.root_seq_tolerance
        table = self._table
        expired = now - self._cfg.snake_expiry
        nh: int | None = None
        te: SnakeEntry | None = None
        if target != self._key:
            te = table.get(target)
            if (
                te is None
                or te.last_seen <= expired
                or te.root_key != rk
                or abs(te.root_seq - rs) > tol
                or te.seq < f.watermark_seq
                or te.source == port
            ):
                self._drop("handover_no_route")
                te = None
            elif target == origin and (te.noticed == f.watermark_seq or te.seq != f.watermark_seq):
                # Several breaks on one path send one notice; and if the origin has
                # bootstrapped since, the notice is moot.
                self._drop("duplicate_notice")
                te = None
            else:
                nh = te.source
                if target == origin:
                    te.noticed = f.watermark_seq
        e = table.get(origin)
        if target != origin and (
            e is None
            or e.last_seen <= expired
            or e.root_key != rk
            or abs(e.root_seq - rs) > tol
            or f.sequence > e.seq
        ):
            ne = SnakeEntry(origin, port, None, now, rk, rs, f.sequence, f.signature)
            # Not the origin's own path: a path-break notice must not follow it.
            ne.noticed = f.sequence
            if e is not None:
                ne.inherit(e, now - self._cfg.snake_expiry - self._cfg.snake_path_grace)
            if te is not None and nh is not None:
                ne.add_fanout(nh, now)
            if table.put(ne):
                self._descending_update(origin, now, out)
                self._closer_successor(origin)
            else:
                self._drop("snake_table_full")
        elif e is not None and te is not None and nh is not None:
            e.add_fanout(nh, now)  # our own path of `origin` stays; a teardown goes there too
        if te is not None and nh is not None:
            out.append(
                SendFrame(nh, Bootstrap(origin, target, te.seq, f.sequence, rk, rs, f.signature))
            )

    def _on_teardown(self, port: int, f: Bootstrap, out: list[Action]) -> None:
        """A path-break teardown (deviation 24): the origin's paths broke before the
        node it came from, which no longer holds any. Forget our entry if it leads there
        (arrived from there, this round or an earlier one) and pass the teardown on
        everywhere that entry's rounds went on to. A node passes a teardown on only when
        it removes its entry, and only a new bootstrap of the origin installs one, so
        this ends."""
        origin = f.destination_key
        e = self._table.get(origin)
        if e is None or e.source != port or e.seq > f.sequence:
            self._drop("stale_teardown")
            return
        self._table.remove(origin)
        if self._descending == origin:
            self._set_descending(None, out)
        for nh in e.ahead():
            if nh != port and nh in self._peers:
                out.append(SendFrame(nh, f))
