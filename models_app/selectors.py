"""Selectors: the reads other rooms make of the registry and tokens."""

from models_app.choices import ModelStatus
from models_app.models import APIToken, LLMModel
from models_app.models.tokens import LOOKUP_LENGTH, TOKEN_PREFIX


def find_token(secret: str) -> APIToken | None:
    """The token whose secret this is, or None (wrong, revoked and expired included).

    One indexed query on the non-secret prefix, then a constant-time hash compare.
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) < LOOKUP_LENGTH + 16:
        return None
    for token in APIToken.objects.filter(prefix=secret[:LOOKUP_LENGTH]).prefetch_related("allowed_models"):
        if token.matches(secret):
            return token
    return None


class TokenRejected(Exception):
    """The bearer secret does not name an active token; the message says which case."""


def authenticate(secret: str) -> APIToken:
    """The active token for `secret`; raise TokenRejected saying whether it is unknown, expired or revoked."""
    token = find_token(secret)
    if token is None:
        raise TokenRejected("Invalid API token.")
    if token.revoked:
        raise TokenRejected("This API token has been revoked.")
    if token.is_expired:
        raise TokenRejected(f"This API token expired at {token.expires_at:%Y-%m-%d %H:%M} UTC.")
    return token


def resolve_model(model_id: str) -> LLMModel:
    """The servable model named `model_id`; LookupError saying why not (unknown, disabled, unavailable)."""
    model = LLMModel.objects.select_related("config").filter(pk=model_id).first()
    if model is None:
        raise LookupError(f"The model '{model_id}' does not exist; GET /v1/models lists the available ones.")
    if not model.enabled:
        raise LookupError(f"The model '{model_id}' is disabled; GET /v1/models lists the available ones.")
    if model.status != ModelStatus.AVAILABLE:
        reason = f" ({model.status_reason})" if model.status_reason else ""
        raise LookupError(f"The model '{model_id}' is {model.status}{reason}; GET /v1/models lists the available ones.")
    return model


def servable_models() -> list[LLMModel]:
    """Enabled, available models, in id order."""
    return list(LLMModel.objects.filter(enabled=True, status=ModelStatus.AVAILABLE).order_by("pk"))
