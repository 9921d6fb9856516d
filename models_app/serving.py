"""Work the Celery worker does against the serving process: preload models and self-test them.

Both go through the server's own API (models_app/server_api.py), never through a
llama.cpp of their own, so they test and warm the process that clients actually reach.
ServerUnreachable propagates: the tasks retry it, since it usually means "not up yet".
"""

from collections.abc import Collection
from dataclasses import dataclass, field

from models_app.models import LLMModel, SelfTestResult
from models_app.server_api import ServerAPI, ServerRefused
from models_app.services import record_self_test

# Greedy and seeded, so a model gives the same short answer every day and a change stands out.
SELF_TEST_MESSAGES = [{"role": "user", "content": "Reply with one word: what colour is the sky on a clear day?"}]
SELF_TEST_PARAMS = {"max_tokens": 8, "temperature": 0.0, "seed": 42, "stream": False}
# The server's error code when llama.cpp could not load the file: the model is at fault,
# unlike "no room" or "busy", which say something about the server's load right now.


@dataclass
class PreloadReport:
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # model id -> the server's reason

    def as_dict(self) -> dict[str, object]:
        return {"loaded": self.loaded, "failed": self.failed}


def preload_models(*, model_ids: Collection[str] | None = None, api: ServerAPI | None = None) -> PreloadReport:
    """Ask the server to load the enabled models marked `preload`, or exactly those in `model_ids`.

    Refusals are reported and change nothing here: a failed load is recorded by the server
    itself (load_failures, last_load_error, retry after a back-off); only the probe marks a
    file invalid.
    """
    api = api or ServerAPI()
    if model_ids is None:
        model_ids = list(LLMModel.objects.filter(preload=True, enabled=True).values_list("pk", flat=True))
    report = PreloadReport()
    for model_id in model_ids:
        try:
            api.load_model(model_id)
        except ServerRefused as exc:
            report.failed[model_id] = str(exc)  # a failed load is recorded by the server, with its back-off
        else:
            report.loaded.append(model_id)
    return report


def self_test_model(*, model_id: str, task_id: str = "", api: ServerAPI | None = None) -> SelfTestResult:
    """Load the model on the server, send the fixed prompt through /v1/chat/completions, record the outcome."""
    api = api or ServerAPI()
    try:
        api.load_model(model_id)  # first, so the timings below measure inference, not loading
        body = api.chat(model_id, SELF_TEST_MESSAGES, **SELF_TEST_PARAMS)
    except ServerRefused as exc:
        return record_self_test(model_id=model_id, passed=False, reason=str(exc), task_id=task_id)
    choice = body["choices"][0]
    text = choice["message"].get("content") or ""
    usage, timings = body.get("usage") or {}, body.get("timings") or {}
    completion_tokens = usage.get("completion_tokens") or 0
    reason = ""
    if completion_tokens == 0 or not text.strip():
        reason = f"the model produced no text ({completion_tokens} tokens, finish_reason {choice['finish_reason']})"
    elif choice["finish_reason"] not in ("stop", "length"):
        reason = f"generation ended with finish_reason {choice['finish_reason']!r}"
    return record_self_test(
        model_id=model_id,
        passed=not reason,
        reason=reason,
        time_to_first_token_ms=timings.get("queue_and_prompt_ms"),
        tokens_per_s=timings.get("decode_tokens_per_s"),
        completion_tokens=completion_tokens,
        output=text,
        task_id=task_id,
    )
