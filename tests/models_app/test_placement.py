"""Nodes and placement: heartbeats, who is live, what each node should hold, the admin."""

from datetime import timedelta

import pytest
from django.utils import timezone

from inference.engine.routing import NodeDirectory
from inference.engine.wire import NodeUnavailable
from models_app.models import InferenceNode, ModelPlacement
from models_app.placement import live_nodes, mark_silent_nodes_down, move_model, placed_models, record_heartbeat

pytestmark = pytest.mark.django_db
REPORT = {"loaded": [{"id": "smollm2", "in_flight": 3, "slots": 4}], "max_loaded_models": 2,
          "memory_budget_mb": 1000.0, "memory_used_mb": 150.0}  # fmt: skip


def _beat(name: str, report: dict | None = None) -> InferenceNode:
    record_heartbeat(name=name, channel=f"specific.{name}!x", hardware="2 CPU cores", report=report or REPORT)
    return InferenceNode.objects.get(name=name)


def test_a_heartbeat_registers_the_node_with_what_it_holds():
    node = _beat("gpu-1")
    assert (node.status, node.slots, node.in_flight, node.loaded_model_ids) == ("up", 4, 3, ["smollm2"])
    assert [n.name for n in live_nodes(heartbeat_s=2)] == ["gpu-1"]


def test_a_node_silent_for_three_heartbeats_is_marked_down_and_not_live():
    _beat("gpu-1")
    InferenceNode.objects.update(last_heartbeat=timezone.now() - timedelta(seconds=7))
    assert mark_silent_nodes_down(heartbeat_s=2) == 1
    assert InferenceNode.objects.get().status == "down"
    assert live_nodes(heartbeat_s=2) == []
    assert _beat("gpu-1").status == "up"  # the next heartbeat brings it back


def test_routing_prefers_the_least_busy_holder_then_a_node_allowed_to_load(small_model):
    _beat("busy", REPORT)
    _beat("idle", {**REPORT, "loaded": [{"id": "smollm2", "in_flight": 0, "slots": 4}]})
    _beat("empty", {**REPORT, "loaded": []})
    directory = NodeDirectory(heartbeat_s=2)
    directory.update(live_nodes(heartbeat_s=2))
    assert directory.choose("smollm2").name == "idle"
    assert directory.choose("smollm2", exclude=["idle", "busy"]).name == "empty"
    InferenceNode.objects.filter(name="empty").update(load_on_demand=False)
    directory.update(live_nodes(heartbeat_s=2))
    with pytest.raises(NodeUnavailable, match="smollm2"):
        directory.choose("smollm2", exclude=["idle", "busy"])


def test_moving_a_model_changes_what_each_node_should_hold(small_model):
    old, new = _beat("gpu-1"), _beat("gpu-2")
    ModelPlacement.objects.create(model=small_model, node=old)
    move_model(model=small_model, from_node=old, to_node=new)
    assert placed_models(node_name="gpu-1") == []
    assert placed_models(node_name="gpu-2") == [small_model]


def test_admin_lists_nodes_and_placements(client, admin_user, small_model):
    ModelPlacement.objects.create(model=small_model, node=_beat("gpu-1"))
    client.force_login(admin_user)
    nodes = client.get("/admin/models_app/inferencenode/")
    assert nodes.status_code == 200 and b"gpu-1" in nodes.content and b"smollm2" in nodes.content
    assert client.get("/admin/models_app/modelplacement/").status_code == 200
