"""ASGI entry point: `python -m karen_host.web` (uvicorn) serves it, HTTP and websockets; so can any ASGI server."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")
django_asgi_app = get_asgi_application()  # before anything imports models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402

from inference import tracing  # noqa: E402
from inference.node import InferenceNodeConsumer  # noqa: E402
from inference.origins import WebsocketOriginValidator  # noqa: E402
from karen_host.api_handler import APIHandler, split_by_path  # noqa: E402
from karen_host.routing import websocket_urlpatterns  # noqa: E402

tracing.configure()  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set

application = ProtocolTypeRouter(
    {
        # The token APIs skip the admin's middleware (karen_host/api_handler.py says why).
        "http": split_by_path(APIHandler(), django_asgi_app),
        # The session (AuthMiddlewareStack) serves the admin's playground; API clients send a token.
        "websocket": WebsocketOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        # `manage.py runworker inference`: this machine becomes an inference node.
        "channel": ChannelNameRouter({"inference": InferenceNodeConsumer.as_asgi()}),
    }
)
