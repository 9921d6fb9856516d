"""Services: every write to the registry, tokens and usage goes through here."""

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.utils import timezone

from models_app.choices import ModelStatus, Scope, UsageStatus
from models_app.models import APIToken, LLMModel, UsageRecord


class TokenError(ValueError):
    """A token request that cannot be honoured; the message says what to fix."""


def issue_token(
    *,
    name: str,
    owner: AbstractBaseUser,
    scopes: Iterable[str],
    models: Iterable[str] = (),
    expires_at: datetime | None = None,
    rate_limit_rpm: int | None = None,
    rate_limit_tpm: int | None = None,
) -> tuple[APIToken, str]:
    """Create a token; return it with its secret, which is never retrievable again."""
    scopes = sorted(set(scopes))
    unknown = set(scopes) - set(Scope.values)
    if unknown:
        raise TokenError(f"unknown scope(s) {', '.join(sorted(unknown))}; choose from {', '.join(Scope.values)}")
    if not scopes:
        raise TokenError(f"a token needs at least one scope; choose from {', '.join(Scope.values)}")
    model_ids = sorted(set(models))
    found = set(LLMModel.objects.filter(pk__in=model_ids).values_list("pk", flat=True))
    if missing := set(model_ids) - found:
        raise TokenError(f"unknown model(s) {', '.join(sorted(missing))}; see `manage.py scan_models`")
    if expires_at is not None and expires_at <= timezone.now():
        raise TokenError("expires_at is in the past")
    secret = APIToken.generate_secret()
    token = APIToken(
        name=name,
        owner=owner,
        scopes=scopes,
        expires_at=expires_at,
        rate_limit_rpm=rate_limit_rpm,
        rate_limit_tpm=rate_limit_tpm,
    )
    token.set_secret(secret)
    with transaction.atomic():
        token.save()
        if model_ids:
            token.allowed_models.set(model_ids)
    return token, secret


def revoke_token(*, token: APIToken) -> None:
    """Revoke a token for good; requests using it fail within the auth cache's TTL."""
    if not token.revoked:
        token.revoked, token.revoked_at = True, timezone.now()
        token.save(update_fields=["revoked", "revoked_at"])


def bootstrap_first_run(*, username: str = "admin") -> tuple[str, str, str] | None:
    """On a fresh database, create an admin user and a first API token.

    Returns (username, password, token secret) the one time it creates them, else None:
    the secrets exist only in this return value and are never stored in clear.
    """
    from django.contrib.auth import get_user_model

    User = get_user_model()
    with transaction.atomic():
        if User.objects.filter(is_superuser=True).exists():
            return None
        password = APIToken.generate_secret()[4:28]
        user = User.objects.create_superuser(username=username, email="", password=password)
        _, secret = issue_token(
            name="first token", owner=user, scopes=[Scope.INFERENCE, Scope.MODELS_READ, Scope.MODELS_MANAGE]
        )
    return username, password, secret


def mark_model_invalid(*, model_id: str, reason: str) -> None:
    """Record that a model cannot be served (e.g. llama.cpp failed to load it)."""
    LLMModel.objects.filter(pk=model_id).update(status=ModelStatus.INVALID, status_reason=reason[:2000])


def start_usage(
    *, request_id: str, token_id: int | None, model_id: str | None, endpoint: str, client_address: str | None
) -> None:
    """Admit a request: its usage row, status `started`, committed before the engine sees it."""
    UsageRecord.objects.create(
        request_id=request_id,
        token_id=token_id,
        model_id=model_id,
        endpoint=endpoint,
        client_address=client_address,
    )


def finalize_usage(
    *,
    request_id: str,
    status: str,
    prompt_tokens: int,
    completion_tokens: int,
    time_to_first_token_ms: float | None,
    duration_ms: float,
    error_message: str = "",
) -> bool:
    """Close a started row with how it ended; False if it was already closed (exactly once)."""
    updated = UsageRecord.objects.filter(request_id=request_id, status=UsageStatus.STARTED).update(
        status=status,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        time_to_first_token_ms=time_to_first_token_ms,
        duration_ms=duration_ms,
        error_message=error_message[:2000],
        finished_at=timezone.now(),
    )
    return updated == 1


def close_interrupted_usage() -> int:
    """Close rows a crash left `started` (run at startup, when no request is in flight)."""
    return UsageRecord.objects.filter(status=UsageStatus.STARTED).update(
        status=UsageStatus.INTERRUPTED, finished_at=timezone.now(), error_message="server stopped mid-request"
    )


def touch_token(*, token_id: int, every_s: int = 60) -> None:
    """Record that a token was used, at most once per `every_s` (not a write per request)."""
    cutoff = timezone.now() - timedelta(seconds=every_s)
    APIToken.objects.filter(pk=token_id).filter(
        models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lt=cutoff)
    ).update(last_used_at=timezone.now())
