"""Usage metering shared by HTTP and websockets: one row per admitted request, closed once."""

import logging
import threading
from collections import Counter
from dataclasses import dataclass

from django.db import close_old_connections

from inference import tracing
from inference.engine.jobs import Job, Outcome
from models_app.services import finalize_usage, start_usage

logger = logging.getLogger(__name__)


class RequestCounters:
    """In-process counters for /performance and metrics: requests by endpoint and ending."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finished: Counter[tuple[str, str]] = Counter()
        self.rejected: Counter[tuple[str, int]] = Counter()
        self.limited: Counter[str] = Counter()  # refusals by the token limit exceeded (also in `rejected`)
        self.completion_tokens = 0
        self.prompt_tokens = 0

    def count_finished(self, endpoint: str, outcome: Outcome) -> None:
        with self._lock:
            self.finished[(endpoint, outcome.status)] += 1
            self.completion_tokens += outcome.completion_tokens
            self.prompt_tokens += outcome.prompt_tokens

    def count_rejected(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.rejected[(endpoint, status)] += 1

    def count_limited(self, limit: str) -> None:
        with self._lock:
            self.limited[limit] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "finished": {f"{e}:{s}": n for (e, s), n in sorted(self.finished.items())},
                "rejected": {f"{e}:{s}": n for (e, s), n in sorted(self.rejected.items())},
                "limited": dict(sorted(self.limited.items())),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }


counters = RequestCounters()


@dataclass
class Meter:
    """The usage row of one request: `admit` before the engine, `finalize` when it ends."""

    request_id: str
    endpoint: str
    token_id: int | None
    model_id: str
    client_address: str | None
    lane: str = "interactive"
    job: Job | None = None  # for the trace: how long it waited for its model to load

    def admit(self) -> None:
        start_usage(
            request_id=self.request_id,
            token_id=self.token_id,
            model_id=self.model_id,
            endpoint=self.endpoint,
            client_address=self.client_address,
            lane=self.lane,
        )

    def finalize(self, outcome: Outcome) -> None:
        """Close the row from the engine's outcome (runs on the worker thread)."""
        counters.count_finished(self.endpoint, outcome)
        try:
            finalize_usage(
                request_id=self.request_id,
                status=outcome.status,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                time_to_first_token_ms=outcome.time_to_first_token_ms,
                duration_ms=outcome.duration_ms,
                error_message=outcome.error,
            )
        except Exception:  # the row stays `started`; the reconciler closes it as interrupted
            logger.exception("could not finalize usage %s", self.request_id)
        else:
            tracing.record_request(request_id=self.request_id, endpoint=self.endpoint, model_id=self.model_id,
                                   token_id=self.token_id, outcome=outcome,
                                   load_ms=self.job.load_ms if self.job else 0.0)  # fmt: skip
            logger.info(
                "%s %s on %s: %s, %d+%d tokens", self.endpoint, self.request_id, self.model_id, outcome.status,
                outcome.prompt_tokens, outcome.completion_tokens,
                extra={"request_id": self.request_id, "endpoint": self.endpoint, "model": self.model_id,
                       "token_id": self.token_id, "status": outcome.status, "prompt_tokens": outcome.prompt_tokens,
                       "completion_tokens": outcome.completion_tokens, "ttft_ms": outcome.time_to_first_token_ms,
                       "duration_ms": round(outcome.duration_ms, 1)},
            )  # fmt: skip
        finally:
            close_old_connections()
