"""Inference nodes and model placement: what nodes report, what they should hold, who is live.

The function API that `inference` uses for scale-out (as services.py and selectors.py are
for the rest). Liveness is judged on the database's clock (`Now()`), so a web node and an
inference node with skewed clocks still agree on who is down.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models.functions import Now

from models_app.choices import ModelStatus, NodeStatus
from models_app.models import InferenceNode, LLMModel, ModelPlacement

MISSED_HEARTBEATS = 3  # a node silent for this many intervals is down


@dataclass(frozen=True)
class NodeView:
    """A live node as routing sees it: where to send, what it holds, how busy it said it was."""

    name: str
    channel: str
    load_on_demand: bool
    in_flight: int
    loaded: tuple[dict[str, Any], ...]
    placed: frozenset[str]
    max_loaded_models: int
    memory_budget_mb: float
    memory_used_mb: float
    draining: bool = False  # stopping: its running jobs go on, routing sends it no new one

    def holds(self, model_id: str) -> bool:
        return any(m["id"] == model_id for m in self.loaded)

    def queued_for(self, model_id: str) -> int:
        return sum(m.get("in_flight", 0) for m in self.loaded if m["id"] == model_id)

    def may_load(self, model_id: str) -> bool:
        return self.load_on_demand or model_id in self.placed


def record_heartbeat(
    *,
    name: str,
    channel: str,
    hardware: str,
    report: dict[str, Any],
    starting: bool = False,
    status: str = NodeStatus.UP,
) -> None:
    """Write a node's heartbeat: `status` (up, draining), at `channel`, holding what `report` (engine status) lists."""
    loaded = report.get("loaded", [])
    fields = {
        "channel": channel,
        "hardware": hardware[:300],
        "status": status,
        "slots": sum(m.get("slots", 0) for m in loaded),
        "in_flight": sum(m.get("in_flight", 0) for m in loaded),
        "loaded": loaded,
        "max_loaded_models": report.get("max_loaded_models", 0),
        "memory_budget_mb": report.get("memory_budget_mb", 0),
        "memory_used_mb": report.get("memory_used_mb", 0),
        "last_heartbeat": Now(),
    }
    if starting:
        fields["started_at"] = Now()
    if not InferenceNode.objects.filter(name=name).update(**fields):
        InferenceNode.objects.create(name=name, **fields)


def mark_silent_nodes_down(*, heartbeat_s: float) -> int:
    """Mark nodes down whose last heartbeat is MISSED_HEARTBEATS intervals old; returns how many."""
    cutoff = Now() - timedelta(seconds=heartbeat_s * MISSED_HEARTBEATS)
    return InferenceNode.objects.filter(status=NodeStatus.UP, last_heartbeat__lt=cutoff).update(status=NodeStatus.DOWN)


def live_nodes(*, heartbeat_s: float) -> list[NodeView]:
    """Nodes that heartbeat recently, with the models placed on them (two queries)."""
    cutoff = Now() - timedelta(seconds=heartbeat_s * MISSED_HEARTBEATS)
    live = (NodeStatus.UP, NodeStatus.DRAINING)
    nodes = list(InferenceNode.objects.filter(status__in=live, last_heartbeat__gte=cutoff).exclude(channel=""))
    placed: dict[int, set[str]] = {}
    for node_id, model_id in ModelPlacement.objects.filter(node__in=nodes).values_list("node_id", "model_id"):
        placed.setdefault(node_id, set()).add(model_id)
    return [
        NodeView(
            name=n.name,
            channel=n.channel,
            load_on_demand=n.load_on_demand,
            in_flight=n.in_flight,
            loaded=tuple(n.loaded),
            placed=frozenset(placed.get(n.pk, ())),
            max_loaded_models=n.max_loaded_models,
            memory_budget_mb=n.memory_budget_mb,
            memory_used_mb=n.memory_used_mb,
            draining=n.status == NodeStatus.DRAINING,
        )
        for n in nodes
    ]


def placed_models(*, node_name: str) -> list[LLMModel]:
    """The servable models placed on `node_name`, configs joined (what the node should hold)."""
    return list(
        LLMModel.objects.filter(
            placements__node__name=node_name, enabled=True, status=ModelStatus.AVAILABLE
        ).select_related("config")
    )


def place_model(*, model: LLMModel, node: InferenceNode) -> ModelPlacement:
    """Ask `node` to keep `model` loaded (idempotent)."""
    placement, _ = ModelPlacement.objects.get_or_create(model=model, node=node)
    return placement


def move_model(*, model: LLMModel, from_node: InferenceNode, to_node: InferenceNode) -> ModelPlacement:
    """Move a placement: `to_node` loads the model, then `from_node` unloads it at its next reconcile."""
    placement = place_model(model=model, node=to_node)
    ModelPlacement.objects.filter(model=model, node=from_node).delete()
    return placement


def mark_node_down(*, name: str, channel: str) -> None:
    """A node that stopped says so at once, rather than leaving routing to wait for missed heartbeats."""
    InferenceNode.objects.filter(name=name, channel=channel).update(status=NodeStatus.DOWN)
