"""Run in a child process against the cluster's database: register the models, print a token."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402

from models_app.bundled import bundled_model_path  # noqa: E402
from models_app.gguf_files import read_metadata  # noqa: E402
from models_app.models import LLMModel, ModelConfig  # noqa: E402
from models_app.scanning import apply_metadata  # noqa: E402
from models_app.services import issue_token  # noqa: E402

path = bundled_model_path()
model = LLMModel(id="smollm2", name="SmolLM2 135M", file_path=str(path), file_size=path.stat().st_size)
apply_metadata(model, read_metadata(path))  # as tests/conftest.py's small_model, so local and remote agree
model.save()
ModelConfig.objects.create(model=model, n_ctx=2048, n_parallel=2)  # 2 slots: a third job queues
# A model no node holds; it never loads (no file), so routing alone decides its fate.
LLMModel.objects.create(id="ghost", name="Ghost", file_path="/nonexistent/ghost.gguf", file_size=1)
owner = get_user_model().objects.create_superuser(username="root", password="pw-for-tests-only")
_, secret = issue_token(name="scaleout", owner=owner, scopes=["inference", "models:read", "models:manage"])
print(json.dumps({"secret": secret}))
