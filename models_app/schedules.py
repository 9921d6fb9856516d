"""The default periodic schedules: django-celery-beat rows, created once, then edited in the admin."""

from typing import Any

from django.db import models, transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

SCAN_SCHEDULE = "scan MODELS_DIR"
SELF_TEST_SCHEDULE = "self-test enabled models"
STALE_USAGE_SCHEDULE = "close stale usage rows"
ROLLUP_SCHEDULE = "roll up usage for the dashboard"


def _first_or_create(model: type[models.Model], **fields: Any) -> models.Model:
    # Schedules carry no unique constraint, so the admin may have made twins; any one will do.
    return model.objects.filter(**fields).first() or model.objects.create(**fields)


@transaction.atomic
def ensure_default_schedules() -> list[str]:
    """Create the default schedules that do not exist yet; return the names of those it created.

    A schedule that exists is left as the admin edited it, disabled included; one that was
    deleted comes back at the next `manage.py serve`, so disable a schedule rather than delete it.
    """
    created = []
    if not PeriodicTask.objects.filter(name=SCAN_SCHEDULE).exists():
        PeriodicTask.objects.create(
            name=SCAN_SCHEDULE,
            task="models_app.tasks.scan_models",
            interval=_first_or_create(IntervalSchedule, every=5, period=IntervalSchedule.MINUTES),
            expire_seconds=4 * 60,  # a scan that waited past its interval is superseded by the next one
            description="Register new GGUF files in MODELS_DIR, refresh changed ones, mark vanished ones missing.",
        )
        created.append(SCAN_SCHEDULE)
    if not PeriodicTask.objects.filter(name=SELF_TEST_SCHEDULE).exists():
        daily = _first_or_create(CrontabSchedule, minute="30", hour="3", day_of_month="*", month_of_year="*",
                                 day_of_week="*", timezone="UTC")  # fmt: skip
        PeriodicTask.objects.create(
            name=SELF_TEST_SCHEDULE,
            task="models_app.tasks.run_self_test",
            crontab=daily,
            expire_seconds=60 * 60,
            description="A short fixed prompt through /v1/chat/completions for every enabled model, daily.",
        )
        created.append(SELF_TEST_SCHEDULE)
    if not PeriodicTask.objects.filter(name=STALE_USAGE_SCHEDULE).exists():
        PeriodicTask.objects.create(
            name=STALE_USAGE_SCHEDULE,
            task="models_app.tasks.close_stale_usage",
            interval=_first_or_create(IntervalSchedule, every=10, period=IntervalSchedule.MINUTES),
            expire_seconds=9 * 60,
            description="Close usage rows a crashed web node left `started` (older than USAGE_STALE_AFTER_S).",
        )
        created.append(STALE_USAGE_SCHEDULE)
    if not PeriodicTask.objects.filter(name=ROLLUP_SCHEDULE).exists():
        PeriodicTask.objects.create(
            name=ROLLUP_SCHEDULE,
            task="models_app.tasks.roll_up_usage",
            interval=_first_or_create(IntervalSchedule, every=1, period=IntervalSchedule.MINUTES),
            expire_seconds=50,
            description="Fold finished usage rows into the hourly and daily rollups the dashboard reads.",
        )
        created.append(ROLLUP_SCHEDULE)
    return created
