"""Routing and placement: where a job goes, and what happens when nowhere will take it."""

import httpx

from tests.scaleout.conftest import chat_body


def test_a_model_no_node_may_load_is_503_with_retry_after_naming_it(nodes):
    nodes.sql("UPDATE models_app_inferencenode SET load_on_demand = false")

    def web_node_sees_it() -> bool:  # it re-reads the node table every INFERENCE_HEARTBEAT_S / 2
        seen = httpx.get(f"{nodes.url}/performance", headers=nodes.headers, timeout=60).json()["engine"]["stats"]
        return bool(seen["nodes"]) and not any(node["load_on_demand"] for node in seen["nodes"])

    nodes.wait_for(web_node_sees_it, 30, "the web node to see that no node may load on demand")
    response = httpx.post(f"{nodes.url}/v1/chat/completions", json={**chat_body(), "model": "ghost"},
                          headers=nodes.headers, timeout=60)  # fmt: skip
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "ghost" in response.json()["error"]["message"]


def test_moving_a_placement_loads_on_the_new_node_and_unloads_the_old(nodes):
    nodes.sql("UPDATE models_app_inferencenode SET load_on_demand = false")
    nodes.unplace("smollm2", "node-a")
    nodes.place("smollm2", "node-b")
    nodes.wait_for(lambda: "smollm2" in nodes.node("node-b")["loaded"], 60, "node-b to load smollm2")
    nodes.wait_for(lambda: "smollm2" not in nodes.node("node-a")["loaded"], 30, "node-a to unload smollm2")
    response = httpx.post(f"{nodes.url}/v1/chat/completions", json=chat_body(), headers=nodes.headers, timeout=120)
    assert response.status_code == 200, response.text


def test_nodes_heartbeat_what_they_hold(nodes):
    report = nodes.node("node-a")
    assert report["status"] == "up"
    assert report["loaded"] == ["smollm2"]
    assert report["report"][0]["slots"] == 2
