"""Selectors: the reads other rooms make of the registry and tokens."""

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Avg, Count, F, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from models_app.choices import ModelStatus, UsageStatus
from models_app.models import APIToken, LLMModel, ModelAlias, ModelConfig, SelfTestResult, UsageRecord
from models_app.models.tokens import LOOKUP_LENGTH, TOKEN_PREFIX


def find_token(secret: str) -> APIToken | None:
    """The token whose secret this is, or None (wrong, revoked and expired included).

    One indexed query on the non-secret prefix, then a constant-time hash compare.
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) < LOOKUP_LENGTH + 16:
        return None
    tokens = APIToken.objects.filter(prefix=secret[:LOOKUP_LENGTH]).select_related("owner")
    for token in tokens.prefetch_related("allowed_models"):
        if token.matches(secret):
            return token
    return None


class TokenRejected(Exception):
    """The bearer secret does not name an active token; the message says which case."""


def authenticate(secret: str) -> APIToken:
    """The active token for `secret`; TokenRejected saying why not: unknown, revoked, expired, owner deactivated.

    Every surface asks here (/v1, native, websocket through inference.auth; /api/v1 through DRF).
    """
    token = find_token(secret)
    if token is None:
        raise TokenRejected("Invalid API token.")
    return require_active(token)


def trusted_local_token(setting: str) -> APIToken:
    """The active token TRUSTED_LOCAL_TOKEN names, by its prefix or its whole secret; TokenRejected saying why not."""
    if len(setting) > LOOKUP_LENGTH:
        return authenticate(setting)
    prefix = setting
    tokens = list(APIToken.objects.filter(prefix=prefix).select_related("owner").prefetch_related("allowed_models")[:2])
    if len(tokens) != 1:
        found = "no token has" if not tokens else "more than one token has"
        raise TokenRejected(f"TRUSTED_LOCAL_TOKEN is {prefix!r}, but {found} that prefix; fix the setting.")
    return require_active(tokens[0])


def trusted_local_state() -> str:
    """One sentence on TRUSTED_LOCAL_TOKEN: off, on (for which token and addresses), or misconfigured and why."""
    setting = settings.TRUSTED_LOCAL_TOKEN
    if not setting:
        return "Trusted local clients: off (every request needs a bearer token; see TRUSTED_LOCAL_TOKEN)."
    addresses = ", ".join(str(n) for n in settings.TRUSTED_LOCAL_ADDRESSES) or "no address"
    try:
        token = trusted_local_token(setting)
    except TokenRejected as exc:
        return f"Trusted local clients: on, but refused: {exc}"
    return (
        f"Trusted local clients: on. Requests without an Authorization header from {addresses} act as the token "
        f"'{token.name}' ({token.prefix}…): its scopes, models, limits and usage."
    )


def require_active(token: APIToken) -> APIToken:
    """`token` if it may be used now; TokenRejected saying why not (revoked, expired, owner deactivated)."""
    if token.revoked:
        raise TokenRejected("This API token has been revoked.")
    if token.is_expired:
        raise TokenRejected(f"This API token expired at {token.expires_at:%Y-%m-%d %H:%M} UTC.")
    if not token.owner.is_active:
        raise TokenRejected(
            f"This API token's owner ({token.owner.get_username()}) is deactivated; "
            "an admin must reactivate the account before its tokens work again."
        )
    return token


def token_usage_now(*, token_id: int) -> dict[str, int]:
    """A token's use now, from its usage rows: requests admitted and tokens finished in the last minute, in flight."""
    cutoff = timezone.now() - timedelta(minutes=1)
    totals = UsageRecord.objects.filter(token_id=token_id).aggregate(
        requests=Count("pk", filter=Q(created_at__gte=cutoff)),
        tokens=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens"), filter=Q(finished_at__gte=cutoff)), 0),
        in_flight=Count("pk", filter=Q(status=UsageStatus.STARTED)),
    )
    return {"requests": totals["requests"], "tokens": totals["tokens"], "in_flight": totals["in_flight"]}


def _candidate_names(name: str) -> list[str]:
    """`name`, and the same name with or without Ollama's default tag (`smollm2` and `smollm2:latest`)."""
    if name.endswith(":latest"):
        return [name, name.removesuffix(":latest")]
    return [name] if ":" in name else [name, f"{name}:latest"]


def find_model(name: str) -> LLMModel | None:
    """The model whose id or alias is `name` (ignoring case), servable or not; None if no model has that name.

    An id matching exactly wins over one matching only ignoring case (ids `Foo` and `foo` may both exist).
    """
    models = LLMModel.objects.select_related("config")
    for candidate in _candidate_names(name):
        model = models.filter(pk=candidate).first() or _only(models.filter(pk__iexact=candidate)[:2])
        if model is not None:
            return model
        alias = ModelAlias.objects.select_related("model__config").filter(name__iexact=candidate).first()
        if alias is not None:
            return alias.model
    return None


class UnknownModel(LookupError):
    """No model has that id or alias."""


def _only(rows: Any) -> LLMModel | None:
    rows = list(rows)
    return rows[0] if len(rows) == 1 else None


def resolve_model(model_id: str) -> LLMModel:
    """The servable model named `model_id` (its id or an alias); LookupError saying why not.

    Unknown, disabled and unavailable models are refused with a sentence saying which.
    """
    model = find_model(model_id)
    if model is None:
        raise UnknownModel(f"The model '{model_id}' does not exist; GET /v1/models lists the available ones.")
    model_id = model.id
    if not model.enabled:
        raise LookupError(f"The model '{model_id}' is disabled; GET /v1/models lists the available ones.")
    if model.status != ModelStatus.AVAILABLE:
        reason = f" ({model.status_reason})" if model.status_reason else ""
        raise LookupError(f"The model '{model_id}' is {model.status}{reason}; GET /v1/models lists the available ones.")
    return model


def servable_models() -> list[LLMModel]:
    """Enabled, available models, in id order, each with its aliases prefetched (Ollama name first)."""
    models = LLMModel.objects.filter(enabled=True, status=ModelStatus.AVAILABLE).order_by("pk")
    return list(models.prefetch_related("aliases"))


def ollama_name(model: LLMModel) -> str:
    """The name Ollama clients see for `model`: its Ollama alias, else its id (aliases prefetched or not)."""
    return next((a.name for a in model.aliases.all() if a.ollama), model.id)


# -- Reads the management REST API (models_app/api) makes ----------------------------

USAGE_GROUPS = ("token", "model", "day")
USAGE_SUMMARY_COLUMNS = (
    "key",
    "label",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "mean_ttft_ms",
    "tokens_per_s",
)


def visible_models(*, only: Collection[str] = ()) -> QuerySet[LLMModel]:
    """Every registered model, or just the ids in `only` (a token limited to some models)."""
    models = LLMModel.objects.all()
    return models.filter(pk__in=only) if only else models


def visible_tokens(*, owner: AbstractBaseUser, all_owners: bool) -> QuerySet[APIToken]:
    """Tokens `owner` may see and manage: their own, or everyone's for an admin."""
    tokens = APIToken.objects.select_related("owner").prefetch_related("allowed_models")
    return tokens if all_owners else tokens.filter(owner=owner)


def visible_usage(*, owner: AbstractBaseUser, all_owners: bool) -> QuerySet[UsageRecord]:
    """Usage rows `owner` may see: those of their own tokens, or all of them for an admin."""
    records = UsageRecord.objects.all()
    return records if all_owners else records.filter(token__owner=owner)


def summarize_usage(*, records: QuerySet[UsageRecord], group_by: str) -> list[dict[str, Any]]:
    """Per token, model or UTC day: requests, tokens, mean time to first token and decode tokens/s.

    tokens/s is the group's completion tokens over its decode time (duration minus time
    to first token), summed over the rows that have both timings: a throughput, not a
    mean of per-request rates, so one tiny request cannot skew it.
    """
    if group_by not in USAGE_GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(USAGE_GROUPS)}")
    key, label = {
        "token": (F("token_id"), F("token__name")),
        "model": (F("model_id"), F("model__name")),
        "day": (TruncDate("created_at"), Value("")),
    }[group_by]
    timed = Q(duration_ms__isnull=False, time_to_first_token_ms__isnull=False)
    groups = (
        records.order_by()  # the model's default ordering would split the groups
        .annotate(group_key=key, group_label=label)
        .values("group_key", "group_label")
        # Aliases differ from the field names: Django refuses an aggregate named like a field.
        .annotate(
            n_requests=Count("pk"),
            n_prompt=Coalesce(Sum("prompt_tokens"), 0),
            n_completion=Coalesce(Sum("completion_tokens"), 0),
            mean_ttft=Avg("time_to_first_token_ms"),
            n_timed_completion=Coalesce(Sum("completion_tokens", filter=timed), 0),
            decode_ms=Sum(F("duration_ms") - F("time_to_first_token_ms"), filter=timed),
        )
        .order_by("group_key")
    )
    rows = []
    for group in groups:
        key_value = group["group_key"].isoformat() if group_by == "day" else group["group_key"]
        decode_ms = group["decode_ms"] or 0.0
        rows.append(
            {
                "key": key_value,
                "label": key_value if group_by == "day" else group["group_label"] or "",
                "requests": group["n_requests"],
                "prompt_tokens": group["n_prompt"],
                "completion_tokens": group["n_completion"],
                "total_tokens": group["n_prompt"] + group["n_completion"],
                "mean_ttft_ms": None if group["mean_ttft"] is None else round(group["mean_ttft"], 2),
                "tokens_per_s": round(group["n_timed_completion"] / (decode_ms / 1000), 2) if decode_ms > 0 else None,
            }
        )
    return rows


def visible_configs(*, only: Collection[str] = ()) -> QuerySet[ModelConfig]:
    """Every model's config, or just those of the model ids in `only`."""
    configs = ModelConfig.objects.select_related("model")
    return configs.filter(model_id__in=only) if only else configs


def latest_self_tests() -> list[SelfTestResult]:
    """Each enabled model's most recent self-test result, in model id order (untested models absent)."""
    newest = SelfTestResult.objects.filter(model=OuterRef("pk")).order_by("-created_at", "-pk").values("pk")[:1]
    ids = LLMModel.objects.filter(enabled=True).annotate(newest=Subquery(newest)).values_list("newest", flat=True)
    return list(SelfTestResult.objects.filter(pk__in=[pk for pk in ids if pk]).order_by("model_id"))
