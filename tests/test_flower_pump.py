"""The Flower simulation's message pump (:func:`fedrec.engine.flower.queue_pending_messages`):
it asks the LinkState only for the nodes holding an undelivered message, delivers each
stored message exactly once, and falls back to the sweep over every node for a state without
flwr's in-memory store. (Whole simulations through the pump: tests/test_federation_flower.py.)
"""

from __future__ import annotations

import threading
from queue import Queue
from types import SimpleNamespace

from flwr.server.superlink.fleet.vce import vce_api

from fedrec.engine.flower import message_pump, pending_nodes, queue_pending_messages


class FakeState:
    """The part of flwr's ``InMemoryLinkState`` the pump uses: ``message_ins_store`` (id ->
    message, in store order), ``lock`` and ``get_message_ins`` (first undelivered messages of
    a node, marked delivered); counts the ``get_message_ins`` calls."""

    def __init__(self, receivers: list[int]) -> None:
        self.message_ins_store = {
            f"m{i}": SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, delivered_at=""),
                                     id=f"m{i}")
            for i, node in enumerate(receivers)}
        self.lock = threading.RLock()
        self.asked: list[int] = []

    def get_message_ins(self, node_id: int, limit: int | None) -> list[SimpleNamespace]:
        self.asked.append(node_id)
        out = [m for m in self.message_ins_store.values()
               if m.metadata.dst_node_id == node_id and m.metadata.delivered_at == ""][:limit]
        for m in out:
            m.metadata.delivered_at = "now"
        return out


class NoStore(FakeState):
    """A state without the in-memory store's attributes."""

    def __init__(self, receivers: list[int]) -> None:
        super().__init__(receivers)
        self._store = self.__dict__.pop("message_ins_store")

    def get_message_ins(self, node_id: int, limit: int | None) -> list[SimpleNamespace]:
        self.message_ins_store = self._store
        try:
            return super().get_message_ins(node_id, limit)
        finally:
            del self.message_ins_store


class OneSweep:
    """A stop event that is set by the pump's first wait (so the pump runs one sweep)."""

    def __init__(self) -> None:
        self.stopped = False

    def is_set(self) -> bool:
        return self.stopped

    def wait(self, _: float) -> None:
        self.stopped = True


def sweep(state, nodes: dict[int, int]) -> list[str]:
    """Ids of the messages one sweep of the pump queues."""
    queue: Queue = Queue()
    queue_pending_messages(state, queue, nodes, OneSweep())  # type: ignore[arg-type]
    return [queue.get_nowait().id for _ in range(queue.qsize())]


NODES = {100 + p: p for p in range(50)}  # node id -> partition id


def test_pending_nodes_lists_undelivered_receivers_in_store_order():
    state = FakeState([107, 103, 141, 107])
    assert pending_nodes(state, NODES) == [107, 103, 141]
    state.get_message_ins(103, limit=1)  # delivered: no longer pending
    assert pending_nodes(state, NODES) == [107, 141]
    assert pending_nodes(state, {141: 41}) == [141]  # only the pump's nodes
    assert pending_nodes(object(), NODES) is None  # no in-memory store


def test_pump_delivers_each_message_once_asking_only_their_nodes():
    state = FakeState([105, 149, 109, 105])
    assert sweep(state, NODES) == ["m0", "m1", "m2"]  # one message per node and sweep
    assert state.asked == [105, 149, 109]  # not the 50 nodes
    assert sweep(state, NODES) == ["m3"]
    assert sweep(state, NODES) == []
    assert state.asked == [105, 149, 109, 105]


def test_pump_falls_back_to_every_node_without_the_store():
    state = NoStore([112, 102])
    assert sorted(sweep(state, NODES)) == ["m0", "m1"]
    assert state.asked == list(NODES)


def test_message_pump_swaps_flowers_pump_and_restores_it():
    original = vce_api.add_messages_to_queue
    with message_pump():
        assert vce_api.add_messages_to_queue is queue_pending_messages
    assert vce_api.add_messages_to_queue is original
