"""The plugin, loaded as KAREN's ExtensionLoader loads it, against a live server with the real model."""

import asyncio
import json
import sys
import threading
import types

import pytest

from karen_extension.provider import PROVIDER_ID

# core/model_runtime/provider_policy.py at 166eab1f: ids KAREN refuses, and the local ones it allows.
KAREN_REMOVED_PROVIDERS = {"gguf", "local_gguf", "llamacpp", "llama_cpp", "llama.cpp", "local", "local_llama"}
KAREN_LOCAL_PROVIDERS = {"ollama", "lm_studio", "openai_compatible_local"}
ANSWER_KEYS = {"status", "text", "model", "usage", "fallback_used"}
REGISTRY_MODULE = "ai_karen_engine.core.model_runtime.provider_registry_service"


class RecordingRegistry:
    """KAREN's ProviderRegistryService, reduced to the one call the plugin makes."""

    def __init__(self):
        self.calls = []

    def register_openai_compatible_endpoint(self, **kwargs):
        self.calls.append(kwargs)


async def test_run_answers_in_the_documented_shape(live_plugin, live):
    result = await live_plugin.run({"prompt": "Say hello.", "max_tokens": 8})
    assert set(result) >= ANSWER_KEYS and json.dumps(result)
    assert result["status"] == "success" and result["fallback_used"] is False and result["model"] == live[2]
    assert "error" not in result and result["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_run_streams_over_sse_and_websocket(live_plugin, transport):
    params = {"messages": [{"role": "user", "content": "Say hello."}], "stream": True, "transport": transport}
    result = await live_plugin.run(params)
    assert result["status"] == "success" and result["transport"] == transport and result["text"]


async def test_pre_llm_prompt_adds_the_local_answer_to_the_context(live_plugin, karen, live):
    context = karen.HookContext(karen.HookPoint.PRE_LLM_PROMPT, {"prompt": "Say hello.", "model": "gpt-4o"})
    result = await live_plugin.execute_hook(karen.HookPoint.PRE_LLM_PROMPT, context)
    assert result["status"] == "success"
    local = context.data["local_inference"]
    assert local["model"] == live[2] and isinstance(local["response"], str) and local["timing"]["duration_ms"] > 0


async def test_post_llm_result_records_that_the_local_model_took_part(live_plugin, karen):
    context = karen.HookContext(karen.HookPoint.PRE_LLM_PROMPT, {"prompt": "Say hello."})
    await live_plugin.execute_hook(karen.HookPoint.PRE_LLM_PROMPT, context)
    context.data["response"] = "KAREN's own answer"
    result = await live_plugin.execute_hook(karen.HookPoint.POST_LLM_RESULT, context)
    assert result["status"] == "recorded" and result["metadata"]["local_inference_used"] is True
    assert context.data["metadata"]["local_model"] == context.data["local_inference"]["model"]


async def test_post_llm_result_answers_a_request_dispatched_like_karens_router(live_plugin, karen):
    """host/router.py PluginRouter.dispatch: HookContext(PRE_INTENT_DETECTION, params) run under POST_LLM_RESULT."""
    context = karen.HookContext(karen.HookPoint.PRE_INTENT_DETECTION, {"prompt": "Say hello.", "max_tokens": 8})
    result = await live_plugin.execute_hook(karen.HookPoint.POST_LLM_RESULT, context)
    assert result["status"] == "success" and result["text"] is not None


async def test_refused_token_makes_run_fall_back_without_the_token(live, load_plugin, monkeypatch):
    secret = "khk_refused_plugin_secret_0123456789abcdef"
    monkeypatch.setenv("KAREN_HOST_API_KEY", secret)
    plugin = load_plugin({"base_url": live[0], "model": live[2]})
    await plugin.initialize()
    result = await plugin.run({"prompt": "Say hello.", "max_tokens": 8})
    assert result["fallback_used"] is True and result["reason"] == "token_refused"
    assert secret not in json.dumps(result) and secret not in json.dumps(plugin.get_status())


def test_run_works_from_a_fresh_event_loop_per_call(live_plugin):
    """services/plugin_execution.py _execute_in_thread runs each call with asyncio.run in a worker thread."""
    results = []

    def call() -> None:
        results.append(asyncio.run(live_plugin.run({"prompt": "Say hello.", "max_tokens": 8})))

    for _ in range(2):
        thread = threading.Thread(target=call)
        thread.start()
        thread.join(timeout=120)
    assert [r["status"] for r in results] == ["success", "success"]


async def test_initialize_registers_karens_local_openai_compatible_provider(live_plugin, live, monkeypatch):
    """core/model_runtime/provider_registry_service.py register_openai_compatible_endpoint, under the
    id that provider_policy.py allows; model_manager.py reads the key from api_key_env itself."""
    registry, module = RecordingRegistry(), types.ModuleType(REGISTRY_MODULE)
    module.get_provider_registry_service = lambda: registry
    monkeypatch.setitem(sys.modules, REGISTRY_MODULE, module)
    await live_plugin.initialize()
    (call,) = registry.calls
    assert call["provider_id"] == PROVIDER_ID and PROVIDER_ID in KAREN_LOCAL_PROVIDERS
    assert PROVIDER_ID not in KAREN_REMOVED_PROVIDERS
    assert call["base_url"] == f"{live[0]}/v1" and call["default_model"] == live[2]
    assert call["api_key_env"] == "KAREN_HOST_API_KEY" and live[1] not in repr(call)
    assert live_plugin.get_status()["provider"]["registered"] is True


async def test_initialize_without_karens_registry_says_so(live_plugin):
    await live_plugin.initialize()
    provider = live_plugin.get_status()["provider"]
    assert provider["registered"] is False and provider["reason"] == "karen_registry_not_importable"
