"""`python -m karen_extension install --karen-root PATH`: the plugin lands where KAREN discovers it, self-contained."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from karen_extension.install import PLUGINS_DIR, InstallError, install_plugin

MANIFEST_NAMES = {"plugin_manifest.json", "extension_manifest.json", "extension.json", "manifest.json"}
STANDIN_DIR = Path(__file__).resolve().parent
REPO = STANDIN_DIR.parents[1]

# Loads the installed handler the way host/loader.py does, in a Python that has the
# stand-in KAREN but not this repository on its path, and reports where
# karen_extension came from and what run() answered.
CHILD = """
import asyncio, importlib.util, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import karen_standin
karen_standin.install()
plugin_dir = Path(sys.argv[2])
data = json.loads((plugin_dir / "plugin_manifest.json").read_text())
spec = importlib.util.spec_from_file_location("karen-host_handler", plugin_dir / "handler.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
context = karen_standin.ExtensionContext(None, None, None, extension_dir=plugin_dir, config={"base_url": sys.argv[3]})
plugin = getattr(module, data["entrypoint"].split(":")[1])(karen_standin.Manifest(**data), context)

async def main():
    await plugin.initialize()
    try:
        return await plugin.run({"prompt": "Hi", "model": "smollm2"})
    finally:
        await plugin.shutdown()

print(json.dumps({"package": sys.modules["karen_extension"].__file__, "result": asyncio.run(main())}))
"""


@pytest.fixture
def karen_root(tmp_path) -> Path:
    (tmp_path / PLUGINS_DIR).mkdir(parents=True)
    return tmp_path


def discovered(plugins: Path) -> list[Path]:
    """Directories KAREN's ExtensionLoader.discover_extensions would take for extensions."""
    return [
        d for d in plugins.rglob("*")
        if d.is_dir() and not d.name.startswith("_") and any((d / n).exists() for n in MANIFEST_NAMES)
    ]  # fmt: skip


def test_install_puts_one_plugin_where_karen_discovers_it(karen_root):
    target = install_plugin(karen_root)
    assert target == karen_root / PLUGINS_DIR / "karen-host"
    assert {p.name for p in target.iterdir()} >= {"plugin_manifest.json", "handler.py", "__init__.py", "prompts"}
    assert (target / "vendor" / "karen_extension" / "runtime.py").is_file()
    assert discovered(karen_root / PLUGINS_DIR) == [target]


def test_install_refuses_a_directory_that_is_not_karen(tmp_path):
    with pytest.raises(InstallError, match="not a KAREN checkout"):
        install_plugin(tmp_path)


def test_install_replaces_an_existing_copy_only_with_force(karen_root):
    target = install_plugin(karen_root)
    (target / "stale.txt").write_text("old")
    with pytest.raises(InstallError, match="--force"):
        install_plugin(karen_root)
    install_plugin(karen_root, force=True)
    assert not (target / "stale.txt").exists()


def test_installed_plugin_runs_without_this_repository_on_the_path(karen_root, tmp_path, down_url):
    target = install_plugin(karen_root)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["KAREN_HOST_API_KEY"] = "khk_child_process_token_0123456789"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(STANDIN_DIR), str(target), down_url],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["package"].startswith(str(target / "vendor" / "karen_extension"))
    assert report["result"]["fallback_used"] is True and report["result"]["reason"] == "server_unreachable"


def test_cli_installs_and_prints_one_line(karen_root):
    command = [sys.executable, "-m", "karen_extension", "install", "--karen-root", str(karen_root)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "KAREN_HOST_API_KEY" in done.stdout
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr
