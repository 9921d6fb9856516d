"""The NinjaAPI instances: OpenAI-compatible /v1, Ollama-compatible /api, and the native endpoints at /."""

from ninja import NinjaAPI

from inference.api import native, ollama, ollama_models, openai, tokenizer
from inference.api.errors import install_error_handlers, ollama_error_response

v1_api = NinjaAPI(
    title="karen-host OpenAI-compatible API",
    version="1",
    urls_namespace="v1",
    docs_url="/docs",
    description="Authenticate with `Authorization: Bearer khk_...`.",
)
v1_api.add_router("/", openai.router)
v1_api.add_router("/", tokenizer.v1_router)
install_error_handlers(v1_api)

native_api = NinjaAPI(title="karen-host native API", version="1", urls_namespace="native", docs_url="/native/docs")
native_api.add_router("/", native.router)
native_api.add_router("/", tokenizer.native_router)
install_error_handlers(native_api)

ollama_api = NinjaAPI(
    title="karen-host Ollama-compatible API",
    version="1",
    urls_namespace="ollama",
    docs_url="/ollama/docs",
    openapi_url="/ollama/openapi.json",
    description="Ollama's /api paths. Authenticate with `Authorization: Bearer khk_...`, "
    "or from a trusted local address without a header when TRUSTED_LOCAL_TOKEN is set.",
)
ollama_api.add_router("/", ollama.router)
ollama_api.add_router("/", ollama_models.router)
install_error_handlers(ollama_api, ollama_error_response)
