"""Load the plugin the two ways KAREN does at 166eab1f, against the stand-in KAREN modules.

- `load_like_extension_loader`: src/ai_karen_engine/extensions/platform/core/host/loader.py,
  ExtensionLoader.load_manifest + load_extension: refuse legacy manifest keys, validate,
  import `handler.py` by file path (name `<name>_handler` outside src/, not put in
  sys.modules), split `entrypoint` on ":" into exactly ("handler", Class), require a
  subclass of ExtensionBase, build `Class(manifest, ExtensionContext(..., config=...))`
  where the config manager's default is `{}`.
- `load_like_plugin_execution`: src/ai_karen_engine/services/plugin_execution.py,
  _load_plugin_entrypoint_sync: import `__init__.py` as package `plugin_<name_with_underscores>`
  with the plugin directory as its search path, then `<package>.handler`, build the class
  with `config={}` and hand back the bound `run`.
"""

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from tests.karen_extension.karen_standin import ExtensionBase, ExtensionContext, Manifest

LEGACY_KEYS = ("plugin_api_version", "entry_point", "module", "intent", "plugin_type")


def read_manifest(plugin_dir: Path) -> dict[str, Any]:
    return json.loads((plugin_dir / "plugin_manifest.json").read_text(encoding="utf-8"))


def load_like_extension_loader(plugin_dir: Path, config: dict[str, Any] | None = None) -> Any:
    data = read_manifest(plugin_dir)
    legacy = [key for key in LEGACY_KEYS if key in data]
    assert not legacy, f"ExtensionLoader refuses legacy manifests; found {legacy}"
    manifest = Manifest(**data)
    spec = importlib.util.spec_from_file_location(f"{manifest.name}_handler", plugin_dir / "handler.py")
    module = importlib.util.module_from_spec(spec)
    module.__package__ = ""
    spec.loader.exec_module(module)
    parts = manifest.entrypoint.split(":")
    assert len(parts) == 2 and parts[0] == "handler", f"entrypoint must be handler:<Class>, got {manifest.entrypoint}"
    extension_class = getattr(module, parts[1])
    assert issubclass(extension_class, ExtensionBase)
    context = ExtensionContext(
        plugin_router=None, db_session=None, app_instance=None, extension_dir=plugin_dir, config=config or {}
    )
    return extension_class(manifest, context)


def load_like_plugin_execution(plugin_dir: Path) -> Any:
    manifest = Manifest(**read_manifest(plugin_dir))
    package = f"plugin_{manifest.name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(
        package, plugin_dir / "__init__.py", submodule_search_locations=[str(plugin_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    try:
        spec.loader.exec_module(module)
        handler = importlib.import_module(f"{package}.handler")
    finally:
        sys.modules.pop(package, None)
        sys.modules.pop(f"{package}.handler", None)
    extension_class = getattr(handler, manifest.entrypoint.split(":")[1])
    context = ExtensionContext(
        plugin_router=None, db_session=None, app_instance=None, extension_dir=plugin_dir, config={}
    )
    return extension_class(manifest, context).run
