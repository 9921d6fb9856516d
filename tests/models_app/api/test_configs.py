"""/api/v1/configs: read and change a model's config, with validation that names the field."""

import pytest

from models_app.models import ModelConfig
from models_app.models.registry import PRESETS
from tests.models_app.api.conftest import assert_error

pytestmark = pytest.mark.django_db

URL = "/api/v1/configs/smollm2/"


def refused(client, body: dict, param: str) -> str:
    """PATCH `body`, expect a 400 naming `param`, and return the message."""
    return assert_error(client.patch(URL, body), 400, error_type="invalid_request_error", param=param)["message"]


def test_reader_reads_a_models_config(reader, small_model):
    body = reader.get(URL).json()
    assert body["model"] == "smollm2" and body["n_ctx"] == 2048 and body["optimize_for"] == "balanced"


def test_configs_list_has_one_per_model(reader, small_model):
    assert [c["model"] for c in reader.get("/api/v1/configs/").json()["results"]] == ["smollm2"]


def test_reader_cannot_change_a_config(reader, small_model):
    assert_error(reader.patch(URL, {"n_ctx": 1024}), 403, error_type="permission_error", code="insufficient_scope")


def test_manager_changes_sampling_defaults(manager, small_model):
    response = manager.patch(URL, {"temperature": 0.2, "top_k": 20, "system_prompt": "Be brief."})
    assert response.status_code == 200, response.content
    config = ModelConfig.objects.get(pk="smollm2")
    assert (config.temperature, config.top_k, config.system_prompt) == (0.2, 20, "Be brief.")


def test_n_ctx_beyond_the_trained_context_names_n_ctx(manager, small_model):
    assert "8192" in refused(manager, {"n_ctx": 16384}, "n_ctx")


def test_n_ctx_over_the_memory_budget_names_n_ctx(manager, small_model, settings):
    settings.MODEL_MEMORY_BUDGET_MB = 150  # 98 MB of weights fit; 8192 tokens of f16 KV cache do not
    assert "MODEL_MEMORY_BUDGET_MB" in refused(manager, {"n_ctx": 8192}, "n_ctx")
    assert manager.patch(URL, {"n_ctx": 512}).status_code == 200


def test_n_ctx_below_the_minimum_names_n_ctx(manager, small_model):
    refused(manager, {"n_ctx": 16}, "n_ctx")


def test_threads_below_one_names_n_threads(manager, small_model):
    refused(manager, {"n_threads": 0}, "n_threads")


@pytest.mark.parametrize(
    ("field", "value"), [("temperature", 2.5), ("temperature", -0.1), ("top_p", 1.5), ("repeat_penalty", 3.0)]
)
def test_sampling_values_out_of_range_name_the_field(manager, small_model, field, value):
    refused(manager, {field: value}, field)


def test_unknown_preset_names_optimize_for_and_lists_the_presets(manager, small_model):
    message = refused(manager, {"optimize_for": "turbo"}, "optimize_for")
    assert all(name in message for name in PRESETS)


def test_quantized_v_cache_without_flash_attention_names_cache_type_v(manager, small_model):
    assert "flash_attn" in refused(manager, {"cache_type_v": "q8_0", "flash_attn": False}, "cache_type_v")


def test_a_preset_writes_its_tunables_and_explicit_fields_win(manager, small_model):
    body = manager.patch(URL, {"optimize_for": "memory", "n_batch": 128}).json()
    assert body["optimize_for"] == "memory" and body["cache_type_v"] == "q8_0" and body["flash_attn"] is True
    assert body["n_batch"] == 128


def test_changing_n_ctx_of_a_loaded_model_requires_a_reload(manager, small_model):
    assert manager.post("/api/v1/models/smollm2/load/").status_code == 200
    assert manager.patch(URL, {"n_ctx": 1024}).json()["reload_required"] is True


def test_changing_sampling_defaults_of_a_loaded_model_needs_no_reload(manager, small_model):
    assert manager.post("/api/v1/models/smollm2/load/").status_code == 200
    assert manager.patch(URL, {"temperature": 0.1}).json()["reload_required"] is False


def test_changing_a_model_that_is_not_loaded_needs_no_reload(manager, small_model):
    assert manager.patch(URL, {"n_ctx": 1024}).json()["reload_required"] is False


def test_presets_lists_what_each_preset_writes(reader, small_model):
    body = reader.get("/api/v1/configs/presets/").json()
    assert set(body) == set(PRESETS) and body["speed"]["n_batch"] == 1024
