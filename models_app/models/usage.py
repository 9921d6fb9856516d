"""Usage: one row per admitted request, written at admission and finalized once."""

from django.db import models

from models_app.choices import Lane, UsageStatus

__all__ = ["LatencyRollup", "RollupSpan", "UsageRecord", "UsageRollup"]


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
    # Counted into UsageRollup and LatencyRollup (models_app.usage_rollup); only finished rows are.
    rolled_up = models.BooleanField(default=False, editable=False)

    class Meta:
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=["status", "created_at"], name="usage_status_created"),
            # The rollup's "what is new": a small index, since rows leave it once counted.
            models.Index(fields=["id"], condition=models.Q(rolled_up=False), name="usage_not_rolled_up"),
            models.Index(fields=["token", "created_at"], name="usage_token_created"),
            models.Index(fields=["model", "created_at"], name="usage_model_created"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.request_id} ({self.status})"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RollupSpan(models.TextChoices):
    HOUR = "hour", "hour"
    DAY = "day", "day"


class UsageRollup(models.Model):
    """Finished requests of one UTC hour or day, per model, token and status: what the dashboard charts.

    Sums, never means, so that they add up exactly. Ids are kept as plain values (0 and ""
    for none) so that a deleted token's history stays.
    """

    span = models.CharField(max_length=4, choices=RollupSpan.choices)
    start = models.DateTimeField()
    model_id = models.CharField(max_length=200, blank=True)
    token_id = models.PositiveBigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=UsageStatus.choices)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    ttft_count = models.PositiveIntegerField(default=0)  # rows with a time to first token
    ttft_ms_sum = models.FloatField(default=0.0)
    decode_tokens = models.PositiveBigIntegerField(default=0)  # tokens after the first, over their time
    decode_ms_sum = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["span", "start", "model_id", "token_id", "status"], name="usage_rollup_key")
        ]

    def __str__(self) -> str:
        return f"{self.span} from {self.start:%Y-%m-%d %H}:00 {self.model_id} {self.status}: {self.requests}"


class LatencyRollup(models.Model):
    """How many requests of one hour or day and model fell in one latency bucket: percentiles without the rows.

    `metric` is `ttft` (time to first token, ms) or `tps` (decode tokens/s); the bucket
    edges are in models_app.usage_rollup, growing by 20% each, so a percentile read off
    them is within 10% of the exact one.
    """

    span = models.CharField(max_length=4, choices=RollupSpan.choices)
    start = models.DateTimeField()
    model_id = models.CharField(max_length=200, blank=True)
    metric = models.CharField(max_length=8)
    bucket = models.PositiveSmallIntegerField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["span", "start", "model_id", "metric", "bucket"], name="latency_rollup_key")
        ]

    def __str__(self) -> str:
        return (
            f"{self.span} from {self.start:%Y-%m-%d %H}:00 {self.model_id} {self.metric}[{self.bucket}]: {self.count}"
        )
