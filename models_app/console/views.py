"""The admin's console pages: dashboard (the index), live view and playground. Staff only (the site checks)."""

from datetime import datetime, timedelta
from typing import Any

from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from inference.engine import get_engine
from inference.metering import counters
from models_app.console.charts import legend_html, lines, stacked_bars
from models_app.console.health import health_checks
from models_app.models import LLMModel
from models_app.selectors import servable_models
from models_app.services import PLAYGROUND_PERMISSION
from models_app.usage_rollup import roll_up_usage, rollup_backlog, usage_dashboard

FOLD_BATCH, FOLD_BATCHES = 5_000, 4  # rows a dashboard view folds at most (~0.2 s); beat does the rest


def dashboard(request: HttpRequest, context: dict[str, Any]) -> TemplateResponse:
    """Health, each model's state, and charts and tables of the last 24 hours and 30 days."""
    # What finished since the last look: a few rows, as Celery beat folds them every minute. A
    # backlog (the first look after an upgrade) is left to beat beyond a few batches.
    folded = roll_up_usage(batch=FOLD_BATCH, max_batches=FOLD_BATCHES)
    backlog = rollup_backlog() if folded == FOLD_BATCH * FOLD_BATCHES else 0
    now = timezone.now()
    tokens = None if may_see_all_usage(request.user) else list(request.user.api_tokens.values_list("pk", flat=True))
    windows = {name: _window(usage_dashboard(window=name, now=now, token_ids=tokens), now) for name in ("24h", "30d")}
    refusals = counters.snapshot()
    context.update(
        title="Dashboard",
        health=(health := health_checks()),
        ready=all(c["ok"] for c in health if "since" in c),
        backlog=backlog,
        own_usage_only=tokens is not None,
        models=_model_states(),
        windows=windows,
        refused=refusals["rejected"],
        limited=refusals["limited"],
        apps_url=reverse("admin:apps"),
        usage_url=reverse("admin:models_app_usagerecord_changelist"),
    )
    return TemplateResponse(request, "admin/console/dashboard.html", context)


def _window(summary: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The summary with its charts: per model, per token, latency and endings, one x label per hour or day."""
    hourly = summary["step"] == "hour"
    if hourly:
        start = now.replace(minute=0, second=0, microsecond=0)
        xs = [start - timedelta(hours=23 - i) for i in range(24)]
    else:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        xs = [start - timedelta(days=29 - i) for i in range(30)]
    label = "%H:00" if hourly else "%m-%d"
    labels = [x.strftime(label) for x in xs]

    def at(iso: str) -> str:
        return datetime.fromisoformat(iso).strftime(label)

    def points(series: str, name: str, field: str) -> list[tuple[str, str, float]]:
        return [(at(r["t"]), r[name] or "(none)", r[field]) for r in summary[series]]

    latency = {at(r["t"]): r for r in summary["latency_series"]}

    def percentile_lines(metric: str, points: tuple[str, str]) -> dict[str, list[float | None]]:
        return {p: [latency[x][metric][p] if x in latency else None for x in labels] for p in points}

    span = "24 hours" if hourly else "30 days"
    charts = [
        stacked_bars(f"Requests per model, last {span}", labels, points("series", "model", "requests"), "requests"),
        stacked_bars(f"Tokens per model, last {span}", labels, points("series", "model", "tokens"), "tokens"),
        stacked_bars(f"Requests per token, last {span}", labels, points("token_series", "token", "requests"),
                     "requests"),
        stacked_bars(f"Tokens per token, last {span}", labels, points("token_series", "token", "tokens"), "tokens"),
        lines(f"Time to first token (ms), last {span}", labels, percentile_lines("ttft_ms", ("p50", "p95")), "ms"),
        lines(f"Decode tokens/s, last {span}", labels, percentile_lines("decode_tokens_per_s", ("p50", "p5")),
              "tokens/s"),
        stacked_bars(f"Requests not completed, by ending, last {span}", labels,
                     points("ending_series", "status", "requests"), "requests"),
    ]  # fmt: skip
    return {**summary, "charts": [(c, legend_html(c)) for c in charts], "span": span}


def _model_states() -> list[dict[str, Any]]:
    loaded = {m["id"]: m for m in get_engine().status()["loaded"]}
    states = []
    for model in servable_models():
        state = loaded.get(model.id)
        states.append({"id": model.id, "name": model.name, "loaded": state is not None, "state": state,
                       "change_url": reverse("admin:models_app_llmmodel_change", args=[quote(model.pk)]),
                       "live_url": reverse("admin:live")})  # fmt: skip
    return states


def may_see_all_usage(user: Any) -> bool:
    """Whether a staff user may see every token's requests (the usage list's permission), not only their own."""
    return user.has_perm("models_app.view_usagerecord")


def live(request: HttpRequest, context: dict[str, Any]) -> TemplateResponse:
    """Each loaded model's slots, queue and prompt cache, refreshed by polling `live_json`."""
    if not may_see_all_usage(request.user):  # every token's requests are on it
        raise PermissionDenied
    context.update(title="Live view", live_json_url=reverse("admin:live_json"), poll_ms=1500)
    return TemplateResponse(request, "admin/console/live.html", context)


def live_json(request: HttpRequest) -> JsonResponse:
    """The live view's data: per loaded model, its status row and its slots and queue."""
    if not may_see_all_usage(request.user):
        raise PermissionDenied
    engine = get_engine()
    status = {m["id"]: m for m in engine.status()["loaded"]}
    detail = engine.live()
    models = [{"id": model_id, "status": status.get(model_id), **detail.get(model_id, {})}
              for model_id in sorted(set(status) | set(detail))]  # fmt: skip
    return JsonResponse({"at": timezone.now().isoformat(), "models": models})


def playground(request: HttpRequest, context: dict[str, Any]) -> TemplateResponse:
    """A chat with any servable model over the websocket, as the staff user (metered to their playground token)."""
    if not request.user.has_perm(PLAYGROUND_PERMISSION):
        raise PermissionDenied
    models = [
        {
            "id": m.id,
            "name": m.name,
            "system_prompt": m.config.system_prompt,
            "temperature": m.config.temperature,
            "top_p": m.config.top_p,
            "top_k": m.config.top_k,
            "max_tokens": m.config.max_tokens,
            "repeat_penalty": m.config.repeat_penalty,
        }
        for m in LLMModel.objects.filter(pk__in=[m.pk for m in servable_models()]).select_related("config")
    ]
    context.update(title="Playground", models=models)
    return TemplateResponse(request, "admin/console/playground.html", context)
