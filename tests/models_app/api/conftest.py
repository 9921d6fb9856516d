"""Clients for the management API: one per kind of caller, each a DRF APIClient with its bearer token."""

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from inference.engine import reset_engine
from models_app.services import issue_token


def client_for(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def assert_error(response, status: int, *, error_type: str, param=None, code=None) -> dict:
    """The response is an error in the server's one shape; return its `error` object."""
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == error_type
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture(autouse=True)
def _fresh_engine_and_throttles():
    """No model loaded and no request counted when a test starts, and none left behind."""
    reset_engine()
    cache.clear()
    yield
    reset_engine()
    cache.clear()


@pytest.fixture
def anonymous():
    return APIClient()


@pytest.fixture
def reader(api_token):
    """A client whose token has `inference` and `models:read`."""
    return client_for(api_token[1])


@pytest.fixture
def manager_token(admin_user):
    return issue_token(name="ops", owner=admin_user, scopes=["models:read", "models:manage"])


@pytest.fixture
def manager(manager_token):
    """A client whose token has `models:read` and `models:manage` (not `admin`, not `inference`)."""
    return client_for(manager_token[1])


@pytest.fixture
def admin(admin_user):
    """A client whose token has the `admin` scope."""
    return client_for(issue_token(name="root token", owner=admin_user, scopes=["admin"])[1])


@pytest.fixture
def other_manager(other_user):
    """A manager token owned by another (non-admin) user."""
    return client_for(issue_token(name="mallory's", owner=other_user, scopes=["models:read", "models:manage"])[1])
