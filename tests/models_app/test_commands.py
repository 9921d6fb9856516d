import io
import re

import pytest
from django.core.management import call_command

from models_app.models import APIToken, LLMModel

pytestmark = pytest.mark.django_db


def test_create_token_prints_a_working_secret(admin_user, small_model):
    out = io.StringIO()
    call_command("create_token", "karen", "--scopes", "inference", "--models", "smollm2", stdout=out)
    secret = re.search(r"khk_\S+", out.getvalue()).group(0)
    token = APIToken.objects.get(name="karen")
    assert token.matches(secret) and token.scopes == ["inference"]


def test_serve_prepares_once_and_prints_secrets_only_the_first_time(models_dir, bundled_gguf, settings):
    first, second = io.StringIO(), io.StringIO()
    call_command("serve", "--no-serve", "--models-dir", str(models_dir), stdout=first)
    call_command("serve", "--no-serve", "--models-dir", str(models_dir), stdout=second)
    assert "Password:" in first.getvalue() and "khk_" in first.getvalue()
    assert "Password:" not in second.getvalue() and "khk_" not in second.getvalue()
    assert LLMModel.objects.get().status == "available"


def test_scan_models_command_summarises(models_dir, bundled_gguf):
    (models_dir / "m.gguf").symlink_to(bundled_gguf)
    out = io.StringIO()
    call_command("scan_models", str(models_dir), stdout=out)
    assert "1 added" in out.getvalue()
