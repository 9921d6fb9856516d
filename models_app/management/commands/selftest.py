from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.models import LLMModel
from models_app.server_api import ServerRefused, ServerUnreachable
from models_app.serving import self_test_model
from models_app.tasks import BrokerUnavailable, enqueue
from models_app.tasks import run_self_test as run_self_test_task


class Command(BaseCommand):
    help = "Self-test MODEL (default: every enabled model) through the running server's /v1; exit 1 if one fails."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", nargs="?", help="Model id (default: every enabled model)")
        parser.add_argument("--queue", action="store_true", help="Queue it for the Celery worker instead of waiting")

    def handle(self, *args: Any, model: str | None = None, queue: bool = False, **options: Any) -> None:
        models = LLMModel.objects.filter(pk=model) if model else LLMModel.objects.filter(enabled=True)
        model_ids = list(models.values_list("pk", flat=True))
        if not model_ids:
            raise CommandError(f"No model '{model}'; see `manage.py scan_models`." if model else "No enabled model.")
        if queue:
            try:
                for model_id in model_ids:
                    self.stdout.write(f"{model_id}: queued as task {enqueue(run_self_test_task, model_id)}")
            except BrokerUnavailable as exc:
                raise CommandError(str(exc)) from exc
            return
        failed = 0
        for model_id in model_ids:
            try:
                result = self_test_model(model_id=model_id)
            except ServerUnreachable as exc:
                raise CommandError(f"{exc}; is the server running at {settings.SERVER_URL}?") from exc
            except ServerRefused as exc:  # no service token yet: only the self-test's own calls are recorded
                raise CommandError(str(exc)) from exc
            if result.passed:
                speed = f"{result.tokens_per_s or 0:.1f} tokens/s, first token after {result.time_to_first_token_ms}ms"
                self.stdout.write(self.style.SUCCESS(f"{model_id}: passed, {speed}: {result.output_excerpt!r}"))
            else:
                failed += 1
                self.stdout.write(self.style.ERROR(f"{model_id}: FAILED: {result.reason}"))
        if failed:
            raise CommandError(f"{failed} of {len(model_ids)} self-test(s) failed", returncode=1)
