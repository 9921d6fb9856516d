"""Selectors: the reads other rooms make of the registry and tokens."""

from models_app.models import APIToken
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
