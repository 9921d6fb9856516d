"""Bearer-token authentication shared by HTTP and websockets.

A cache keyed by the secret's hash means at most one indexed query per token every
AUTH_CACHE_TTL_S seconds (default 5): a revoked or expired token stops working within
that time, and a busy client costs no query per request.
"""

import ipaddress
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest
from ninja.security import HttpBearer

from inference.api.errors import AuthenticationFailed, PermissionDenied
from models_app.grants import Grant
from models_app.models.tokens import APIToken, hash_secret
from models_app.selectors import TokenRejected, authenticate, trusted_local_token
from models_app.services import playground_token, touch_token


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


def _principal(token: APIToken) -> Principal:
    touch_token(token_id=token.pk)
    grant = Grant.of_token(token)
    return Principal(token_id=token.pk, name=token.name, scopes=grant.scopes, allowed_models=grant.models,
                     budget_key=token.budget_key, **grant.limits())  # fmt: skip


def _lookup(secret: str) -> Principal | str:
    try:
        return _principal(authenticate(secret))
    except TokenRejected as exc:
        return str(exc)


def _lookup_trusted_local(setting: str) -> Principal | str:
    try:
        return _principal(trusted_local_token(setting))
    except TokenRejected as exc:
        return str(exc)


async def _cached(key: str, lookup: Callable[[], Principal | str]) -> Principal:
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(key)
    if cached is None or cached[0] <= now:
        result = await sync_to_async(lookup, thread_sensitive=True)()
        with _cache_lock:
            if len(_cache) > 10_000:  # a flood of random secrets must not grow memory
                _cache.clear()
            _cache[key] = (now + settings.AUTH_CACHE_TTL_S, result)
    else:
        result = cached[1]
    if isinstance(result, str):
        raise AuthenticationFailed(result, code="invalid_api_key")
    return result


async def principal_for(secret: str) -> Principal:
    """The Principal for a bearer secret; AuthenticationFailed (401) saying why not."""
    return await _cached(hash_secret(secret), lambda: _lookup(secret))


# Headers a proxy, a CDN or a browser adds: a request bearing one came from elsewhere, or from a web page.
_PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip", "via", "x-forwarded-host", "x-forwarded-proto",
                  "cf-connecting-ip", "true-client-ip")  # fmt: skip
_BROWSER_HEADERS = ("sec-fetch-site", "sec-fetch-mode")


def _names_server_by_address(host: str) -> bool:
    """Whether a Host header is `localhost` or an IP literal (a DNS name could be rebound to this machine)."""
    name = host.split("]")[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def trusted_local_refusal(headers: Mapping[str, str], address: str | None) -> str | None:
    """Why a request without a token is not a trusted local one, or None if it is.

    Trusted: TRUSTED_LOCAL_TOKEN is set, the peer address is in TRUSTED_LOCAL_ADDRESSES,
    and nothing says the request came from elsewhere: a reverse proxy on this machine
    makes every client look local (so a forwarding header disqualifies the request),
    a page in a browser on this machine can reach loopback too (so an Origin or a
    browser's fetch headers disqualify it: a web app uses a token), and
    a page can rebind its own DNS name to 127.0.0.1 (so the Host must be `localhost`
    or an address). A proxy or tunnel that adds no header at all cannot be told apart:
    the README says not to combine one with this setting.
    """
    if not settings.TRUSTED_LOCAL_TOKEN:
        return "trusted local clients are off"
    lowered = {k.lower(): v for k, v in headers.items()}
    if forwarded := [h for h in _PROXY_HEADERS if h in lowered]:
        return f"it came through a proxy ({forwarded[0]} header)"
    if browser := [h for h in _BROWSER_HEADERS if h in lowered]:
        return f"it came from a web browser ({browser[0]} header)"
    if not _names_server_by_address(lowered.get("host", "")):
        return f"it names the server as {lowered.get('host', '')[:100]!r}, not localhost or an address"
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return "the peer address is unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if not any(ip in network for network in settings.TRUSTED_LOCAL_ADDRESSES):
        return f"{ip} is not in TRUSTED_LOCAL_ADDRESSES"
    if "origin" in lowered:
        return f"it came from a web page ({lowered['origin'][:100]})"
    return None


async def request_principal(secret: str | None, headers: Mapping[str, str], address: str | None) -> Principal:
    """Who is calling: the bearer secret's token, else the trusted local token; AuthenticationFailed if neither."""
    if secret:
        return await principal_for(secret)
    refusal = trusted_local_refusal(headers, address)
    if refusal is not None:
        raise AuthenticationFailed(
            "Missing bearer token: send 'Authorization: Bearer khk_...'"
            + ("." if refusal == "trusted local clients are off" else f" (not a trusted local client: {refusal})."),
            code="missing_token",
        )
    setting = settings.TRUSTED_LOCAL_TOKEN
    return await _cached("trusted-local:" + setting, lambda: _lookup_trusted_local(setting))


def _lookup_playground(user_id: int) -> Principal | str:
    try:
        return _principal(playground_token(user_id=user_id))
    except TokenRejected as exc:
        return str(exc)


async def session_principal(scope: Mapping[str, Any], headers: Mapping[str, str]) -> Principal | None:
    """The admin playground's principal for a logged-in staff user's same-origin socket; None if it is not one.

    Only a page served by this server may ride on the session, as Django's CSRF check has
    it: the Origin must be this socket's own scheme and host, or in CSRF_TRUSTED_ORIGINS
    (a TLS proxy in front). The origin validator alone also admits CORS origins.
    """
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_staff:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    origin, host = lowered.get("origin", "").lower(), lowered.get("host", "").lower()
    own = f"{'https' if scope.get('scheme') == 'wss' else 'http'}://{host}"
    trusted = {o.lower() for o in settings.CSRF_TRUSTED_ORIGINS}
    if not origin or not host or (origin != own and origin not in trusted):
        return None
    return await _cached(f"playground:{user.pk}", lambda: _lookup_playground(user.pk))


def clear_auth_cache() -> None:
    with _cache_lock:
        _cache.clear()


class BearerAuth(HttpBearer):
    """ninja auth: `Authorization: Bearer khk_...` with a required scope (or a trusted local client, no header)."""

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    def __call__(self, request: HttpRequest) -> Any:
        if request.headers.get(self.header):
            return super().__call__(request)
        return self._trusted_local(request)

    async def _trusted_local(self, request: HttpRequest) -> Principal:
        principal = await request_principal(None, request.headers, request.META.get("REMOTE_ADDR"))
        principal.require_scope(self.scope)
        return principal

    async def authenticate(self, request: HttpRequest, token: str) -> Principal:
        principal = await principal_for(token)
        principal.require_scope(self.scope)
        return principal
