"""Usage: one row per admitted request, written at admission and finalized once."""

from django.db import models

from models_app.choices import Lane, UsageStatus

__all__ = ["UsageRecord"]


class UsageRecord(models.Model):
    """What one request cost: tokens in and out, time, and how it ended."""

    request_id = models.CharField(max_length=64, unique=True)
    token = models.ForeignKey(
        "models_app.APIToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    model = models.ForeignKey(
        "models_app.LLMModel", null=True, blank=True, on_delete=models.PROTECT, related_name="usage"
    )
    endpoint = models.CharField(max_length=64)
    lane = models.CharField(max_length=16, choices=Lane.choices, default=Lane.INTERACTIVE, db_index=True)
    status = models.CharField(max_length=16, choices=UsageStatus.choices, default=UsageStatus.STARTED)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    time_to_first_token_ms = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=["status", "created_at"], name="usage_status_created")]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.request_id} ({self.status})"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
