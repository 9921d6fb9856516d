"""The class KAREN's ExtensionLoader builds: `KarenHostExtension(manifest, ExtensionContext(...))`.

Thin on purpose: every call goes to `karen_extension.runtime.PluginRuntime`, which is
tested without KAREN. The method bodies use no builtin names and import nothing,
because KAREN's PluginExecutionEngine swaps this module's builtins for a short
allowlist (len, str, dict, ...) and its import hook while it runs `run()`.
"""

import importlib.util
import sys
from pathlib import Path
from typing import Any

from ai_karen_engine.extensions.platform.core.host.base import ExtensionBase

VENDORED_PACKAGE = Path(__file__).resolve().parent / "vendor" / "karen_extension"


def _load_runtime() -> Any:
    """PluginRuntime from the copy `python -m karen_extension install` vendored, else an installed one."""
    init = VENDORED_PACKAGE / "__init__.py"
    if "karen_extension" not in sys.modules and init.is_file():
        # Registered under its real name, so the package's absolute imports resolve to this copy.
        spec = importlib.util.spec_from_file_location(
            "karen_extension", init, submodule_search_locations=[str(VENDORED_PACKAGE)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["karen_extension"] = module
        spec.loader.exec_module(module)
    try:
        from karen_extension.runtime import PluginRuntime
    except ImportError as exc:
        raise ImportError(
            "karen_extension is not importable: install this plugin with "
            "`python -m karen_extension install --karen-root PATH` (it vendors the client), "
            f"or put the karen-host checkout on PYTHONPATH ({exc})"
        ) from exc
    return PluginRuntime


PluginRuntime = _load_runtime()


class KarenHostExtension(ExtensionBase):
    """KAREN's plugin for a karen-host server; lifecycle, hooks and run() forward to PluginRuntime."""

    def __init__(self, manifest: Any, context: Any) -> None:
        ExtensionBase.__init__(self, manifest, context)
        # KAREN's loader passes config={} unless an operator configured the plugin;
        # PluginRuntime fills the gaps from the manifest's config_schema and the environment.
        self.runtime = PluginRuntime(
            manifest=manifest, config=context.config, extension_dir=context.extension_dir, logger=self.logger
        )

    async def initialize(self) -> None:
        await self.runtime.initialize()

    async def shutdown(self) -> None:
        await self.runtime.shutdown()

    async def execute_hook(self, hook_point: Any, context: Any) -> dict[str, Any]:
        return await self.runtime.execute_hook(hook_point, context)

    async def run(self, params: Any) -> dict[str, Any]:
        """Direct execution: `{"prompt"|"messages", "stream", ...}` -> `{"status", "text", "model", ...}`."""
        return await self.runtime.run(params)

    async def execute(self, payload: Any, context: Any = None) -> dict[str, Any]:
        """The same as run(), for KAREN forks that call `execute(payload, context)`."""
        return await self.runtime.run(payload)

    def get_status(self) -> dict[str, Any]:
        return self.runtime.status(ExtensionBase.get_status(self))
