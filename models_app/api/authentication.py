"""Bearer tokens for the management API: the same `khk_...` secrets as /v1, checked by the registry."""

from django.contrib.auth.models import AbstractBaseUser
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from models_app.models import APIToken
from models_app.selectors import TokenRejected, authenticate
from models_app.services import touch_token


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer khk_...` -> (the token's owner, the token); scopes are checked by permissions.

    No cache, unlike inference/auth.py: management calls are rare, and a revoked token
    should stop managing anything on its very next request.
    """

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, APIToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None  # not ours: session auth (or nothing) decides
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: send 'Bearer khk_...' with no spaces in the token.",
                code="invalid_api_key",
            )
        try:
            token = authenticate(parts[1].decode("latin-1"))
        except TokenRejected as exc:
            raise exceptions.AuthenticationFailed(str(exc), code="invalid_api_key") from exc
        touch_token(token_id=token.pk)
        return token.owner, token

    def authenticate_header(self, request: Request) -> str:
        # A non-empty challenge is what makes DRF answer 401 rather than 403 to a missing token.
        return 'Bearer realm="api"'
