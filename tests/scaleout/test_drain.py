"""SIGTERM to an inference node: it stops taking jobs at once, its running stream finishes, then it is down."""

import signal
import threading

import httpx

from tests.scaleout.conftest import long_body, stream_events

TOKENS = 400  # seconds of decoding: it outlives the checks made while it runs


def test_a_draining_node_finishes_its_stream_takes_no_new_job_and_says_it_is_down(only_node_a_holds_the_model):
    cluster = only_node_a_holds_the_model
    before = {row["request_id"] for row in cluster.usage()}
    signalled = threading.Event()
    result: dict = {}

    def drain_node_a(frames: list) -> bool:
        if len(frames) == 3 and not signalled.is_set():
            cluster.processes["node-a"].send_signal(signal.SIGTERM)
            signalled.set()
        return False

    def stream() -> None:
        result["frames"] = stream_events(cluster, long_body(TOKENS), on_chunk=drain_node_a)

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert signalled.wait(60)
    # At once, not after three missed heartbeats: routing skips it from its next read.
    cluster.wait_for(lambda: cluster.node("node-a")["status"] == "draining", 5, "node-a to say it is draining")
    new = httpx.post(f"{cluster.url}/v1/chat/completions", json=long_body(4), headers=cluster.headers, timeout=180)
    assert new.status_code == 200, new.text  # served by node-b, which loads the model on demand
    reader.join(120)
    assert result["frames"][-1] == "[DONE]"  # the stream that was running finished on node-a
    assert cluster.processes["node-a"].wait(timeout=60) == 0
    assert cluster.node("node-a")["status"] == "down"  # said so as it left
    rows = [row for row in cluster.usage() if row["request_id"] not in before]
    assert sorted((row["status"], row["completion_tokens"]) for row in rows) == [("completed", 4),
                                                                                   ("completed", TOKENS)]  # fmt: skip
    cluster.ensure_nodes("node-a", "node-b")  # the next test's cast
