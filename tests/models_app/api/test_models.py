"""/api/v1/models: list, filter, read, change, load, unload and rescan, with the real engine."""

import httpx
import pytest

from inference.engine import get_engine
from inference.engine.spec import ModelSpec
from models_app.models import LLMModel
from models_app.services import issue_token
from tests.models_app.api.conftest import assert_error, client_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/"


@pytest.fixture
def second_model(small_model):
    """A second row (same file, other path) that is disabled and invalid."""
    return LLMModel.objects.create(
        id="broken", name="Broken Qwen", file_path="/nowhere/broken.gguf", architecture="qwen2",
        quantization="Q8_0", status="invalid", enabled=False,
    )  # fmt: skip


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [m["id"] for m in response.json()["results"]]


def test_listing_models_needs_a_token(anonymous, small_model):
    assert_error(anonymous.get(URL), 401, error_type="authentication_error", code="missing_token")


def test_reader_lists_models_with_quantization_size_and_loaded_flag(reader, small_model):
    body = reader.get(URL).json()
    assert body["count"] == 1
    [model] = body["results"]
    assert model["id"] == "smollm2" and model["quantization"] == "Q4_1" and model["parameters"] == "135M"
    assert model["file_size"] == small_model.file_size and model["loaded"] is False


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=available", ["smollm2"]),
        ("status=invalid", ["broken"]),
        ("enabled=false", ["broken"]),
        ("architecture=llama", ["smollm2"]),
        ("quantization=q8_0", ["broken"]),
        ("search=qwen", ["broken"]),
        ("search=SmolLM2", ["smollm2"]),
    ],
)
def test_models_filter_by_status_enabled_architecture_quantization_and_name(reader, second_model, query, expected):
    assert ids(reader.get(f"{URL}?{query}")) == expected


def test_retrieve_includes_the_gguf_metadata(reader, small_model):
    body = reader.get(f"{URL}smollm2/").json()
    assert body["context_length"] == 8192 and body["block_count"] == small_model.block_count
    assert "im_start" in body["chat_template"] and body["gguf_metadata"]["eos_token"]


def test_unknown_model_is_404_in_the_error_shape(reader, small_model):
    assert_error(reader.get(f"{URL}nope/"), 404, error_type="not_found_error")


def test_reader_cannot_change_a_model(reader, small_model):
    response = reader.patch(f"{URL}smollm2/", {"enabled": False})
    error = assert_error(response, 403, error_type="permission_error", code="insufficient_scope")
    assert "models:manage" in error["message"]


def test_manager_renames_disables_and_preloads_a_model(manager, small_model):
    response = manager.patch(f"{URL}smollm2/", {"name": "Tiny", "enabled": False, "preload": True})
    assert response.status_code == 200 and response.json()["enabled"] is False
    small_model.refresh_from_db()
    assert (small_model.name, small_model.enabled, small_model.preload) == ("Tiny", False, True)


def test_measured_fields_cannot_be_changed(manager, small_model):
    manager.patch(f"{URL}smollm2/", {"sha256": "0" * 64, "quantization": "F16", "status": "invalid"})
    small_model.refresh_from_db()
    assert small_model.quantization == "Q4_1" and small_model.status == "available" and small_model.sha256 != "0" * 64


def test_put_is_not_offered(manager, small_model):
    assert_error(manager.put(f"{URL}smollm2/", {"name": "x"}), 405, error_type="invalid_request_error")


def test_load_shows_in_retrieve_and_unload_frees_it(manager, small_model):
    loaded = manager.post(f"{URL}smollm2/load/")
    assert loaded.status_code == 200, loaded.content
    assert loaded.json()["loaded"] is True and loaded.json()["load_ms"] > 0
    assert manager.get(f"{URL}smollm2/").json()["loaded"] is True
    assert [m["id"] for m in get_engine().status()["loaded"]] == ["smollm2"]
    unloaded = manager.post(f"{URL}smollm2/unload/")
    assert unloaded.json() == {"id": "smollm2", "unloaded": True}
    assert manager.get(f"{URL}smollm2/").json()["loaded"] is False


def test_unloading_a_model_that_is_not_loaded_reports_false(manager, small_model):
    assert manager.post(f"{URL}smollm2/unload/").json() == {"id": "smollm2", "unloaded": False}


def test_unloading_a_model_that_is_serving_is_a_409(manager, small_model):
    pool = get_engine().pool
    pool.acquire(ModelSpec.from_model(small_model))  # a request in flight holds a lease
    try:
        assert_error(manager.post(f"{URL}smollm2/unload/"), 409, error_type="conflict_error", code="model_busy")
    finally:
        pool.release("smollm2")
    assert manager.post(f"{URL}smollm2/unload/").json()["unloaded"] is True


def test_load_keeps_the_model_for_the_keep_alive_asked_for(manager, small_model):
    assert manager.post(f"{URL}smollm2/load/", {"keep_alive": "-1"}).status_code == 200
    assert get_engine().status()["loaded"][0]["keep_alive_s"] is None


def test_bad_keep_alive_names_the_field(manager, small_model):
    assert_error(manager.post(f"{URL}smollm2/load/", {"keep_alive": "soon"}), 400,
                 error_type="invalid_request_error", param="keep_alive")  # fmt: skip


def test_loading_a_disabled_model_is_a_409_that_says_why(manager, small_model):
    LLMModel.objects.filter(pk="smollm2").update(enabled=False)
    error = assert_error(manager.post(f"{URL}smollm2/load/"), 409, error_type="conflict_error",
                         code="model_not_servable")  # fmt: skip
    assert "disabled" in error["message"] and get_engine().status()["loaded"] == []


def test_reader_cannot_load_a_model(reader, small_model):
    assert_error(reader.post(f"{URL}smollm2/load/"), 403, error_type="permission_error")


def test_rescan_queues_the_scan_task_and_returns_its_id(manager, small_model):
    response = manager.post(f"{URL}smollm2/rescan/")
    assert response.status_code == 202, response.content
    assert response.json()["id"] == "smollm2" and len(response.json()["task_id"]) >= 32


def test_selftest_queues_a_self_test_and_returns_its_id(manager, small_model):
    response = manager.post(f"{URL}smollm2/selftest/")
    assert response.status_code == 202 and response.json()["task_id"]


def test_reader_cannot_queue_a_self_test(reader, small_model):
    assert_error(reader.post(f"{URL}smollm2/selftest/"), 403, error_type="permission_error")


def test_token_limited_to_other_models_neither_sees_nor_loads_this_one(admin_user, small_model, second_model):
    limited = client_for(
        issue_token(name="qwen only", owner=admin_user, scopes=["models:read", "models:manage"], models=["broken"])[1]
    )
    assert ids(limited.get(URL)) == ["broken"]
    assert_error(limited.post(f"{URL}smollm2/load/"), 404, error_type="not_found_error")


@pytest.mark.django_db(transaction=True)
def test_load_and_unload_show_in_v1_models_and_native_models_on_a_live_server(live_server, small_model, admin_user):
    secret = issue_token(name="ops", owner=admin_user, scopes=["models:read", "models:manage"])[1]
    headers = {"Authorization": f"Bearer {secret}"}

    def loaded_now() -> tuple[set[str], set[str]]:
        v1 = httpx.get(f"{live_server.url}/v1/models", headers=headers, timeout=30).json()
        native = httpx.get(f"{live_server.url}/models", headers=headers, timeout=30).json()
        return {m["id"] for m in v1["data"] if m["loaded"]}, {m["id"] for m in native["loaded"]}

    assert loaded_now() == (set(), set())
    load = httpx.post(f"{live_server.url}{URL}smollm2/load/", headers=headers, timeout=60)
    assert load.status_code == 200, load.text
    assert loaded_now() == ({"smollm2"}, {"smollm2"})
    unload = httpx.post(f"{live_server.url}{URL}smollm2/unload/", headers=headers, timeout=60)
    assert unload.json()["unloaded"] is True
    assert loaded_now() == (set(), set())
