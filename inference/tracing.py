"""OpenTelemetry traces, when OTEL_EXPORTER_OTLP_ENDPOINT is set: one span per request, with its phases.

Each finished request becomes a `request` span (its request id, endpoint, model, token,
ending and token counts as attributes) with child spans for what the engine measured:
`model_load` (when the request waited for its model to load), `queue_wait`, `prefill`
and `decode`. They are written once the request ends, from the outcome's timings, so the
decode thread never waits on a tracer. The OTLP/HTTP exporter reads the standard
OTEL_* variables (endpoint, headers, OTEL_SERVICE_NAME).
"""

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from inference.engine import Outcome

if TYPE_CHECKING:  # the SDK is imported only when tracing is on: a server without it keeps ~5 MB
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

logger = logging.getLogger(__name__)
_tracer: "Tracer | None" = None


def configure(exporter: "SpanExporter | None" = None) -> bool:
    """Start tracing: to `exporter` (tests), else OTLP/HTTP if OTEL_EXPORTER_OTLP_ENDPOINT is set; True if on."""
    global _tracer
    if exporter is None and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        _tracer = None
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        processor = SimpleSpanProcessor(exporter)
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "karen-host")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    _tracer = provider.get_tracer("karen_host")
    logger.info("tracing requests to %s", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or type(exporter).__name__)
    return True


def stop() -> None:
    global _tracer
    _tracer = None


def record_request(*, request_id: str, endpoint: str, model_id: str, token_id: int | None, outcome: Outcome,
                   load_ms: float = 0.0) -> None:  # fmt: skip
    """Write the finished request's span tree, ending now and laid out backwards from the outcome's timings."""
    tracer = _tracer
    if tracer is None:
        return
    from opentelemetry.trace import Status, StatusCode, set_span_in_context

    end = time.time_ns()
    start = end - int(outcome.duration_ms * 1e6)
    attributes: dict[str, Any] = {
        "karen.request_id": request_id, "karen.endpoint": endpoint, "karen.status": outcome.status,
        "karen.token_id": token_id or 0, "gen_ai.request.model": model_id,
        "gen_ai.usage.input_tokens": outcome.prompt_tokens, "gen_ai.usage.output_tokens": outcome.completion_tokens,
        "gen_ai.response.finish_reasons": [outcome.finish_reason],
    }  # fmt: skip
    if outcome.time_to_first_token_ms is not None:
        attributes["karen.time_to_first_token_ms"] = outcome.time_to_first_token_ms
    root = tracer.start_span(endpoint, start_time=start, attributes=attributes)
    if outcome.status not in ("completed", "cancelled"):
        root.set_status(Status(StatusCode.ERROR, outcome.error[:200]))
    context = set_span_in_context(root)
    cursor = end
    for name, ms in (("decode", outcome.decode_ms), ("prefill", outcome.prompt_ms), ("queue_wait", outcome.queue_ms),
                     ("model_load", load_ms)):  # fmt: skip
        if ms <= 0:
            continue
        phase_start = max(start, cursor - int(ms * 1e6))
        tracer.start_span(name, context=context, start_time=phase_start).end(end_time=cursor)
        cursor = phase_start
    root.end(end_time=end)
