"""KAREN's plugin for karen-host: an async client, the plugin runtime, and the installer.

Talks to the server only over HTTP and its websocket, with a bearer token read from
the environment; imports nothing from the server's packages, so it also runs inside
KAREN's own environment (see docs/karen_extension.md).
"""

from karen_extension.client import KarenHostClient
from karen_extension.config import ClientConfig, load_config
from karen_extension.errors import KarenHostError
from karen_extension.results import GenerationResult, StreamEnd, TextPiece

__all__ = [
    "ClientConfig",
    "GenerationResult",
    "KarenHostClient",
    "KarenHostError",
    "StreamEnd",
    "TextPiece",
    "load_config",
]
