"""The Celery app: broker and schedules come from Django settings (CELERY_*)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")

app = Celery("karen_host")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
