"""The Celery app: broker and schedules come from Django settings (CELERY_*)."""

import os

from celery import Celery
from celery.signals import task_prerun

from karen_host.logs import bind_for_rest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")

app = Celery("karen_host")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
def _log_under_the_task(task_id: str | None = None, task: object = None, **_: object) -> None:
    """A task's records carry its id and name (the request id of background work)."""
    bind_for_rest(task_id=task_id, task=getattr(task, "name", None))
