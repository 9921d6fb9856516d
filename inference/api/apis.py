"""The two NinjaAPI instances: OpenAI-compatible /v1 and the native endpoints at /."""

from ninja import NinjaAPI

from inference.api import native, openai
from inference.api.errors import install_error_handlers

v1_api = NinjaAPI(
    title="karen-host OpenAI-compatible API",
    version="1",
    urls_namespace="v1",
    docs_url="/docs",
    description="Authenticate with `Authorization: Bearer khk_...`.",
)
v1_api.add_router("/", openai.router)
install_error_handlers(v1_api)

native_api = NinjaAPI(title="karen-host native API", version="1", urls_namespace="native", docs_url="/native/docs")
native_api.add_router("/", native.router)
install_error_handlers(native_api)
