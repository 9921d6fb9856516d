"""Where the plugin finds the server: defaults, then the environment, then KAREN's config.

KAREN's ExtensionLoader hands every plugin `ExtensionContext(config={})` unless an
operator configured it, so the defaults below (mirrored in the manifest's
`config_schema`) and the environment are what a fresh install runs on.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_API_KEY_ENV = "KAREN_HOST_API_KEY"
TRANSPORTS = ("sse", "websocket")

# Environment variables that override a default; the token itself is read from the
# variable named by `api_key_env`, never from a config value, so it is never stored
# in KAREN's config files or echoed back by KAREN's settings API.
ENV_OVERRIDES = {
    "base_url": "KAREN_HOST_URL",
    "model": "KAREN_HOST_MODEL",
    "timeout_s": "KAREN_HOST_TIMEOUT_S",
    "stream_transport": "KAREN_HOST_STREAM_TRANSPORT",
}


class ConfigError(ValueError):
    """A setting has a value the plugin cannot use; the message names it."""


@dataclass(frozen=True)
class ClientConfig:
    """Settings for one karen-host server. Holds the token's variable name, never the token."""

    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = DEFAULT_API_KEY_ENV
    model: str = ""  # empty: the server's default model, from GET /karen/config
    # The whole request, streaming included. Under 30 s because KAREN's ExtensionRunner and
    # PluginExecutionEngine cancel a plugin at 30 s; ours ends first, with a fallback result.
    timeout_s: float = 25.0
    connect_timeout_s: float = 3.0
    stream_transport: str = "sse"
    max_tokens: int = 512
    temperature: float = 0.7
    pre_llm_inference: bool = True  # pre_llm_prompt asks the local model, as the original plugin did
    register_provider: bool = True  # register KAREN's openai_compatible_local provider at initialize()

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.stream_transport not in TRANSPORTS:
            raise ConfigError(f"stream_transport must be one of {', '.join(TRANSPORTS)}, got {self.stream_transport!r}")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError("timeout_s and connect_timeout_s must be positive")
        if not self.api_key_env:
            raise ConfigError("api_key_env must name an environment variable")

    def read_token(self) -> str | None:
        """The bearer token from the environment, or None when the variable is unset or empty."""
        return os.environ.get(self.api_key_env, "").strip() or None

    def public_dict(self) -> dict[str, Any]:
        """The settings as JSON-safe data; contains no secret by construction."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def load_config(
    schema_defaults: Mapping[str, Any] | None = None,
    karen_config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Defaults < manifest `config_schema` defaults < environment < KAREN's own config for the plugin."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    values.update(_known(schema_defaults or {}))
    values.update({name: environ[var] for name, var in ENV_OVERRIDES.items() if environ.get(var)})
    values.update(_known(karen_config or {}))
    return replace(ClientConfig(), **_coerced(values))


def _known(values: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(ClientConfig)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def _coerced(values: dict[str, Any]) -> dict[str, Any]:
    """Environment values arrive as strings; give each field its declared type."""
    out: dict[str, Any] = {}
    defaults = ClientConfig()
    for field in fields(ClientConfig):
        if field.name not in values:
            continue
        value, kind = values[field.name], type(getattr(defaults, field.name))
        try:
            out[field.name] = _as_bool(value) if kind is bool else kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{field.name} must be a {kind.__name__}, got {value!r}") from exc
    return out


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
