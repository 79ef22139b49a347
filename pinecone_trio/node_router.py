"""The node's router task: the one owner of the sans-IO `RouterState` (`RouterTaskMixin`).

Theory of operation: see the "router task" in `pinecone_trio.node`. The task sleeps
until the engine's next deadline or the next inbox item (frames from peer readers, in
batches; local sends; peer up/down), feeds the engine, and carries out the returned
actions synchronously: frames onto peerings' queues (written to the links at the end
of the pass, coalesced), local deliveries to the overlay services, misbehaving peers
closed, events published. Local sends enter the same inbox (`_queue_local`), bounded
by the node's send budget.
"""

from __future__ import annotations

import logging

import trio

from . import events as ev
from .identity import PublicKey
from .node_base import NodeBase
from .node_config import ROUTER_BATCH
from .peering import FrameBatch, InboxItem
from .router.actions import (
    Action,
    DeliverLocal,
    DeliveryMode,
    DescendingChanged,
    DropPeer,
    Emit,
    FrameIn,
    LocalSend,
    LocalSendClosest,
    ParentChanged,
    RootChanged,
    SendFrame,
)
from .router.state import RouterState
from .router.wire import ClosestTraffic, Traffic, TreeAnnouncement
from .services import Datagram

logger = logging.getLogger(__name__)


class RouterTaskMixin(NodeBase):
    """`Node`'s router task and local sends (see the module docstring)."""

    async def _router_task(self, *, task_status: trio.TaskStatus[None]) -> None:
        state = self._state
        assert state is not None
        inbox = self._inbox_recv
        task_status.started()
        with inbox:
            while True:
                # One cancel scope per timer period, not one per wait: its deadline
                # follows the engine's (moving it is cheap; making and entering a scope
                # is several µs, and the router waits about once per packet). When it
                # fires, the wait or the checkpoint in it ends; no inbox item is lost
                # (a cancelled `receive` takes none, and a taken item is handled first).
                with trio.CancelScope(deadline=state.next_deadline()) as timer:
                    while True:
                        item: InboxItem | None
                        try:
                            item = inbox.receive_nowait()
                        except trio.WouldBlock:
                            item = None
                        if item is None:
                            # (outside the except clause: the pass's own errors must not
                            # carry WouldBlock as their context; and no name holds the
                            # item, so an idle router keeps nothing alive)
                            self._router_pass(state, await inbox.receive())
                        else:
                            self._router_pass(state, item)
                            item = None
                            await trio.lowlevel.checkpoint()  # never starve the other tasks
                        deadline = state.next_deadline()
                        if deadline != timer.deadline:
                            timer.deadline = deadline
                self._router_pass(state, None)  # the timer fired

    def _router_pass(self, state: RouterState, item: InboxItem | None) -> None:
        """Handle `item` and whatever else the inbox holds (up to `ROUTER_BATCH`
        inputs), run due timers, write what the pass queued on links, and tell
        `wait_for` callers if the router's view changed."""
        now = trio.current_time()
        if item is not None:
            handled = self._handle(state, item, now)
            inbox = self._inbox_recv
            while handled < ROUTER_BATCH:
                try:
                    item = inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                handled += self._handle(state, item, now)
        if now >= state.next_deadline():
            self._apply(state.on_timer(now))
        if self._flush_list:
            flush = self._flush_list[:]
            self._flush_list.clear()  # the peerings hold this very list
            for peering in flush:
                peering.write_queued()
        # Some of what `status()` shows changes without an engine event: the
        # descending neighbour turns valid or stale as bootstraps refresh its entry,
        # time passes or the root changes. Compare once per pass, so `wait_for`
        # re-checks its predicate at every such change too.
        view = (state.root, state.descending_key, state.parent_port, state.coords)
        if view != self._router_view:
            self._router_view = view
            self._notify()

    def _handle(self, state: RouterState, item: InboxItem, now: float) -> int:
        """Feed one inbox item to the engine and carry out its actions; return the
        number of engine inputs it was (a batch's frame count)."""
        kind = type(item)
        if kind is FrameBatch:
            batch: FrameBatch = item  # type: ignore[assignment]
            port = batch.port
            on_input = state.on_input
            apply = self._apply
            for frame in batch.frames:
                apply(on_input(FrameIn(port, frame), now))
            batch.done()
            return len(batch.frames)
        actions = state.on_input(item, now)  # type: ignore[arg-type]
        # A local send took budget; unless its frame was queued on a peering (which
        # releases it when the frame leaves), give it back now.
        if (kind is LocalSend or kind is LocalSendClosest) and not any(
            type(a) is SendFrame for a in actions
        ):
            self._budget.release(len(item.payload))  # type: ignore[union-attr]
        self._apply(actions)
        return 1

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            kind = type(action)
            if kind is SendFrame:
                send: SendFrame = action  # type: ignore[assignment]
                peering = self._peerings.get(send.port)
                if peering is None:
                    frame = send.frame
                    if (
                        type(frame) is Traffic or type(frame) is ClosestTraffic
                    ) and frame.source_key == self._public_key:
                        self._budget.release(len(frame.payload))
                else:
                    dropped = peering.enqueue(send.frame)
                    # A newer tree announcement replacing a queued one loses nothing.
                    if dropped is not None and type(dropped) is not TreeAnnouncement:
                        self.counters.queue_drops += 1
                        self._notify()
            elif kind is DeliverLocal:
                self._deliver(action)  # type: ignore[arg-type]
            elif kind is DropPeer:
                drop: DropPeer = action  # type: ignore[assignment]
                peering = self._peerings.get(drop.port)
                if peering is not None:
                    self.counters.misbehaving_peers += 1
                    self._notify()
                    peering.close(f"misbehaving: {drop.reason}")
            elif kind is Emit:
                self._on_router_event(action.event)  # type: ignore[union-attr]

    def _deliver(self, action: DeliverLocal) -> None:
        payload = action.payload
        service = self._services.get(payload[0]) if payload else None
        if service is None:
            self.counters.unknown_service += 1
            self._notify()
            return
        closest = action.mode is not DeliveryMode.EXACT
        direct = service.direct
        if direct is not None and not closest:
            # Straight to the service in this (the router) task: no copy of the
            # payload, no queue item, no task switch.
            service.direct_deliveries += 1
            try:
                taken = direct(action.source_key, memoryview(payload)[1:])
            except Exception:  # a service bug must not take the router down
                logger.exception("service %d's direct handler failed", payload[0])
                taken = False
            if not taken:
                self.counters.receive_drops += 1
                self._notify()
            return
        datagram = Datagram(
            PublicKey(action.source_key),
            bytes(payload[1:]),  # queued: its own bytes, not a view of a read buffer
            PublicKey(action.target_key) if closest else None,
            action.hops,
        )
        if not service.deliver_nowait(datagram, closest):
            self.counters.receive_drops += 1
            self._notify()

    def _on_router_event(self, event: object) -> None:
        if isinstance(event, RootChanged):
            self._publish(ev.RootChanged(PublicKey(event.root_key), event.root_seq))
        elif isinstance(event, ParentChanged):
            peering = self._peerings.get(event.port) if event.port is not None else None
            key = peering.public_key if peering is not None else None
            self._publish(ev.ParentChanged(key, tuple(event.coords)))
        elif isinstance(event, DescendingChanged):
            desc = PublicKey(event.public_key) if event.public_key is not None else None
            self._publish(ev.SnakeNeighbourChanged(desc))
        else:
            self._notify()  # PeerAdded/PeerRemoved: the node publishes its own versions
