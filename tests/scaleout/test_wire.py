"""The web-node/inference-node messages: plain data both ways, refusals answered as locally."""

import msgpack
import pytest

from inference.api.errors import as_api_error
from inference.engine import Job, Outcome, Sampling, wire
from inference.engine.llama_runner import PromptError
from inference.engine.pool import ModelBusy, ModelLoadFailed, NoRoom
from inference.engine.scheduler import QueueFull, SchedulerDown


def _through_redis(data: dict) -> dict:
    """What channels-redis does to a message: msgpack out and back."""
    return msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False)


def test_a_job_survives_the_trip_with_its_logit_bias_and_schema():
    sampling = Sampling(temperature=0, logit_bias={2: -100.0}, json_schema={"type": "object"}, stop=["\n"])
    job = Job(model_id="m", kind="chat", messages=[{"role": "user", "content": "hi"}], sampling=sampling)
    back = wire.decode_job(_through_redis(wire.encode_job(job)), submitted_at_perf=1.0)
    assert back.sampling == job.sampling
    assert (back.id, back.messages, back.submitted_at_perf) == (job.id, job.messages, 1.0)


def test_an_outcome_survives_the_trip():
    outcome = Outcome("completed", "length", prompt_tokens=3, completion_tokens=4, time_to_first_token_ms=5.0,
                      embeddings=[[0.5, 0.25]])  # fmt: skip
    assert wire.decode_outcome(_through_redis(wire.encode_outcome(outcome))) == outcome


def test_an_outcome_from_a_newer_node_drops_the_fields_this_one_does_not_know():
    sent = {**wire.encode_outcome(Outcome("completed", "stop", completion_tokens=2)), "draft_tokens": 7}
    assert wire.decode_outcome(_through_redis(sent)) == Outcome("completed", "stop", completion_tokens=2)


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        (PromptError("too long", param="messages", code="context_length_exceeded"), 400),
        (QueueFull("m", 64), 429),
        (NoRoom("no room"), 503),
        (ModelLoadFailed("broken", retry_after_s=5.0), 503),
        (ModelBusy("busy"), 409),
        (SchedulerDown("restarting"), 503),
        (RuntimeError("boom"), 500),
    ],
)
def test_a_nodes_refusal_gets_the_same_http_status_as_locally(refusal, status):
    error = _through_redis({"error": wire.describe_refusal(refusal)})["error"]
    remote = wire.refusal_exception(error, model_id="m", node="gpu-1")
    assert as_api_error(remote).status == as_api_error(refusal).status == status
    if isinstance(refusal, PromptError):
        assert (remote.param, remote.code) == ("messages", "context_length_exceeded")


def test_no_node_for_a_model_is_503_with_retry_after():
    error = as_api_error(wire.NodeUnavailable("No live inference node holds m or may load it"))
    assert (error.status, error.retry_after) == (503, 5)
