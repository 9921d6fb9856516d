"""A token limited to some models sees and touches only those, on the native endpoints and /v1/models."""

import httpx
import pytest

from inference.engine import get_engine
from models_app.models import LLMModel, ModelConfig
from models_app.services import issue_token
from tests.conftest import metric_samples


@pytest.fixture
def narrow(live, fresh_engine, admin_user, gguf_copy):
    """A models:read + models:manage token limited to `other`, while `smollm2` (not its) is loaded."""
    other = LLMModel.objects.create(id="other", name="Other", file_path=str(gguf_copy))
    ModelConfig.objects.create(model=other, n_ctx=2048)
    _, ops = issue_token(name="ops", owner=admin_user, scopes=["models:manage", "models:read"])
    load = httpx.post(f"{live[0]}/models/load", json={"model_id": "smollm2"}, headers=auth(ops), timeout=60)
    assert load.status_code == 200, load.text
    _, secret = issue_token(name="narrow", owner=admin_user, scopes=["models:manage", "models:read"], models=["other"])
    return secret


def auth(secret):
    return {"Authorization": f"Bearer {secret}"}


def get(live, path, secret):
    response = httpx.get(f"{live[0]}{path}", headers=auth(secret), timeout=60)
    assert response.status_code == 200, response.text
    return response


def test_unloading_a_model_outside_the_tokens_models_is_403(live, narrow):
    response = httpx.post(f"{live[0]}/models/unload/smollm2", headers=auth(narrow), timeout=60)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("permission_error", "model", "model_not_allowed")
    assert get_engine().pool.get("smollm2") is not None


def test_models_lists_only_the_tokens_models(live, narrow):
    body = get(live, "/models", narrow).json()
    assert [m["id"] for m in body["available"]] == ["other"]
    assert body["loaded"] == [] and body["current"] is None


def test_v1_models_lists_only_the_tokens_models(live, narrow):
    assert [m["id"] for m in get(live, "/v1/models", narrow).json()["data"]] == ["other"]


def test_performance_shows_only_the_tokens_loaded_models(live, narrow):
    engine = get(live, "/performance", narrow).json()["engine"]
    assert engine["loaded"] == [] and "smollm2" not in engine["stats"]["load_ms"]


def test_metrics_carry_no_series_of_other_models(live, narrow):
    samples = metric_samples(get(live, "/metrics", narrow).text)
    assert not [key for key in samples if ("model", "smollm2") in key[1]]
    assert samples[("karenhost_models_loaded", frozenset())] == 0
    everything = metric_samples(get(live, "/metrics", live[1]).text)  # an unlimited token sees them
    assert [key for key in everything if ("model", "smollm2") in key[1]]


def test_karen_config_defaults_to_a_model_the_token_may_use(live, narrow):
    assert get(live, "/karen/config", narrow).json()["model"] == "other"
    assert get(live, "/karen/config", live[1]).json()["model"] == "smollm2"  # the loaded one, for everyone else
