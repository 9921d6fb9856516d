"""A request rate per bearer token (else per session user, else per address) for the management API."""

from typing import TYPE_CHECKING

from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from models_app.models import APIToken

if TYPE_CHECKING:  # rest_framework.views imports this module while it defines APIView
    from rest_framework.views import APIView


class TokenRateThrottle(SimpleRateThrottle):
    """DRF's rate throttle keyed by token, so one script cannot starve another owner's."""

    scope = "management"

    def get_rate(self) -> str | None:
        # Read at call time, not at import as SimpleRateThrottle does, so a settings
        # change (tests, a reload) takes effect.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request: Request, view: "APIView") -> str:
        if isinstance(request.auth, APIToken):
            ident = f"token-{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            ident = f"addr-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
