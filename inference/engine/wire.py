"""The messages web nodes and inference nodes exchange over the channel layer.

Web node -> inference node (the node's own channel, `InferenceNode.channel`):
    inference.generate / inference.embed  {id, spec, job, age_s, reply_to}
    inference.cancel                      {id}
    inference.load                        {id, spec, keep_alive_s, reply_to}
    inference.unload                      {id, model_id, reply_to}
Inference node -> the requester's reply channel (every message carries `id` and `node`,
the sender's channel, so a reply from a node the job has left is recognised and dropped):
    inference.start   {prompt_tokens}   the job holds a place in the node's queue
    inference.token   {text, n, logprobs?}  text decoded since the last one (~20 ms); n: tokens so far
    inference.done    {outcome}         how the job ended (completed, cancelled, error, timeout)
    inference.error   {error}           refused before admission: {kind, message, param, code}
    inference.result  {result}          the answer to load / unload

Everything is plain data (msgpack through channels-redis): dataclasses travel as dicts.
"""

from dataclasses import asdict, fields
from typing import Any

from inference.engine.jobs import Job, Outcome, Sampling
from inference.engine.llama_runner import PromptError
from inference.engine.pool import ModelBusy, ModelLoadFailed, NoRoom
from inference.engine.scheduler import QueueFull, SchedulerDown
from inference.engine.spec import ModelSpec

NODE_CHANNEL = "inference"  # `manage.py runworker inference`

GENERATE, EMBED, CANCEL = "inference.generate", "inference.embed", "inference.cancel"
LOAD, UNLOAD = "inference.load", "inference.unload"
QUEUED = "inference.queued"  # where a job waits in its model's queue, while it waits
START, TOKEN, DONE, ERROR, RESULT = (
    "inference.start",
    "inference.token",
    "inference.done",
    "inference.error",
    "inference.result",
)


class NodeUnavailable(NoRoom):
    """No live inference node holds the model or may load it (503 with Retry-After, like NoRoom)."""


class NodeFailed(RuntimeError):
    """A node failed in a way the client cannot act on (500)."""


def encode_job(job: Job) -> dict[str, Any]:
    data = asdict(job)
    # msgpack maps keep string keys only; token ids go over as strings.
    data["sampling"]["logit_bias"] = {str(k): v for k, v in job.sampling.logit_bias.items()}
    del data["submitted_at_perf"]  # a perf_counter reading means nothing on another machine
    return data


def decode_job(data: dict[str, Any], *, submitted_at_perf: float) -> Job:
    sampling = dict(data["sampling"])
    sampling["logit_bias"] = {int(k): v for k, v in sampling["logit_bias"].items()}
    return Job(**{**data, "sampling": Sampling(**sampling), "submitted_at_perf": submitted_at_perf})


def encode_spec(spec: ModelSpec) -> dict[str, Any]:
    return asdict(spec)


def decode_spec(data: dict[str, Any]) -> ModelSpec:
    return ModelSpec(**data)


def encode_outcome(outcome: Outcome) -> dict[str, Any]:
    return asdict(outcome)


def decode_outcome(data: dict[str, Any]) -> Outcome:
    # A node on another version may send fields this one lacks (a rolling upgrade): drop them.
    known = {f.name for f in fields(Outcome)}
    return Outcome(**{k: v for k, v in data.items() if k in known})


def describe_refusal(exc: BaseException) -> dict[str, Any]:
    """The `error` body of inference.error for an exception raised before admission."""
    kinds = [
        (PromptError, "prompt"),
        (QueueFull, "queue_full"),
        (ModelBusy, "model_busy"),
        (ModelLoadFailed, "load_failed"),
        (NoRoom, "no_room"),
        (SchedulerDown, "scheduler_down"),
    ]
    kind = next((name for cls, name in kinds if isinstance(exc, cls)), "internal")
    return {
        "kind": kind,
        "message": str(exc) if kind != "internal" else f"{type(exc).__name__}: {exc}",
        "param": getattr(exc, "param", None),
        "code": getattr(exc, "code", None),
        "depth": getattr(exc, "depth", 0),
        "retry_after_s": getattr(exc, "retry_after_s", 0),
    }


def refusal_exception(error: dict[str, Any], *, model_id: str, node: str) -> Exception:
    """The same exception the node raised, so `as_api_error` answers as it would locally."""
    kind, message = error["kind"], error["message"]
    if kind == "prompt":
        return PromptError(message, param=error["param"] or "messages", code=error["code"] or "invalid_prompt")
    if kind == "queue_full":
        exc = QueueFull(model_id, error.get("depth", 0))
        exc.args = (f"{message} (node {node})",)
        return exc
    if kind == "load_failed":
        return ModelLoadFailed(f"{message} (node {node})", retry_after_s=float(error.get("retry_after_s") or 5))
    if kind == "node_draining":
        return NodeUnavailable(f"{message}; retry shortly")
    by_kind = {"model_busy": ModelBusy, "no_room": NoRoom, "scheduler_down": SchedulerDown}
    if kind in by_kind:
        return by_kind[kind](f"{message} (node {node})")
    return NodeFailed(f"inference node {node} failed: {message}")
