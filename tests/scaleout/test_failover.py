"""kill -9 of an inference node: queued jobs move to the other node, a streaming one ends in error."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.scaleout.conftest import long_body, stream_events, streamed_text

TOKENS = 48


def _chat(cluster) -> httpx.Response:
    return httpx.post(f"{cluster.url}/v1/chat/completions", json=long_body(TOKENS), headers=cluster.headers,
                      timeout=180)  # fmt: skip


def test_killing_a_node_with_queued_jobs_finishes_them_on_the_other(only_node_a_holds_the_model):
    cluster = only_node_a_holds_the_model
    expected = _chat(cluster).json()["choices"][0]["message"]["content"]
    before = {row["request_id"] for row in cluster.usage()}

    def admitted() -> int:
        return len([row for row in cluster.usage() if row["request_id"] not in before])

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_chat, cluster) for _ in range(6)]
        # Six admitted on node-a, which has 2 slots: at least four are waiting in its queue.
        cluster.wait_for(lambda: admitted() == 6, 60, "six jobs admitted on node-a")
        cluster.kill("node-a")
        responses = [f.result() for f in futures]

    ok = [r for r in responses if r.status_code == 200]
    failed = [r for r in responses if r.status_code != 200]
    assert len(ok) >= 4, [r.text for r in failed]
    assert all(r.json()["choices"][0]["message"]["content"] == expected for r in ok)
    assert all(r.json()["error"]["code"] == "node_lost" for r in failed)
    # The queued ones ran there (a load on demand shows in the node's next heartbeat).
    cluster.wait_for(lambda: "smollm2" in cluster.node("node-b")["loaded"], 30, "node-b to report smollm2 loaded")
    rows = [row for row in cluster.usage() if row["request_id"] not in before]
    assert sorted(row["status"] for row in rows) == sorted(["completed"] * len(ok) + ["error"] * len(failed))


def test_killing_the_node_mid_stream_sends_an_error_and_meters_what_was_sent(nodes):
    before = {row["request_id"] for row in nodes.usage()}
    killed = []

    def kill_serving_node(frames: list) -> bool:
        if not killed and len(frames) >= 4:
            deadline = time.monotonic() + 10
            while not killed and time.monotonic() < deadline:
                killed.extend(name for name in ("node-a", "node-b") if nodes.node(name)["in_flight"])
                time.sleep(0.05)
            nodes.kill(killed[0])
        return False

    frames = stream_events(nodes, long_body(400), on_chunk=kill_serving_node)
    assert killed
    assert frames[-1] == "[DONE]"
    assert frames[-2]["error"]["code"] == "node_lost", frames[-2]
    rows = [row for row in nodes.usage() if row["request_id"] not in before]
    assert len(rows) == 1
    assert rows[0]["status"] == "error"
    content_chunks = sum(1 for f in frames if isinstance(f, dict) and f.get("choices") and
                         f["choices"][0]["delta"].get("content"))  # fmt: skip
    assert content_chunks <= rows[0]["completion_tokens"] < 400
    assert streamed_text(frames)
    assert not [row for row in nodes.usage() if row["status"] == "started"]
