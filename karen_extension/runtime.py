"""What the KAREN plugin does, without KAREN: lifecycle, hooks and `run(params)`.

The class KAREN loads (`plugin/karen-host/handler.py`) subclasses KAREN's ExtensionBase
and forwards every call here. Each public coroutine returns a JSON-safe dict (or None)
and never raises: KAREN's runner turns a raised exception into an ExtensionHookError
and logs the plugin as failed, and a plugin whose server is merely down is not broken.
"""

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from karen_extension.client import SAMPLING_FIELDS, KarenHostClient
from karen_extension.config import TRANSPORTS, ClientConfig, ConfigError, load_config
from karen_extension.errors import InvalidParams, KarenHostError, Misconfigured, PluginFailure, redact
from karen_extension.provider import register_karen_provider
from karen_extension.results import GenerationResult

PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin" / "karen-host"
DEFAULT_PROMPT_FILE = "prompts/system.txt"
# Keys that mean a post_llm_result context already carries an LLM answer to describe.
_RESULT_KEYS = ("response", "result", "llm_result", "local_inference")


class PluginRuntime:
    """The plugin's state and behaviour: one client, the system prompt, the provider registration."""

    def __init__(
        self,
        *,
        manifest: Any = None,
        config: Mapping[str, Any] | None = None,
        extension_dir: str | Path | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.logger = logger or logging.getLogger("karen_extension")
        self.config_error: str | None = None
        try:
            self.settings = load_config(schema_defaults(manifest), config)
        except ConfigError as exc:
            # Reported by every call instead of failing KAREN's loader, which would hide the reason in a traceback.
            self.config_error, self.settings = str(exc), ClientConfig()
        self.system_prompt = read_system_prompt(Path(extension_dir) if extension_dir else PLUGIN_SOURCE, manifest)
        self.client: KarenHostClient | None = None
        self.server_state = "unknown"
        self.provider: dict[str, Any] = {"registered": False, "reason": "not_attempted"}
        self._provider_pending = True  # until KAREN's registry has been asked (or registration is off)
        self.last_metadata: dict[str, Any] = {}

    async def initialize(self) -> None:
        """Check the server and register KAREN's provider; a server that is down is logged, not raised."""
        if self.config_error:
            self.logger.error("karen-host plugin is misconfigured: %s", self.config_error)
            return
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s + 2):
                health = await self._client().health()
        except (KarenHostError, TimeoutError) as exc:
            self.server_state = "unreachable"
            self.logger.warning(
                "karen-host at %s is not reachable (%s); answers fall back until it is",
                self.settings.base_url, redact(str(exc) or "timeout"),
            )  # fmt: skip
            return
        self.server_state = "reachable"
        self.logger.info("karen-host at %s is %s", self.settings.base_url, health.get("status", "up"))
        if not self._client().has_token:
            self.logger.warning("No karen-host token: set %s; answers fall back until it is", self.settings.api_key_env)
        await self._register_provider()

    async def shutdown(self) -> None:
        """Close the connection pool; calling it twice, or before initialize(), is fine."""
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()

    async def execute_hook(self, hook_point: Any, context: Any) -> dict[str, Any]:
        """Dispatch a KAREN hook (a HookPoint and a HookContext, or plain values) to its handler."""
        name = str(getattr(hook_point, "value", hook_point))
        try:
            data = getattr(context, "data", context)
            if name == "pre_llm_prompt":
                return await self._pre_llm_prompt(data)
            if name == "post_llm_result":
                return await self._post_llm_result(data)
            return _skipped(name, "hook_not_handled")
        except Exception as exc:
            return {"hook_point": name, **self._internal_error(exc)}

    async def run(self, params: Any) -> dict[str, Any]:
        """Answer `{"prompt"|"messages", "stream", "max_tokens", ...}` with `{"status", "text", "model", ...}`."""
        try:
            return await self._run(params)
        except Exception as exc:
            return self._internal_error(exc)

    def status(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """JSON-safe state for KAREN's status views; never contains the token."""
        return {
            **(base or {}),
            "server": self.server_state,
            "settings": self.settings.public_dict(),
            "token_configured": bool(self.settings.read_token()),
            "config_error": self.config_error,
            "provider": self.provider,
            "last_post_llm_result": self.last_metadata,
        }

    async def _run(self, params: Any) -> dict[str, Any]:
        if self.config_error:
            return _failed(Misconfigured(f"the plugin's settings are invalid: {self.config_error}"))
        try:
            request = _request(params, self.settings, self.system_prompt)
        except InvalidParams as exc:
            return _failed(exc)
        result = await self._client().generate(**request)
        self._log(result)
        if not result.fallback_used and self._provider_pending:
            await self._register_provider()  # the server was down at initialize(); it is up now
        return result.to_dict()

    async def _pre_llm_prompt(self, data: Any) -> dict[str, Any]:
        """Ask the local model first and put its answer in the context, as the original plugin did."""
        if not isinstance(data, dict):
            return _skipped("pre_llm_prompt", "no_data")
        if not self.settings.pre_llm_inference:
            return _skipped("pre_llm_prompt", "pre_llm_inference_disabled")
        if not data.get("prompt") and not data.get("messages"):
            return _skipped("pre_llm_prompt", "no_prompt")
        # Only the question: KAREN's context may name its own model or sampling, meant for its own LLM.
        result = await self._run({k: data[k] for k in ("prompt", "messages", "system_prompt") if k in data})
        if not result["fallback_used"]:
            # Only an answer goes into the context: a fallback must never look like one.
            data["local_inference"] = {
                "response": result["text"],
                "model": result["model"],
                "timing": {"duration_ms": result["duration_ms"], **(result.get("timings") or {})},
                "usage": result["usage"],
            }
        return {"hook_point": "pre_llm_prompt", **result}

    async def _post_llm_result(self, data: Any) -> dict[str, Any]:
        """Record which local inference (if any) took part; answer dispatched requests.

        KAREN's PluginRouter.dispatch() sends an intent's params under POST_LLM_RESULT,
        so a context that asks for an answer and carries none is treated as `run`.
        """
        if not isinstance(data, dict):
            return _skipped("post_llm_result", "no_data")
        if (data.get("prompt") or data.get("messages")) and not any(k in data for k in _RESULT_KEYS):
            return {"hook_point": "post_llm_result", **(await self._run(data))}
        local = data.get("local_inference") if isinstance(data.get("local_inference"), dict) else {}
        metadata = {
            "local_inference_used": bool(local.get("response")),
            "local_model": local.get("model"),
            "local_timing": local.get("timing") or {},
        }
        previous = data.get("metadata")
        data["metadata"] = {**(previous if isinstance(previous, dict) else {}), **metadata}
        self.last_metadata = metadata
        return {"hook_point": "post_llm_result", "status": "recorded", "metadata": metadata}

    async def _register_provider(self) -> None:
        if not self.settings.register_provider:
            self.provider, self._provider_pending = {"registered": False, "reason": "disabled"}, False
            return
        try:
            model = await self._client().resolve_model()
        except KarenHostError as exc:  # the server could not name its model: try again after an answer
            self.provider = {"registered": False, "reason": exc.reason, "error": str(exc)}
            return
        self.provider, self._provider_pending = register_karen_provider(self.settings, model), False

    def _client(self) -> KarenHostClient:
        if self.client is None:
            self.client = KarenHostClient(self.settings)
        return self.client

    def _log(self, result: GenerationResult) -> None:
        # Lengths and counts only: prompts and answers are the user's, not the log's.
        if result.fallback_used:
            self.logger.warning("karen-host gave no answer (%s): %s", result.reason, result.error)
        else:
            tokens = (result.usage or {}).get("completion_tokens")
            self.logger.info(
                "karen-host answered via %s: model=%s tokens=%s chars=%d in %.0f ms",
                result.transport, result.model, tokens, len(result.text), result.duration_ms,
            )  # fmt: skip

    def _internal_error(self, exc: Exception) -> dict[str, Any]:
        self.logger.exception("karen-host plugin failed unexpectedly")
        return _failed(PluginFailure(f"{type(exc).__name__}: {exc}"))


def schema_defaults(manifest: Any) -> dict[str, Any]:
    """`default` of each property in the manifest's config_schema (KAREN's model or a plain dict)."""
    properties = _field(_field(manifest, "config_schema"), "properties") or {}
    return {name: spec["default"] for name, spec in properties.items() if "default" in (spec or {})}


def read_system_prompt(extension_dir: Path, manifest: Any = None) -> str | None:
    """The plugin's system prompt file (manifest `prompt_files.system`), or None if unreadable."""
    name = _field(_field(manifest, "prompt_files"), "system") or DEFAULT_PROMPT_FILE
    try:
        return (extension_dir / name).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _field(value: Any, name: str) -> Any:
    """An attribute of KAREN's pydantic manifest, or a key of the same manifest as a dict."""
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _request(params: Any, settings: ClientConfig, system_prompt: str | None) -> dict[str, Any]:
    """`run` params as keyword arguments for KarenHostClient.generate; raises InvalidParams."""
    if not isinstance(params, Mapping):
        raise InvalidParams("params must be an object with 'prompt' or 'messages'")
    transport = params.get("transport") or settings.stream_transport
    if transport not in TRANSPORTS:
        raise InvalidParams(f"transport must be one of {', '.join(TRANSPORTS)}")
    timeout_s = params.get("timeout_s")
    if timeout_s is not None and (not isinstance(timeout_s, int | float) or timeout_s <= 0):
        raise InvalidParams("timeout_s must be a positive number of seconds")
    sampling = {"max_tokens": settings.max_tokens, "temperature": settings.temperature}
    sampling.update({k: params[k] for k in SAMPLING_FIELDS if params.get(k) is not None})
    system = params.get("system_prompt", system_prompt)  # present but empty: no system prompt
    return {
        "messages": _messages(params, system),
        "model": params.get("model") or None,
        "stream": bool(params.get("stream", False)),
        "transport": transport,
        "timeout_s": timeout_s,
        **sampling,
    }


def _messages(params: Mapping[str, Any], system: str | None) -> list[dict[str, str]]:
    raw, prompt = params.get("messages"), params.get("prompt")
    if raw is not None:
        if not isinstance(raw, list) or not raw:
            raise InvalidParams("messages must be a non-empty list of {role, content}")
        messages = [_message(m) for m in raw]
    elif isinstance(prompt, str) and prompt.strip():
        messages = [{"role": "user", "content": prompt}]
    else:
        raise InvalidParams("send 'prompt' (text) or 'messages' ([{role, content}, ...])")
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _message(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not isinstance(value.get("content"), str):
        raise InvalidParams("each message needs a string 'content'")
    if value.get("role") not in ("system", "developer", "user", "assistant"):
        raise InvalidParams("each message's role is system, developer, user or assistant")
    return {"role": value["role"], "content": value["content"]}


def _skipped(hook_point: str, reason: str) -> dict[str, Any]:
    return {"hook_point": hook_point, "status": "skipped", "reason": reason}


def _failed(exc: KarenHostError) -> dict[str, Any]:
    return GenerationResult.fallback(exc, transport="http").to_dict()
