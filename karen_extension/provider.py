"""Point KAREN's own chat path at karen-host, when KAREN's provider registry is importable.

KAREN chats through providers, not through plugin hooks. Its provider policy
(`core/model_runtime/provider_policy.py`) refuses ids such as `llamacpp`, `local_gguf`
or `local`; the id it sanctions for a local OpenAI-compatible server is
`openai_compatible_local`. Its model manager builds an `OpenAICompatibleProvider` for
such an endpoint and passes the key it reads from the endpoint's `api_key_env`
explicitly (the provider would otherwise look for OPENAI_API_KEY), and uses the
endpoint's `default_model` (else "auto", which this server does not know).
"""

import logging
from importlib import import_module
from typing import Any

from karen_extension.config import ClientConfig
from karen_extension.errors import redact

PROVIDER_ID = "openai_compatible_local"
DISPLAY_NAME = "karen-host (local GGUF models)"
REGISTRY_MODULE = "ai_karen_engine.core.model_runtime.provider_registry_service"

logger = logging.getLogger(__name__)


def endpoint_arguments(config: ClientConfig, model: str) -> dict[str, Any]:
    """The keyword arguments for KAREN's `register_openai_compatible_endpoint`; a variable name, no secret."""
    return {
        "provider_id": PROVIDER_ID,
        "display_name": DISPLAY_NAME,
        "base_url": f"{config.base_url}/v1",
        "api_key_env": config.api_key_env,
        "supports_streaming": True,
        "supports_embeddings": True,
        "supports_models_endpoint": True,
        "capabilities": ["chat_completion", "text_generation", "streaming", "embeddings"],
        "default_model": model,
        "metadata": {"source": "karen-host plugin", "health_url": f"{config.base_url}/health"},
    }


def register_karen_provider(config: ClientConfig, model: str) -> dict[str, Any]:
    """Register this server as KAREN's `openai_compatible_local` endpoint; report what happened, never raise."""
    try:
        registry = import_module(REGISTRY_MODULE).get_provider_registry_service()
    except ImportError as exc:  # not inside KAREN, or KAREN's environment lacks one of its dependencies
        return {"registered": False, "reason": "karen_registry_not_importable", "error": redact(str(exc))}
    except Exception as exc:  # KAREN's own import chain failed; the plugin still works without it
        return {"registered": False, "reason": "karen_registry_unavailable", "error": redact(str(exc))}
    arguments = endpoint_arguments(config, model)
    try:
        registry.register_openai_compatible_endpoint(**arguments)
    except Exception as exc:
        return {"registered": False, "reason": "karen_registry_refused", "error": redact(str(exc))}
    logger.info("Registered KAREN provider %s -> %s (model %s)", PROVIDER_ID, arguments["base_url"], model)
    return {"registered": True, "provider_id": PROVIDER_ID, "base_url": arguments["base_url"], "model": model}
