"""Settings precedence, validation, and the rule that the token lives only in the environment."""

import json

import pytest

from karen_extension.config import ClientConfig, ConfigError, load_config
from karen_extension.errors import error_from_body, error_from_status, redact


def test_environment_overrides_defaults_and_karens_config_overrides_both():
    environ = {"KAREN_HOST_URL": "http://gpu-box:8080/", "KAREN_HOST_TIMEOUT_S": "5", "KAREN_HOST_MODEL": "env-model"}
    config = load_config({"max_tokens": 256}, {"model": "karen-model"}, environ)
    assert config.base_url == "http://gpu-box:8080" and config.timeout_s == 5.0
    assert config.model == "karen-model" and config.max_tokens == 256


def test_boolean_settings_read_from_strings():
    assert load_config(karen_config={"register_provider": "false"}, environ={}).register_provider is False


@pytest.mark.parametrize(
    "values, named",
    [({"base_url": "127.0.0.1:8080"}, "base_url"), ({"stream_transport": "carrier-pigeon"}, "stream_transport"),
     ({"timeout_s": "soon"}, "timeout_s"), ({"timeout_s": 0}, "timeout_s")],
)  # fmt: skip
def test_a_bad_setting_is_named_in_the_error(values, named):
    with pytest.raises(ConfigError, match=named):
        load_config(karen_config=values, environ={})


def test_the_token_is_read_from_the_named_variable_and_never_kept_in_settings(monkeypatch):
    monkeypatch.setenv("MY_KAREN_TOKEN", "khk_from_the_environment_123456")
    config = ClientConfig(api_key_env="MY_KAREN_TOKEN")
    assert config.read_token() == "khk_from_the_environment_123456"
    assert "khk_" not in repr(config) and "khk_" not in str(config.public_dict())


def test_redact_masks_the_secret_and_anything_token_shaped():
    text = redact("sent Bearer khk_abcdefghijkl and sk-0123456789 and s3cret", "s3cret")
    assert "khk_abc" not in text and "sk-0123" not in text and "s3cret" not in text


def test_server_errors_map_to_reasons_with_the_servers_message():
    payload = {"message": "Unknown model x", "type": "not_found_error", "param": "model", "code": "model_not_found"}
    body = json.dumps({"error": payload})
    error = error_from_status(404, body)
    assert error.reason == "model_not_found" and "Unknown model x" in str(error) and error.param == "model"
    assert error_from_status(429, "", retry_after="3").retry_after == 3.0
    assert error_from_status(502, "<html>").reason == "server_error"
    assert error_from_body({"type": "authentication_error", "message": "bad"}).reason == "token_refused"
