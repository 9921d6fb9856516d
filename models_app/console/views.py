"""The admin's console pages: dashboard (the index), live view and playground. Staff only (the site checks)."""

from datetime import datetime, timedelta
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from inference.engine import get_engine
from inference.metering import counters
from models_app.console.charts import legend_html, stacked_bars
from models_app.console.health import health_checks
from models_app.models import LLMModel
from models_app.selectors import servable_models
from models_app.usage_rollup import roll_up_usage, usage_dashboard


def dashboard(request: HttpRequest, context: dict[str, Any]) -> TemplateResponse:
    """Health, each model's state, and charts and tables of the last 24 hours and 30 days."""
    roll_up_usage()  # what finished since the last look (a few rows; Celery beat keeps it short)
    now = timezone.now()
    windows = {name: _window(usage_dashboard(window=name, now=now), now) for name in ("24h", "30d")}
    refusals = counters.snapshot()
    context.update(
        title="Dashboard",
        health=health_checks(),
        models=_model_states(),
        windows=windows,
        refused=refusals["rejected"],
        limited=refusals["limited"],
        apps_url=reverse("admin:apps"),
        usage_url=reverse("admin:models_app_usagerecord_changelist"),
    )
    return TemplateResponse(request, "admin/console/dashboard.html", context)


def _window(summary: dict[str, Any], now: datetime) -> dict[str, Any]:
    if summary["step"] == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        xs = [start - timedelta(hours=23 - i) for i in range(24)]
        label = "%H:00"
    else:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        xs = [start - timedelta(days=29 - i) for i in range(30)]
        label = "%m-%d"
    labels = [x.strftime(label) for x in xs]

    def points(field: str) -> list[tuple[str, str, float]]:
        return [(datetime.fromisoformat(r["t"]).strftime(label), r["model"] or "(none)", r[field])
                for r in summary["series"]]  # fmt: skip

    span = "24 hours" if summary["step"] == "hour" else "30 days"
    charts = [stacked_bars(f"Requests per model, last {span}", labels, points("requests"), "requests"),
              stacked_bars(f"Tokens per model, last {span}", labels, points("tokens"), "tokens")]  # fmt: skip
    return {**summary, "charts": [(c, legend_html(c)) for c in charts], "span": span}


def _model_states() -> list[dict[str, Any]]:
    loaded = {m["id"]: m for m in get_engine().status()["loaded"]}
    states = []
    for model in servable_models():
        state = loaded.get(model.id)
        states.append({"id": model.id, "name": model.name, "loaded": state is not None, "state": state,
                       "change_url": reverse("admin:models_app_llmmodel_change", args=[model.pk]),
                       "live_url": reverse("admin:live")})  # fmt: skip
    return states


def live(request: HttpRequest, context: dict[str, Any]) -> TemplateResponse:
    """Each loaded model's slots, queue and prompt cache, refreshed by polling `live_json`."""
    context.update(title="Live view", live_json_url=reverse("admin:live_json"), poll_ms=1500)
    return TemplateResponse(request, "admin/console/live.html", context)


def live_json(request: HttpRequest) -> JsonResponse:
    """The live view's data: per loaded model, its status row and its slots and queue."""
    engine = get_engine()
    status = {m["id"]: m for m in engine.status()["loaded"]}
    detail = engine.live()
    models = [{"id": model_id, "status": status.get(model_id), **detail.get(model_id, {})}
              for model_id in sorted(set(status) | set(detail))]  # fmt: skip
    return JsonResponse({"at": timezone.now().isoformat(), "models": models})


def playground(request: HttpRequest, context: dict[str, Any]) -> TemplateResponse:
    """A chat with any servable model over the websocket, as the staff user (metered to their playground token)."""
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
