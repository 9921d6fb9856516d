"""Which browser origins may open a websocket: ALLOWED_HOSTS and the CORS allowlist."""

from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings


class WebsocketOriginValidator(OriginValidator):
    """Channels' OriginValidator over ALLOWED_HOSTS + CORS_ALLOWED_ORIGINS.

    A request without an Origin header is not from a browser (curl, KAREN's backend,
    the websockets library): no page can ride on the user's credentials there, and
    the bearer token still has to be valid, so it is let through.
    """

    def __init__(self, application: Any) -> None:
        super().__init__(application, [*settings.ALLOWED_HOSTS, *settings.CORS_ALLOWED_ORIGINS])

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)
