"""Copy the plugin into a KAREN checkout, with this package vendored beside it.

KAREN discovers plugins as directories under `src/ai_karen_engine/extensions/plugins/`
holding a manifest; the handler imports `karen_extension`, which KAREN's environment
does not have, so a copy of the package goes into the plugin's `vendor/` directory
(no manifest file there, so KAREN's discovery never mistakes it for a plugin).
"""

import shutil
from pathlib import Path

from karen_extension.runtime import PLUGIN_SOURCE

PLUGINS_DIR = Path("src", "ai_karen_engine", "extensions", "plugins")
PLUGIN_NAME = "karen-host"
PACKAGE_DIR = Path(__file__).resolve().parent


class InstallError(Exception):
    """The plugin cannot be installed where asked; the message says what to change."""


def install_plugin(karen_root: Path, *, force: bool = False) -> Path:
    """Install into `<karen_root>/src/ai_karen_engine/extensions/plugins/karen-host`; return that path."""
    plugins = Path(karen_root) / PLUGINS_DIR
    if not plugins.is_dir():
        raise InstallError(f"{karen_root} is not a KAREN checkout: {plugins} does not exist")
    target = plugins / PLUGIN_NAME
    if target.exists():
        if not force:
            raise InstallError(f"{target} already exists; pass --force to replace it")
        shutil.rmtree(target)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PLUGIN_SOURCE, target, ignore=ignore)
    vendored = target / "vendor" / "karen_extension"
    vendored.mkdir(parents=True)
    for module in PACKAGE_DIR.glob("*.py"):  # the package's modules only: not plugin/, not caches
        shutil.copy2(module, vendored / module.name)
    return target
