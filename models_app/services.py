"""Services: every write to the registry, tokens and usage goes through here."""

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from models_app.choices import Lane, ModelStatus, Scope, UsageStatus
from models_app.models import APIToken, LLMModel, ModelAlias, ModelConfig, SelfTestResult, UsageRecord
from models_app.models.aliases import default_ollama_name
from models_app.selectors import TokenRejected, find_token, require_active
from models_app.server_api import MissingServiceToken, read_service_token, write_service_token


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
    max_concurrent: int | None = None,
    lane: str = Lane.INTERACTIVE,
    budget_of: int | None = None,
) -> tuple[APIToken, str]:
    """Create a token; return it with its secret, which is never retrievable again.

    What the caller may grant is checked before (models_app.grants); this checks the values.
    """
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
    if lane not in Lane.values:
        raise TokenError(f"unknown lane {lane!r}; choose from {', '.join(Lane.values)}")
    secret = APIToken.generate_secret()
    token = APIToken(
        name=name,
        owner=owner,
        scopes=scopes,
        expires_at=expires_at,
        rate_limit_rpm=rate_limit_rpm,
        rate_limit_tpm=rate_limit_tpm,
        max_concurrent=max_concurrent,
        budget_of=budget_of,
        lane=lane,
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


def record_load_failure(*, model_id: str, reason: str, retry_in_s: float) -> None:
    """Record a failed load: not `invalid` (the probe judges the file); the server retries after a back-off."""
    from datetime import timedelta

    from django.db.models import F
    from django.utils import timezone

    LLMModel.objects.filter(pk=model_id).update(
        load_failures=F("load_failures") + 1, last_load_error=reason[:2000],
        load_retry_at=timezone.now() + timedelta(seconds=retry_in_s),
    )  # fmt: skip


def clear_load_failure(*, model_id: str) -> None:
    """A load succeeded: forget the failures before it."""
    LLMModel.objects.filter(pk=model_id, load_failures__gt=0).update(
        load_failures=0, last_load_error="", load_retry_at=None
    )


def mark_model_invalid(*, model_id: str, reason: str) -> None:
    """Record that a model cannot be served (e.g. llama.cpp failed to load it)."""
    LLMModel.objects.filter(pk=model_id).update(status=ModelStatus.INVALID, status_reason=reason[:2000])


def start_usage(
    *,
    request_id: str,
    token_id: int | None,
    model_id: str | None,
    endpoint: str,
    client_address: str | None,
    lane: str = Lane.INTERACTIVE,
) -> None:
    """Admit a request: its usage row, status `started`, committed before the engine sees it."""
    UsageRecord.objects.create(
        request_id=request_id,
        token_id=token_id,
        model_id=model_id,
        endpoint=endpoint,
        lane=lane,
        client_address=client_address,
    )


PLAYGROUND_TOKEN_NAME = "admin playground"
PLAYGROUND_PERMISSION = "models_app.add_apitoken"  # who may mint a token may have this one


def playground_token(*, user_id: int) -> APIToken:
    """The staff user's playground token (inference only), made on first use; TokenRejected if they may not have one.

    The admin's playground runs on the user's session, with no secret; its requests are
    metered and limited as this token's, which the admin shows like any other. A revoked
    or expired one is not replaced: revoking it is how an admin stops someone's playground.
    """
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not (user.is_active and user.is_staff and user.has_perm(PLAYGROUND_PERMISSION)):
        raise TokenRejected("The playground is for active staff users who may create API tokens; log in again.")
    with transaction.atomic():
        token = (
            APIToken.objects.select_related("owner").prefetch_related("allowed_models")
            .filter(owner=user, name=PLAYGROUND_TOKEN_NAME).order_by("-created_at").first()
        )  # fmt: skip
        if token is None:
            token, _secret = issue_token(name=PLAYGROUND_TOKEN_NAME, owner=user, scopes=[Scope.INFERENCE])
    try:
        return require_active(token)
    except TokenRejected as exc:
        raise TokenRejected(f"Your playground token: {exc} An admin can issue you another one.") from exc


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


def close_interrupted_usage(*, older_than_s: float | None = None) -> int:
    """Close rows a crash left `started`; return how many.

    At startup (`older_than_s` None) every started row is closed: nothing is in flight yet.
    Periodically, only rows older than any request can run, so that live requests on
    this or another web node are never touched.
    """
    rows = UsageRecord.objects.filter(status=UsageStatus.STARTED)
    if older_than_s is not None:
        rows = rows.filter(created_at__lt=timezone.now() - timedelta(seconds=older_than_s))
    return rows.update(
        status=UsageStatus.INTERRUPTED, finished_at=timezone.now(), error_message="server stopped mid-request"
    )


def touch_token(*, token_id: int, every_s: int = 60) -> None:
    """Record that a token was used, at most once per `every_s` (not a write per request)."""
    cutoff = timezone.now() - timedelta(seconds=every_s)
    APIToken.objects.filter(pk=token_id).filter(
        models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lt=cutoff)
    ).update(last_used_at=timezone.now())


# -- Writes the management REST API (models_app/api) makes ---------------------------

MODEL_EDITABLE_FIELDS = frozenset({"name", "enabled", "preload"})


def name_is_taken(name: str) -> bool:
    """Whether `name` is already a model's id or an alias (ignoring case)."""
    return LLMModel.objects.filter(pk__iexact=name).exists() or ModelAlias.objects.filter(name__iexact=name).exists()


def assign_ollama_name(*, model: LLMModel) -> ModelAlias | None:
    """Give `model` its default Ollama name from its GGUF metadata, unless it has one; None if it had.

    A name another model holds gets a numeric suffix (`smollm2:135m-instruct-q4_1-2`).
    """
    if model.aliases.filter(ollama=True).exists():
        return None
    for _ in range(100):
        name = default_ollama_name(model, name_is_taken)
        try:
            with transaction.atomic():  # a savepoint: an admin may take the name between the check and here
                return ModelAlias.objects.create(name=name, model=model, ollama=True)
        except IntegrityError:
            if model.aliases.filter(ollama=True).exists():
                return None
    raise IntegrityError(f"no free Ollama name for {model.id} after 100 tries")


def update_model(*, model: LLMModel, changes: Mapping[str, Any]) -> LLMModel:
    """Change a model's display name, `enabled` or `preload`; everything else is measured by the scan."""
    if unknown := set(changes) - MODEL_EDITABLE_FIELDS:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    for name, value in changes.items():
        setattr(model, name, value)
    if changes:
        model.save(update_fields=[*changes, "updated_at"])
    return model


def apply_config_changes(*, config: ModelConfig, changes: Mapping[str, Any]) -> set[str]:
    """Write `changes` into `config` without saving; return the names of the fields whose value changed.

    A given `optimize_for` writes its preset first, even when it is the current one, so
    sending a preset resets the tunables to it, and explicit fields in the same change
    win over the preset.
    """
    before = {field.attname: getattr(config, field.attname) for field in config._meta.concrete_fields}
    if "optimize_for" in changes:
        config.apply_preset(changes["optimize_for"])
    for name, value in changes.items():
        if name != "optimize_for":
            setattr(config, name, value)
    return {name for name, value in before.items() if getattr(config, name) != value and name != "updated_at"}


def update_config(*, config: ModelConfig, changes: Mapping[str, Any]) -> set[str]:
    """Apply `changes` to a model's config and save it; return the changed fields.

    llama.cpp tunables and the system prompt take effect on the model's next load;
    sampling defaults on its next request.
    """
    changed = apply_config_changes(config=config, changes=changes)
    if changed:
        config.save()
    return changed


def update_token(*, token: APIToken, changes: Mapping[str, Any]) -> APIToken:
    """Change a token's name, scopes, models, limits or expiry; TokenError saying what to fix.

    The same checks as `issue_token`; requests already authenticated keep the old
    values for up to AUTH_CACHE_TTL_S on /v1.
    """
    if token.revoked:
        raise TokenError("this token is revoked and cannot change; issue a new one")
    fields = dict(changes)
    model_ids = sorted(set(fields.pop("models"))) if "models" in fields else None
    if "scopes" in fields:
        fields["scopes"] = sorted(set(fields["scopes"]))
        if unknown := set(fields["scopes"]) - set(Scope.values):
            raise TokenError(f"unknown scope(s) {', '.join(sorted(unknown))}; choose from {', '.join(Scope.values)}")
        if not fields["scopes"]:
            raise TokenError(f"a token needs at least one scope; choose from {', '.join(Scope.values)}")
    if model_ids:
        found = set(LLMModel.objects.filter(pk__in=model_ids).values_list("pk", flat=True))
        if missing := set(model_ids) - found:
            raise TokenError(f"unknown model(s) {', '.join(sorted(missing))}; see `manage.py scan_models`")
    if fields.get("expires_at") is not None and fields["expires_at"] <= timezone.now():
        raise TokenError("expires_at is in the past")
    for name, value in fields.items():
        setattr(token, name, value)
    with transaction.atomic():
        if fields:
            token.save(update_fields=list(fields))
        if model_ids is not None:
            token.allowed_models.set(model_ids)
    return token


# -- Background work (models_app/tasks.py) ---------------------------------------------

SERVICE_USERNAME = "karen-host-worker"
SERVICE_TOKEN_NAME = "background worker"
# Preloading needs models:manage (POST /models/load), self-tests need inference; nothing else.
SERVICE_SCOPES = (Scope.MODELS_MANAGE, Scope.INFERENCE)


def ensure_service_token() -> bool:
    """Make SERVICE_TOKEN_FILE hold the secret of an active service token; True if a new one was issued.

    The secret exists only in that 0600 file (the database keeps its hash, as for every
    token); issuing a new one revokes the previous service tokens, so one stays live.
    """
    from django.contrib.auth import get_user_model

    try:
        current = find_token(read_service_token())
    except (MissingServiceToken, OSError):  # none yet, or unreadable: issue a fresh one below
        current = None
    if current is not None and current.is_active and current.name == SERVICE_TOKEN_NAME:
        if current.lane != Lane.BATCH:  # issued before lanes existed: background work is batch
            APIToken.objects.filter(pk=current.pk).update(lane=Lane.BATCH)
        return False
    User = get_user_model()
    user, created = User.objects.get_or_create(username=SERVICE_USERNAME)
    if created:
        user.set_unusable_password()  # a token owner only; nobody signs in as it
        user.save(update_fields=["password"])
    with transaction.atomic():
        for old in APIToken.objects.filter(owner=user, name=SERVICE_TOKEN_NAME, revoked=False):
            revoke_token(token=old)
        # batch: self-tests and preloads take the slots interactive clients leave free
        _, secret = issue_token(name=SERVICE_TOKEN_NAME, owner=user, scopes=SERVICE_SCOPES, lane=Lane.BATCH)
        write_service_token(secret, settings.SERVICE_TOKEN_FILE)
    return True


def record_self_test(
    *,
    model_id: str,
    passed: bool,
    reason: str = "",
    time_to_first_token_ms: float | None = None,
    tokens_per_s: float | None = None,
    completion_tokens: int = 0,
    output: str = "",
    task_id: str = "",
) -> SelfTestResult:
    """Store one self-test's outcome for the model's admin page and /health/selftest."""
    return SelfTestResult.objects.create(
        model_id=model_id,
        passed=passed,
        reason=reason[:2000],
        time_to_first_token_ms=time_to_first_token_ms,
        tokens_per_s=tokens_per_s,
        completion_tokens=completion_tokens,
        output_excerpt=output.strip()[:200],
        task_id=task_id or "",
    )
