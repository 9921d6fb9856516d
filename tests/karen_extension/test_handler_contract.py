"""handler.py against KAREN's loader and runners at Zeus-Eternal/AI-Karen@166eab1f (no server needed).

Paths below are relative to src/ai_karen_engine/ in that commit.
"""

import ast
import builtins
import json
import time
import types

import pytest

from tests.karen_extension.karen_loader import load_like_plugin_execution

# services/plugin_execution.py, SecurityPolicy.allowed_builtins: all a sandboxed run() may use.
SANDBOX_BUILTINS = {
    "len", "str", "int", "float", "bool", "list", "dict", "tuple", "set", "range", "enumerate",
    "zip", "map", "filter", "sorted", "min", "max", "sum", "abs", "round", "print",
}  # fmt: skip
ODD_DATA = [None, {}, [], "text", 42, {"prompt": 5}, {"messages": "x"}, {"messages": [{"role": "robot"}]}]


def test_loader_builds_the_entrypoint_class_with_karens_empty_config(load_plugin, karen):
    """host/loader.py load_extension: file import of handler.py, issubclass(ExtensionBase),
    Class(manifest, ExtensionContext(plugin_router=None, db_session=None, app_instance=None,
    extension_dir=..., config={}))."""
    plugin = load_plugin()
    assert isinstance(plugin, karen.ExtensionBase) and plugin.enabled
    assert plugin.runtime.settings.base_url == "http://127.0.0.1:8080"
    assert plugin.runtime.settings.api_key_env == "KAREN_HOST_API_KEY"
    assert plugin.runtime.system_prompt and "KAREN" in plugin.runtime.system_prompt


def test_plugin_execution_engine_can_import_the_package_and_call_run(karen, plugin_dir, down_url, monkeypatch):
    """services/plugin_execution.py _load_plugin_entrypoint_sync: __init__.py as a package,
    then <package>.handler, then the instance's bound run()."""
    monkeypatch.setenv("KAREN_HOST_URL", down_url)
    run = load_like_plugin_execution(plugin_dir)
    assert run.__name__ == "run"


async def test_initialize_succeeds_with_the_server_down(load_plugin, down_url):
    """host/base.py _initialize wraps any exception from initialize() into ExtensionLoadError."""
    plugin = load_plugin({"base_url": down_url})
    started = time.monotonic()
    assert await plugin.initialize() is None
    assert time.monotonic() - started < 5
    assert plugin.get_status()["server"] == "unreachable"


async def test_initialize_succeeds_with_the_server_stalled(load_plugin, stalled_url):
    plugin = load_plugin({"base_url": stalled_url, "connect_timeout_s": 0.2})
    started = time.monotonic()
    await plugin.initialize()
    assert time.monotonic() - started < 5 and plugin.get_status()["server"] == "unreachable"


async def test_shutdown_is_idempotent(load_plugin, down_url):
    plugin = load_plugin({"base_url": down_url})
    await plugin.shutdown()  # before initialize
    await plugin.initialize()
    await plugin.run({"prompt": "Hi"})
    await plugin.shutdown()
    await plugin.shutdown()


async def test_run_with_the_server_down_is_a_fallback_with_the_reason(load_plugin, down_url, monkeypatch):
    monkeypatch.setenv("KAREN_HOST_API_KEY", "khk_not_a_real_token_but_long_enough")
    result = await load_plugin({"base_url": down_url, "model": "smollm2"}).run({"prompt": "Hi"})
    assert result["status"] == "fallback" and result["fallback_used"] is True
    assert result["reason"] == "server_unreachable" and result["text"] == "" and result["error"]


async def test_run_without_prompt_or_messages_says_what_to_send(load_plugin, down_url):
    result = await load_plugin({"base_url": down_url}).run({"stream": True})
    assert result["reason"] == "invalid_params" and "prompt" in result["error"]


async def test_declared_hooks_with_the_server_down_return_a_dict_with_an_error(load_plugin, karen, down_url):
    """host/runner.py _execute_extension_safely wraps a raised exception as ExtensionHookError; ours never raise."""
    plugin = load_plugin({"base_url": down_url, "model": "smollm2"})
    context = karen.HookContext(karen.HookPoint.PRE_LLM_PROMPT, {"prompt": "Hi"})
    result = await plugin.execute_hook(karen.HookPoint.PRE_LLM_PROMPT, context)
    assert result["fallback_used"] is True and result["error"]
    assert "local_inference" not in context.data  # a fallback never poses as an answer
    recorded = await plugin.execute_hook(karen.HookPoint.POST_LLM_RESULT, karen.HookContext("x", {"response": "ok"}))
    assert recorded["status"] == "recorded" and recorded["metadata"]["local_inference_used"] is False


@pytest.mark.parametrize("data", ODD_DATA, ids=repr)
async def test_every_hook_point_returns_a_json_dict_for_any_data(load_plugin, karen, down_url, data):
    plugin = load_plugin({"base_url": down_url})
    for hook_point in karen.HookPoint:
        result = await plugin.execute_hook(hook_point, karen.HookContext(hook_point, data))
        assert isinstance(result, dict) and json.dumps(result)
        assert isinstance(await plugin.execute_hook(hook_point.value, data), dict)


@pytest.mark.parametrize("params", ODD_DATA, ids=repr)
async def test_run_returns_a_json_dict_for_any_params(load_plugin, down_url, params):
    result = await load_plugin({"base_url": down_url}).run(params)
    assert result["fallback_used"] is True and json.dumps(result)


async def test_execute_is_run_for_forks_that_call_it(load_plugin, down_url):
    plugin = load_plugin({"base_url": down_url})
    assert (await plugin.execute({"prompt": "Hi"}, None))["fallback_used"] is True


def test_handler_methods_use_only_the_sandboxs_builtins(plugin_dir):
    """services/plugin_execution.py PluginSandbox replaces the handler module's builtins with
    SecurityPolicy.allowed_builtins and __import__ with an allowlist while run() executes."""
    tree = ast.parse((plugin_dir / "handler.py").read_text(encoding="utf-8"))
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    for method in cls.body:
        names = {n.id for n in ast.walk(method) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        used = {name for name in names if hasattr(builtins, name)}
        assert used <= SANDBOX_BUILTINS, f"{method.name} uses {used - SANDBOX_BUILTINS}"
        assert not [n for n in ast.walk(method) if isinstance(n, ast.Import | ast.ImportFrom)], method.name


async def test_run_works_under_the_sandboxs_builtins(load_plugin, down_url):
    """Run the handler's own code with only the sandbox's builtins, as PluginSandbox.run_async does."""
    plugin = load_plugin({"base_url": down_url})
    cls = type(plugin)
    restricted = {**cls.run.__globals__, "__builtins__": {n: getattr(builtins, n) for n in SANDBOX_BUILTINS}}
    for name in ("run", "execute"):
        method = getattr(cls, name)
        sandboxed = types.FunctionType(method.__code__, restricted, name, method.__defaults__, method.__closure__)
        assert (await sandboxed(plugin, {"prompt": "Hi"}))["fallback_used"] is True


async def test_status_is_json_and_never_shows_the_token(load_plugin, down_url, monkeypatch):
    secret = "khk_status_must_not_show_this_secret"
    monkeypatch.setenv("KAREN_HOST_API_KEY", secret)
    plugin = load_plugin({"base_url": down_url})
    await plugin.initialize()
    status = json.dumps(plugin.get_status())
    assert secret not in status and '"token_configured": true' in status
    assert secret not in repr(plugin.runtime.client) and secret not in repr(plugin.runtime.settings)


async def test_karens_config_wins_over_the_environment(load_plugin, monkeypatch):
    monkeypatch.setenv("KAREN_HOST_URL", "http://10.0.0.9:1")
    monkeypatch.setenv("KAREN_HOST_MODEL", "from-env")
    settings = load_plugin({"base_url": "http://127.0.0.1:9"}).runtime.settings
    assert settings.base_url == "http://127.0.0.1:9" and settings.model == "from-env"


async def test_bad_settings_are_reported_by_every_call_instead_of_breaking_the_loader(load_plugin):
    plugin = load_plugin({"base_url": "ftp://nowhere"})
    await plugin.initialize()
    result = await plugin.run({"prompt": "Hi"})
    assert result["reason"] == "config_error" and "base_url" in result["error"]
