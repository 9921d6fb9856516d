"""The original plan's KAREN handler flow, /health -> /models -> /models/load -> /inference, with a bearer token.

Older KAREN installs run that handler (LlamaCppExtension.pre_llm_prompt); the only
change they need is the Authorization header. Request bodies are the ones it sent.
"""

import httpx
import pytest

from models_app.services import issue_token


@pytest.fixture
def legacy_token(admin_user):
    """The scopes the old flow touches: models (read and load) and inference."""
    return issue_token(name="old-karen", owner=admin_user, scopes=["inference", "models:read", "models:manage"])[1]


async def test_original_handler_flow_succeeds_with_a_bearer_token(live, legacy_token):
    url, _, model = live
    headers = {"Authorization": f"Bearer {legacy_token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        health = await http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        models = await http.get("/models")
        assert models.status_code == 200 and "current" in models.json()
        loaded = await http.post("/models/load", json={"model_id": model})
        assert loaded.status_code == 200 and loaded.json()["status"] == "success"
        answer = await http.post(
            "/inference", json={"prompt": "Say hello.", "parameters": {"temperature": 0.7, "max_tokens": 8}}
        )
    assert answer.status_code == 200
    body = answer.json()
    assert isinstance(body["response"], str) and body["model_id"] == model and body["timing"]["inference_time_ms"] > 0


async def test_original_flow_without_a_token_is_refused_in_openai_shape(live):
    async with httpx.AsyncClient(base_url=live[0], timeout=120) as http:
        refused = await http.get("/models")
    assert refused.status_code == 401
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
