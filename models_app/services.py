"""Services: every write to the registry, tokens and usage goes through here."""

from collections.abc import Iterable
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from models_app.choices import Scope
from models_app.models import APIToken, LLMModel


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
