"""Which inference node gets a job: the live nodes as the database last reported them.

A web node re-reads the node table about once a second (two small queries) instead of
per request, and adds the jobs it sent itself since, so a burst spreads across nodes
before their next heartbeat says how busy they are.
"""

from collections import Counter
from collections.abc import Iterable

from django.db import close_old_connections

from inference.engine.wire import NodeUnavailable
from models_app.placement import NodeView, live_nodes, mark_silent_nodes_down


class NodeDirectory:
    """The live nodes and this process's own jobs on each; refresh() runs on a plain thread."""

    def __init__(self, *, heartbeat_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self.nodes: dict[str, NodeView] = {}  # replaced whole by refresh(), never mutated
        self.sent: Counter[str] = Counter()  # node name -> this process's jobs in flight there

    def refresh(self) -> None:
        """Mark silent nodes down and re-read the live ones (blocking ORM; not on an event loop)."""
        close_old_connections()  # a connection the database dropped is replaced, not reused
        try:
            mark_silent_nodes_down(heartbeat_s=self.heartbeat_s)
            self.update(live_nodes(heartbeat_s=self.heartbeat_s))
        finally:
            close_old_connections()

    def update(self, nodes: list[NodeView]) -> None:
        """Replace the snapshot (one assignment, so readers on other threads see old or new)."""
        self.nodes = {node.name: node for node in nodes}

    def is_live(self, node: NodeView) -> bool:
        """Still heartbeating, and at the same channel (a restarted node forgot its jobs)."""
        current = self.nodes.get(node.name)
        return current is not None and current.channel == node.channel

    def choose(self, model_id: str, *, exclude: Iterable[str] = ()) -> NodeView:
        """The least busy live node holding the model, else the least busy one that may load it.

        Raises NodeUnavailable (503, Retry-After) naming the model when there is none.
        """
        skip = set(exclude)
        candidates = [n for n in self.nodes.values() if n.name not in skip and not n.draining]
        holding = [n for n in candidates if n.holds(model_id)]
        if holding:
            return min(holding, key=lambda n: (n.queued_for(model_id) + self.sent[n.name], n.in_flight, n.name))
        allowed = [n for n in candidates if n.may_load(model_id)]
        if allowed:
            return min(allowed, key=lambda n: (model_id not in n.placed, n.in_flight + self.sent[n.name], n.name))
        live = len(self.nodes)
        raise NodeUnavailable(
            f"No live inference node holds {model_id} or may load it ({live} node(s) up); "
            "retry shortly, or place the model on a node in the admin."
        )

    def holders(self, model_id: str) -> list[NodeView]:
        return [n for n in self.nodes.values() if n.holds(model_id)]

    def status(self) -> dict[str, object]:
        """The engine status() shape over the live nodes; the budget is the largest one node has.

        A model runs on one node, so what may be configured is bounded by the biggest node
        (the management API checks a config against it), not by the nodes' sum.
        """
        nodes = list(self.nodes.values())
        return {
            "loaded": [{**m, "node": n.name} for n in nodes for m in n.loaded],
            "max_loaded_models": sum(n.max_loaded_models for n in nodes),
            "memory_budget_mb": round(max((n.memory_budget_mb for n in nodes), default=0.0), 1),
            "memory_used_mb": round(sum(n.memory_used_mb for n in nodes), 1),
            "stats": {
                "mode": "remote",
                "nodes": [
                    {
                        "name": n.name,
                        "in_flight": n.in_flight,
                        "load_on_demand": n.load_on_demand,
                        "sent_from_here": self.sent[n.name],
                        "memory_budget_mb": n.memory_budget_mb,
                        "memory_used_mb": n.memory_used_mb,
                    }
                    for n in nodes
                ],
            },
        }
