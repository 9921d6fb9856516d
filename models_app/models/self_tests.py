"""Self-tests: a fixed short prompt through the real /v1 path, and what came back."""

from typing import Any

from django.db import models

__all__ = ["SelfTestResult"]


class SelfTestResult(models.Model):
    """One self-test of a model: did the server answer, how fast, and what it said."""

    model = models.ForeignKey("models_app.LLMModel", on_delete=models.CASCADE, related_name="self_tests")
    passed = models.BooleanField()
    reason = models.TextField(blank=True, help_text="Why it failed; empty when it passed.")
    time_to_first_token_ms = models.FloatField(
        "time to first token (ms)", null=True, blank=True, help_text="Queue and prompt time the server measured."
    )
    tokens_per_s = models.FloatField("tokens/s", null=True, blank=True, help_text="Decode speed the server measured.")
    completion_tokens = models.PositiveIntegerField(default=0)
    output_excerpt = models.CharField(max_length=200, blank=True)
    task_id = models.CharField(max_length=64, blank=True, help_text="The Celery task that ran it, if any.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "self-test result"
        indexes = [models.Index(fields=["model", "-created_at"], name="selftest_model_created")]

    def __str__(self) -> str:
        return f"{self.model_id}: {'passed' if self.passed else 'failed'} at {self.created_at:%Y-%m-%d %H:%M}"

    def to_dict(self) -> dict[str, Any]:
        """What /health/selftest shows for this result (not the output: the endpoint is open)."""
        return {
            "model": self.model_id,
            "passed": self.passed,
            "reason": self.reason,
            "time_to_first_token_ms": self.time_to_first_token_ms,
            "tokens_per_s": self.tokens_per_s,
            "completion_tokens": self.completion_tokens,
            "ran_at": self.created_at.isoformat(),
        }
