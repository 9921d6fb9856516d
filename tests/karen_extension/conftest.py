"""Fixtures for the KAREN plugin: the plugin directory, a stand-in KAREN, servers that are down or stalled."""

import json
import socket
import sys
from pathlib import Path

import pytest

from karen_extension.runtime import PLUGIN_SOURCE
from tests.inference.conftest import _fresh_auth_cache, live, openai_client  # noqa: F401
from tests.karen_extension import karen_standin
from tests.karen_extension.karen_loader import load_like_extension_loader

TOKEN_ENV = "KAREN_HOST_API_KEY"
PLUGIN_ENV = (TOKEN_ENV, "KAREN_HOST_URL", "KAREN_HOST_MODEL", "KAREN_HOST_TIMEOUT_S", "KAREN_HOST_STREAM_TRANSPORT")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Tests set exactly the variables they mean; a developer's own shell settings never leak in."""
    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def plugin_dir() -> Path:
    return PLUGIN_SOURCE


@pytest.fixture
def manifest(plugin_dir) -> dict:
    return json.loads((plugin_dir / "plugin_manifest.json").read_text(encoding="utf-8"))


@pytest.fixture
def karen(monkeypatch):
    """The stand-in KAREN modules in sys.modules for one test (KAREN itself is the far edge we mock)."""
    for name, module in karen_standin.stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return karen_standin


@pytest.fixture
def down_url() -> str:
    """A URL where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def stalled_url():
    """A URL that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def load_plugin(karen, plugin_dir):
    """Build the plugin as KAREN's ExtensionLoader does; `config` is what KAREN's config manager holds."""

    def load(config: dict | None = None):
        return load_like_extension_loader(plugin_dir, config)

    return load


@pytest.fixture
def live_plugin(live, load_plugin, monkeypatch):  # noqa: F811 - `live` is the imported fixture
    """The plugin pointed at the live server with a valid token in the environment."""
    monkeypatch.setenv(TOKEN_ENV, live[1])
    return load_plugin({"base_url": live[0], "max_tokens": 8, "timeout_s": 120})
