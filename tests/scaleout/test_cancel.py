"""Cancel and client disconnect reach the inference node, stop the job there and free its slot."""

import json

from websockets.sync.client import connect

from tests.scaleout.conftest import long_body, stream_events

TOKENS = 400


def _node_idle(cluster) -> bool:
    return not any(cluster.node(name)["in_flight"] for name in ("node-a", "node-b"))


def test_websocket_cancel_stops_the_job_on_the_node(nodes):
    url = nodes.url.replace("http://", "ws://") + "/ws/v1/generate"
    with connect(url, additional_headers=nodes.headers) as ws:
        ws.send(json.dumps({"type": "generate", "id": "c1", **long_body(TOKENS)}))
        frames = [json.loads(ws.recv(timeout=120))]
        while sum(f["type"] == "token" for f in frames) < 2:
            frames.append(json.loads(ws.recv(timeout=120)))
        ws.send(json.dumps({"type": "cancel", "id": "c1"}))
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(ws.recv(timeout=30)))
    assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "cancelled", frames[-1]
    assert frames[-1]["usage"]["completion_tokens"] < TOKENS  # stopped on the node, not run to its end
    nodes.wait_for(lambda: _node_idle(nodes), 15, "the node to report its slot free")


def test_client_disconnect_mid_stream_is_metered_cancelled(nodes):
    before = {row["request_id"] for row in nodes.usage()}
    stream_events(nodes, long_body(TOKENS), on_chunk=lambda frames: len(frames) >= 3)  # then hang up

    def closed() -> list[dict]:
        return [row for row in nodes.usage() if row["request_id"] not in before and row["status"] != "started"]

    nodes.wait_for(lambda: closed(), 30, "the usage row to close")
    [row] = closed()
    assert row["status"] == "cancelled"
    assert 0 < row["completion_tokens"] < TOKENS  # stopped on the node, not run to its end
    nodes.wait_for(lambda: _node_idle(nodes), 15, "the node to report its slot free")
