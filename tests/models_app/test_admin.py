import re

import pytest
from django.urls import reverse

from models_app.models import APIToken, UsageRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def usage_row(small_model, api_token):
    return UsageRecord.objects.create(
        request_id="req-1", token=api_token[0], model=small_model, endpoint="chat.completions"
    )


@pytest.mark.parametrize("name", ["llmmodel", "modelconfig", "apitoken", "usagerecord"])
def test_changelist_renders(admin_client, small_model, api_token, usage_row, name):
    response = admin_client.get(reverse(f"admin:models_app_{name}_changelist"))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("name", "pk"),
    [
        ("llmmodel", lambda m, t, u: m.pk),
        ("modelconfig", lambda m, t, u: m.pk),
        ("apitoken", lambda m, t, u: t.pk),
        ("usagerecord", lambda m, t, u: u.pk),
    ],
)
def test_change_view_renders(admin_client, small_model, api_token, usage_row, name, pk):
    url = reverse(f"admin:models_app_{name}_change", args=[pk(small_model, api_token[0], usage_row)])
    assert admin_client.get(url).status_code == 200


def test_model_page_shows_real_metadata(admin_client, small_model):
    page = admin_client.get(reverse("admin:models_app_llmmodel_change", args=[small_model.pk])).content.decode()
    assert "llama" in page and "Q4_1" in page and "8192" in page and "im_start" in page


def test_model_page_shows_its_failed_loads_and_when_the_next_try_is(admin_client, small_model):
    from models_app.services import clear_load_failure, record_load_failure

    record_load_failure(model_id=small_model.pk, reason="llama.cpp failed to load it: out of memory", retry_in_s=20)
    page = admin_client.get(reverse("admin:models_app_llmmodel_change", args=[small_model.pk])).content.decode()
    assert "out of memory" in page and "Load retry at" in page
    small_model.refresh_from_db()
    assert small_model.load_failures == 1 and small_model.status == "available"
    clear_load_failure(model_id=small_model.pk)
    small_model.refresh_from_db()
    assert (small_model.load_failures, small_model.last_load_error, small_model.load_retry_at) == (0, "", None)


def test_model_list_shows_quantization_and_size(admin_client, small_model):
    page = admin_client.get(reverse("admin:models_app_llmmodel_changelist")).content.decode()
    assert "Q4_1" in page and "135M" in page and "MB" in page


def test_token_created_in_admin_shows_its_secret_once(admin_client, admin_user):
    response = admin_client.post(
        reverse("admin:models_app_apitoken_add"),
        {"name": "from admin", "owner": admin_user.pk, "scopes": ["inference"]},
        follow=True,
    )
    page = response.content.decode()
    secret = re.search(r"khk_[A-Za-z0-9_-]{40,}", page).group(0)
    token = APIToken.objects.get(name="from admin")
    assert token.matches(secret)
    again = admin_client.get(reverse("admin:models_app_apitoken_change", args=[token.pk])).content.decode()
    assert secret not in again


def test_disable_action_reports_count(admin_client, small_model):
    response = admin_client.post(
        reverse("admin:models_app_llmmodel_changelist"),
        {"action": "disable", "_selected_action": [small_model.pk]},
        follow=True,
    )
    small_model.refresh_from_db()
    assert not small_model.enabled
    assert "Disabled 1 model" in response.content.decode()


def test_choosing_a_preset_in_admin_applies_it(admin_client, small_model):
    url = reverse("admin:models_app_modelconfig_change", args=[small_model.pk])
    form = {
        "optimize_for": "memory", "n_ctx": 2048, "n_batch": 512, "n_gpu_layers": -1, "use_mmap": "on",
        "rope_scaling": "model", "rope_freq_base": 0, "rope_freq_scale": 0, "cache_type_k": "f16",
        "cache_type_v": "f16", "temperature": 0.7, "top_p": 0.9, "top_k": 40, "repeat_penalty": 1.1,
        "max_tokens": 256, "system_prompt": "",
    }  # fmt: skip
    assert admin_client.post(url, form).status_code == 302
    small_model.config.refresh_from_db()
    assert (small_model.config.cache_type_k, small_model.config.n_batch) == ("q8_0", 256)


def test_rescan_action_queues_a_task_instead_of_probing_in_the_request(admin_client, small_model, transactional_db):
    response = admin_client.post(
        reverse("admin:models_app_llmmodel_changelist"),
        {"action": "rescan", "_selected_action": [small_model.pk]},
        follow=True,
    )
    assert re.search(r"Queued 1 rescan\(s\) \(task ids: [0-9a-f-]{36}\)", response.content.decode())
