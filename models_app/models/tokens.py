"""API tokens: who may call the server, for what, and how much."""

import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from models_app.choices import Lane, Scope

__all__ = ["TOKEN_PREFIX", "APIToken"]

TOKEN_PREFIX = "khk_"
# Characters of the secret kept in clear for lookup: "khk_" + 8 random characters.
# 48 bits of prefix make collisions rare; the other 250+ bits stay secret.
LOOKUP_LENGTH = len(TOKEN_PREFIX) + 8


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest of a token secret (the only form that is stored)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class APIToken(models.Model):
    """A bearer token a client sends as `Authorization: Bearer khk_...`."""

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list, blank=True)
    allowed_models = models.ManyToManyField(
        "models_app.LLMModel", blank=True, related_name="+", help_text="Empty: every model."
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    rate_limit_rpm = models.PositiveIntegerField("requests/min", null=True, blank=True)
    rate_limit_tpm = models.PositiveIntegerField("tokens/min", null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(
        "concurrent requests", null=True, blank=True, help_text="Requests in flight at once; empty: unlimited."
    )
    budget_of = models.PositiveIntegerField(
        null=True, blank=True, editable=False,
        help_text="Spends from this token's budget (a token minted by a limited token): minting never adds budget.",
    )  # fmt: skip
    lane = models.CharField(
        max_length=16, choices=Lane.choices, default=Lane.INTERACTIVE,
        help_text="Interactive requests take free slots before batch ones; batch work is aged so it never starves.",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate_secret() -> str:
        return TOKEN_PREFIX + secrets.token_urlsafe(32)

    def set_secret(self, secret: str) -> None:
        self.prefix = secret[:LOOKUP_LENGTH]
        self.secret_hash = hash_secret(secret)

    def matches(self, secret: str) -> bool:
        """Constant-time comparison of `secret` against the stored hash."""
        return hmac.compare_digest(self.secret_hash, hash_secret(secret))

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return not self.revoked and not self.is_expired

    @property
    def has_limits(self) -> bool:
        return any(v is not None for v in (self.rate_limit_rpm, self.rate_limit_tpm, self.max_concurrent))

    @property
    def budget_key(self) -> str:
        """Whose per-minute and concurrency budget this token spends: its own, or its limited minter's."""
        return str(self.budget_of or self.pk)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes
