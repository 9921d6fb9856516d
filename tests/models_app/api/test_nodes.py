"""/api/v1/nodes and /api/v1/placements: see the inference nodes and move a model between them."""

from django.utils import timezone

from models_app.models import InferenceNode, ModelPlacement

NODES, PLACEMENTS = "/api/v1/nodes/", "/api/v1/placements/"


def node(name):
    return InferenceNode.objects.create(name=name, channel=f"inference.{name}", hardware="CPU x2", slots=4,
                                        last_heartbeat=timezone.now())  # fmt: skip


def test_nodes_are_listed_as_they_report_themselves(reader, small_model):
    node("gpu-a")
    rows = reader.get(NODES).json()["results"]
    assert [(r["name"], r["status"], r["hardware"]) for r in rows] == [("gpu-a", "up", "CPU x2")]


def test_manager_places_then_moves_a_model(manager, small_model):
    node("gpu-a"), node("gpu-b")
    created = manager.post(PLACEMENTS, {"model": "smollm2", "node": "gpu-a"})
    assert created.status_code == 201, created.content
    moved = manager.post(f"{PLACEMENTS}move/", {"model": "smollm2", "from_node": "gpu-a", "to_node": "gpu-b"})
    assert moved.status_code == 200 and moved.json()["node"] == "gpu-b"
    assert list(ModelPlacement.objects.values_list("node__name", flat=True)) == ["gpu-b"]


def test_moving_from_a_node_that_does_not_hold_it_is_400_naming_the_field(manager, small_model):
    node("gpu-a"), node("gpu-b")
    response = manager.post(f"{PLACEMENTS}move/", {"model": "smollm2", "from_node": "gpu-a", "to_node": "gpu-b"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "from_node"


def test_placement_can_be_removed(manager, small_model):
    placement = ModelPlacement.objects.create(model=small_model, node=node("gpu-a"))
    assert manager.delete(f"{PLACEMENTS}{placement.pk}/").status_code == 204
    assert not ModelPlacement.objects.exists()


def test_reader_cannot_place_models(reader, small_model):
    node("gpu-a")
    assert reader.post(PLACEMENTS, {"model": "smollm2", "node": "gpu-a"}).status_code == 403
