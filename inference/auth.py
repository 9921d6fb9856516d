"""Bearer-token authentication shared by HTTP and websockets.

A cache keyed by the secret's hash means at most one indexed query per token every
AUTH_CACHE_TTL_S seconds (default 5): a revoked or expired token stops working within
that time, and a busy client costs no query per request.
"""

import threading
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest
from ninja.security import HttpBearer

from inference.api.errors import AuthenticationFailed, PermissionDenied
from models_app.grants import Grant
from models_app.models.tokens import hash_secret
from models_app.selectors import TokenRejected, authenticate
from models_app.services import touch_token


@dataclass(frozen=True)
class Principal:
    """Who is calling: an active token's id, name, scopes and allowed models."""

    token_id: int
    name: str
    scopes: frozenset[str]
    allowed_models: frozenset[str]  # empty: all
    rate_limit_rpm: int | None = None  # None: unlimited
    rate_limit_tpm: int | None = None
    max_concurrent: int | None = None
    lane: str = "interactive"  # Lane: interactive or batch
    budget_key: str = ""  # whose limits' budget it spends (a minted token spends its limited minter's)

    @property
    def budget(self) -> str:
        """The key its limits and its fair-queue turns go by: its budget's token, else itself."""
        return self.budget_key or str(self.token_id)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def require_scope(self, scope: str) -> None:
        if not self.has_scope(scope):
            raise PermissionDenied(
                f"This token lacks the '{scope}' scope (it has: {', '.join(sorted(self.scopes))}).",
                code="insufficient_scope",
            )

    def may_use(self, model_id: str) -> bool:
        return not self.allowed_models or model_id in self.allowed_models

    def require_model(self, model_id: str) -> None:
        if not self.may_use(model_id):
            raise PermissionDenied(
                f"This token may not use '{model_id}'; it may use: {', '.join(sorted(self.allowed_models))}.",
                param="model",
                code="model_not_allowed",
            )


_cache: dict[str, tuple[float, Principal | str]] = {}
_cache_lock = threading.Lock()


def _lookup(secret: str) -> Principal | str:
    try:
        token = authenticate(secret)
    except TokenRejected as exc:
        return str(exc)
    touch_token(token_id=token.pk)
    grant = Grant.of_token(token)
    return Principal(token_id=token.pk, name=token.name, scopes=grant.scopes, allowed_models=grant.models,
                     budget_key=token.budget_key, **grant.limits())  # fmt: skip


async def principal_for(secret: str) -> Principal:
    """The Principal for a bearer secret; AuthenticationFailed (401) saying why not."""
    key = hash_secret(secret)
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(key)
    if cached is None or cached[0] <= now:
        result = await sync_to_async(_lookup, thread_sensitive=True)(secret)
        with _cache_lock:
            if len(_cache) > 10_000:  # a flood of random secrets must not grow memory
                _cache.clear()
            _cache[key] = (now + settings.AUTH_CACHE_TTL_S, result)
    else:
        result = cached[1]
    if isinstance(result, str):
        raise AuthenticationFailed(result, code="invalid_api_key")
    return result


def clear_auth_cache() -> None:
    with _cache_lock:
        _cache.clear()


class BearerAuth(HttpBearer):
    """ninja auth: `Authorization: Bearer khk_...` with a required scope."""

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    async def authenticate(self, request: HttpRequest, token: str) -> Principal:
        principal = await principal_for(token)
        principal.require_scope(self.scope)
        return principal
