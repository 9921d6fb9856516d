"""Log lines: secrets masked by the filter, one JSON object per line, the request id on a request's lines."""

import io
import json
import logging

import pytest

from karen_host.logs import ContextFilter, JSONFormatter, SecretFilter, TextFormatter, bind, mask
from tests.conftest import wait_for

SECRET = "khk_AbCdEfGh" + "x" * 40


@pytest.mark.parametrize(
    ("line", "gone"),
    [
        (f"Authorization: Bearer {SECRET}", SECRET[12:]),
        (f"subprotocols ['karen.v1', 'bearer.{SECRET}']", SECRET[12:]),
        ("Authorization: Bearer sk-live-0123456789abcdef", "0123456789abcdef"),
        ('{"username": "admin", "password": "hunter2-very-long"}', "hunter2-very-long"),
        ("POST /login?user=a&password=hunter2-very-long&next=/", "hunter2-very-long"),
        ("broker redis://celery:s3cr3t-pass@10.0.0.5:6379/0 unreachable", "s3cr3t-pass"),
        ("postgresql://karen:pg-pass-123@db/karen", "pg-pass-123"),
    ],
)
def test_secrets_are_masked(line, gone):
    masked = mask(line)
    assert (gone not in masked and "***" in masked) or masked.endswith("…") or "…" in masked


def test_a_token_keeps_only_its_lookup_prefix():
    assert mask(f"token {SECRET} used") == "token khk_AbCdEfGh… used"


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(SecretFilter())
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{id(out)}")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.INFO
    return logger, out


def test_json_lines_parse_and_carry_the_bound_context_and_no_secret():
    logger, out = _logger(JSONFormatter())
    with bind(request_id="req_abc", token="scripts", model="smollm2"):
        logger.info("refused %s", f"Bearer {SECRET}", extra={"status": 401})
        try:
            raise ValueError(f"bad secret {SECRET}")
        except ValueError:
            logger.exception("failed")
    logger.info("outside")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["refused Bearer ***…", "failed", "outside"]
    assert lines[0]["request_id"] == "req_abc" and lines[0]["status"] == 401 and lines[0]["level"] == "INFO"
    assert "ValueError: bad secret khk_AbCdEfGh…" in lines[1]["exception"]
    assert "request_id" not in lines[2]  # the binding ended with its block
    assert SECRET[12:] not in out.getvalue()


def test_text_lines_show_the_fields_after_the_message():
    logger, out = _logger(TextFormatter())
    with bind(request_id="req_abc"):
        logger.info("hello", extra={"status": 200})
    assert out.getvalue().rstrip().endswith("hello [status=200 request_id=req_abc]")


@pytest.mark.django_db(transaction=True)
def test_a_request_logs_one_line_under_its_request_id(client, small_model, api_token):
    logger, out = _logger(JSONFormatter())
    root = logging.getLogger()
    handler, level = logger.handlers[0], root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        body = {"model": small_model.id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        response = client.post("/v1/chat/completions", body, content_type="application/json",
                               HTTP_AUTHORIZATION=f"Bearer {api_token[1]}")  # fmt: skip
        refused = client.post("/v1/chat/completions", body, content_type="application/json",
                              HTTP_AUTHORIZATION=f"Bearer {SECRET}")  # fmt: skip
        request_id = response["X-Request-Id"]

        def finished() -> list[dict]:
            lines = [json.loads(line) for line in out.getvalue().splitlines()]
            return [line for line in lines if line.get("request_id") == request_id and "status" in line]

        assert wait_for(lambda: finished(), timeout=30)
        (line,) = finished()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert response.status_code == 200 and refused.status_code == 401
    assert (line["endpoint"], line["model"], line["status"]) == ("chat.completions", small_model.id, "completed")
    assert line["completion_tokens"] == 2 and line["duration_ms"] > 0
    assert api_token[1][12:] not in out.getvalue() and SECRET[12:] not in out.getvalue()


def test_a_celery_task_logs_under_its_id():
    from types import SimpleNamespace

    from karen_host.celery import _log_under_the_task

    logger, out = _logger(JSONFormatter())
    _log_under_the_task(task_id="4f1c-task", task=SimpleNamespace(name="models_app.tasks.scan_models"))
    logger.info("scanning")
    line = json.loads(out.getvalue())
    assert (line["task_id"], line["task"]) == ("4f1c-task", "models_app.tasks.scan_models")
