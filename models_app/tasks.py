"""Celery tasks: each loads by id, calls a service, and returns a summary for the results admin.

Import them with a `_task` suffix (`from models_app.tasks import scan_models as scan_models_task`)
so a task never reads as the service of the same name, and queue them with `enqueue`.
"""

import logging
from typing import Any

from celery import Task, shared_task
from celery.utils import uuid
from django.conf import settings
from django.db import transaction
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from models_app import serving
from models_app.models import LLMModel
from models_app.scanning import rescan_model as rescan_model_file
from models_app.scanning import scan_models_exclusively
from models_app.server_api import ServerUnreachable
from models_app.services import close_interrupted_usage
from models_app.usage_rollup import roll_up_usage

logger = logging.getLogger(__name__)

# The server may be starting (the preload queued at startup) or restarting: back off
# 2, 4, 8 ... 60 s, about five minutes in all, before the task gives up as failed.
RETRY_WHILE_SERVER_IS_DOWN = {
    "autoretry_for": (ServerUnreachable,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": 8,
}


class BrokerUnavailable(RuntimeError):
    """The Celery broker could not be reached; nothing was queued."""


def enqueue(task: Task, *args: Any) -> str:
    """Queue `task(*args)` once the current transaction commits; return its id at once.

    Outside a transaction it is sent now, and BrokerUnavailable says so if the broker is
    down. Inside one, a broker failure at commit is logged instead: the rows it was
    about are committed by then, and raising would only hide that.
    """
    task_id = uuid()

    def send() -> None:
        task.apply_async(args, task_id=task_id)

    try:
        transaction.on_commit(send, robust=transaction.get_connection().in_atomic_block)
    except OperationalError as exc:
        url = maybe_sanitize_url(task.app.conf.broker_url)
        raise BrokerUnavailable(f"the Celery broker at {url} is not reachable ({exc}); nothing was queued") from exc
    return task_id


@shared_task
def scan_models() -> dict[str, Any]:
    """Bring the registry in line with MODELS_DIR: the scheduled scan, also run on demand."""
    report = scan_models_exclusively()
    if report is None:
        logger.info("scan skipped: another scan is still running")
        return {"skipped": "another scan is still running"}
    logger.info("scan of MODELS_DIR: %s", report.summary())
    return {
        "summary": report.summary(),
        "added": report.added,
        "updated": report.updated,
        "missing": report.missing,
        "invalid": report.invalid,
        "messages": report.messages,
    }


@shared_task(name="models_app.tasks.roll_up_usage")
def roll_up_usage_task() -> dict[str, int]:
    """Fold finished usage rows into the dashboard's rollups (each render also folds what is left)."""
    return {"rolled_up": roll_up_usage()}


@shared_task
def close_stale_usage() -> dict[str, int]:
    """Close usage rows left `started` longer than any request can run (a crashed web node)."""
    return {"closed": close_interrupted_usage(older_than_s=settings.USAGE_STALE_AFTER_S)}


@shared_task
def rescan_model(model_id: str) -> dict[str, str]:
    """Hash and probe one registered model's file again."""
    model = rescan_model_file(LLMModel.objects.get(pk=model_id))
    return {"model": model.id, "status": model.status, "reason": model.status_reason}


@shared_task(**RETRY_WHILE_SERVER_IS_DOWN)
def preload_models(model_ids: list[str] | None = None) -> dict[str, Any]:
    """Have the server load the models marked `preload` (or exactly `model_ids`), then self-test each one loaded.

    Readiness waits for a preload model's latest self-test to pass: the first runs now, not at the daily hour.
    """
    report = serving.preload_models(model_ids=model_ids)
    return {**report.as_dict(), "self_tests": {pk: enqueue(run_self_test, pk) for pk in report.loaded}}


@shared_task(bind=True, **RETRY_WHILE_SERVER_IS_DOWN)
def run_self_test(self: Task, model_id: str | None = None) -> dict[str, Any]:
    """Self-test one model; without `model_id`, queue one self-test per enabled model."""
    if model_id is None:
        model_ids = LLMModel.objects.filter(enabled=True).values_list("pk", flat=True)
        return {"queued": {pk: enqueue(run_self_test, pk) for pk in model_ids}}
    model = LLMModel.objects.get(pk=model_id)
    result = serving.self_test_model(model_id=model.pk, task_id=self.request.id or "")
    return {
        "model": result.model_id,
        "passed": result.passed,
        "reason": result.reason,
        "tokens_per_s": result.tokens_per_s,
        "time_to_first_token_ms": result.time_to_first_token_ms,
    }
