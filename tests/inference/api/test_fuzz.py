"""No request can hurt the server: /v1, Ollama's /api and the native API fuzzed from their own OpenAPI schemas.

Schemathesis turns each operation of /v1/openapi.json, /api/ollama/openapi.json and /openapi.json
into requests, schema-valid and schema-breaking ones (its positive and negative modes, through its
examples, coverage and fuzzing phases), and sends them with a real token to the whole ASGI app on
a live port, which serves the real bundled model. A request may be refused, but never with a 5xx
(the model-store operations /api does not offer answer 501 by design); every 4xx is the one error
shape (Ollama's `{"error": "..."}` on /api); a streamed 200 carries no error frame or line; and
after each operation's run a plain chat completion still answers 200 (the `target` fixture's teardown).

Bounded and the same every time: Hypothesis is derandomized, keeps no example database, has no
deadline and does not shrink (a failure shows the request as generated, and the server's
traceback is in the captured log); fuzzing sends `FUZZ_EXAMPLES` requests per operation, positive
and negative mixed, and the examples and coverage phases add their fixed lists. Hypothesis also
draws from string constants in the project's own modules, which depends on what happens to be
imported; `_same_draws_every_run` turns that off.

Where the served schema is looser than the contract, the fuzzed copy is sharpened (`_sharpen`):
logit_bias keys are token ids and a json_schema response format holds something schema-like.
It also carries whole-body examples, one edge per request, for values the generator rarely
reaches (`_BODY_EXAMPLES`: token ids at and past the vocabulary, NUL, empty, special-token and
huge stop strings, huge seeds and keep_alive values, schemas a grammar converter may choke on,
prompts past the context window, streaming).

Generation stays cheap: the model's configured default is `MAX_TOKENS` and `_steer` lowers any
larger `max_tokens` / `max_completion_tokens` (top level or under the native `parameters`) to it
just before the call, so what is sent, and reported, is the clamped request; wrong types and
values below 1 are sent as generated, and `stream` too. Generated model names almost always
miss, so `_steer` names the bundled model in three cases out of four (picked by a checksum of
the case, so deterministic) and keeps the generated name in the fourth.

Two plain tests cover what schemathesis cannot do here: HTTP methods an endpoint does not serve
(in its coverage phase one failing explicit example would skip the fuzzing of every operation),
and `_PROBES`, bodies it cannot send (a "$ref" inside the body, lone surrogates).

Run: `.venv/bin/pytest tests/inference/api/test_fuzz.py` (or `-m fuzz`).
"""

import copy
import json
import zlib
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.internal.conjecture import providers
from schemathesis import GenerationMode

from inference.api.apis import native_api, ollama_api, v1_api
from models_app.models import ModelConfig
from models_app.services import issue_token

pytestmark = pytest.mark.fuzz

MODEL = "smollm2"  # the bundled model's id (tests/conftest.py small_model)
MAX_TOKENS = 4
FUZZ_EXAMPLES = 15
_MODEL_FIELDS = ("model", "model_id", "name")
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "num_predict")
_NOT_OFFERED = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/")
_ERROR_FIELDS = {"message": (str,), "type": (str,), "param": (str, type(None)), "code": (str, type(None))}
_UNSERVED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "TRACE")

_SCHEMA_LEAF = {
    "type": "object",
    "properties": {
        "type": {"enum": ["string", "integer", "number", "boolean", "null", "object", "array", "bogus"]},
        "pattern": {"type": "string"},
        "enum": {"type": "array"},
        "format": {"type": "string"},
        "minLength": {"type": "integer"},
        "maxLength": {"type": "integer"},
        "minimum": {"type": "number"},
        "maximum": {"type": "number"},
    },
}
_JSON_SCHEMA = {
    "type": "object",
    "properties": {
        **_SCHEMA_LEAF["properties"],
        "properties": {"type": "object", "additionalProperties": _SCHEMA_LEAF},
        "items": _SCHEMA_LEAF,
        "required": {"type": "array", "items": {"type": "string"}},
        "additionalProperties": {"type": "boolean"},
    },
}

# One edge per request, sent as whole-body examples: the generator rarely reaches these values.
_EOS_SUPPRESSED = {"0": -100, "1": -100, "2": -100}  # SmolLM2's end tokens: it decodes until max_tokens
_SAMPLING_EDGES = {
    "eos-suppressed": {"logit_bias": _EOS_SUPPRESSED},
    "last-token-id": {"logit_bias": {"49151": 100}},
    "token-id-past-vocabulary": {"logit_bias": {"49152": 1}},
    "token-id-past-int64": {"logit_bias": {"99999999999999999999": 100}},
    "nul-stop": {"stop": "\x00"},
    "empty-and-special-stops": {"stop": ["", "\n", "<|im_end|>", "ü"]},
    "huge-stop": {"stop": "ü" * 5000},
    "seed-past-uint64": {"seed": 2**64},
    "seed-below-int64": {"seed": -(2**63) - 1},
    "sampling-bounds": {
        "temperature": 2,
        "top_p": 0,
        "top_k": 1000,
        "min_p": 1,
        "repeat_penalty": 2,
        "presence_penalty": -2,
        "frequency_penalty": 2,
    },
}
_KEEP_ALIVE_EDGES = {
    "keep-alive-huge": {"keep_alive": 1e308},
    "keep-alive-huge-negative": {"keep_alive": -1e308},
    "keep-alive-empty": {"keep_alive": ""},
    "keep-alive-huge-duration": {"keep_alive": "99999999999999h"},
}
_SCHEMA_EDGES = {
    "bad-pattern": {"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}, "required": ["a"]},
    "huge-min-length": {"type": "string", "minLength": 100000},
    "huge-min-items": {"type": "array", "items": {"type": "string"}, "minItems": 100000},
    "empty-range": {"type": "integer", "minimum": 5, "maximum": 1},
    "unknown-type": {"type": "bogus"},
    "empty-enum": {"enum": []},
    "deep-nesting": {
        "type": "object",
        "properties": {
            "a": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"b": {"type": "array", "items": {"type": "string", "format": "date-time"}}},
                },
            }
        },
    },
}
_HI = [{"role": "user", "content": "Hi."}]
_CHAT = {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": _HI}
_COMPLETION = {"model": MODEL, "max_tokens": MAX_TOKENS, "prompt": "Hi."}
_HUGE_TEXT = "Hi. " * 50_000  # far past the context window, well under the body size limit
_BODY_EXAMPLES = {
    ("/v1/chat/completions", "post"): {
        **{name: {**_CHAT, **edge} for name, edge in {**_SAMPLING_EDGES, **_KEEP_ALIVE_EDGES}.items()},
        **{
            f"schema-{name}": {**_CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": edge}}}
            for name, edge in _SCHEMA_EDGES.items()
        },
        "json-object": {**_CHAT, "response_format": {"type": "json_object"}},
        "thousand-messages": {**_CHAT, "messages": _HI * 1000},
        "huge-content": {**_CHAT, "messages": [{"role": "user", "content": _HUGE_TEXT}]},
        "stream-with-usage": {
            **_CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
            "logit_bias": _EOS_SUPPRESSED,
        },
    },
    ("/v1/completions", "post"): {
        **{name: {**_COMPLETION, **edge} for name, edge in {**_SAMPLING_EDGES, **_KEEP_ALIVE_EDGES}.items()},
        "huge-prompt": {**_COMPLETION, "prompt": _HUGE_TEXT},
        "stream": {**_COMPLETION, "stream": True, "logit_bias": _EOS_SUPPRESSED},
    },
    ("/inference", "post"): {
        **{
            name: {"prompt": "Hi.", "parameters": {"max_tokens": MAX_TOKENS, **edge}}
            for name, edge in {**_SAMPLING_EDGES, **_KEEP_ALIVE_EDGES}.items()
        },
        "huge-prompt": {"prompt": _HUGE_TEXT},
        "stream": {"prompt": "Hi.", "stream": True, "parameters": {"logit_bias": _EOS_SUPPRESSED}},
    },
    ("/v1/embeddings", "post"): {
        **{name: {"model": MODEL, "input": "Hi.", **edge} for name, edge in _KEEP_ALIVE_EDGES.items()},
        "huge-input": {"model": MODEL, "input": _HUGE_TEXT},
        "most-inputs": {"model": MODEL, "input": ["Hi."] * 256, "encoding_format": "base64"},
    },
    ("/models/load", "post"): {name: {"model_id": MODEL, **edge} for name, edge in _KEEP_ALIVE_EDGES.items()},
    ("/api/chat", "post"): {
        **{name: {"model": MODEL, "messages": _HI, "options": edge} for name, edge in _SAMPLING_EDGES.items()},
        **{name: {"model": MODEL, "messages": _HI, **edge} for name, edge in _KEEP_ALIVE_EDGES.items()},
        **{f"schema-{name}": {"model": MODEL, "messages": _HI, "format": edge} for name, edge in _SCHEMA_EDGES.items()},
        "huge-content": {"model": MODEL, "messages": [{"role": "user", "content": _HUGE_TEXT}], "stream": False},
        "unload": {"model": MODEL, "messages": [], "keep_alive": 0},
        "odd-options": {
            "model": MODEL,
            "messages": _HI,
            "options": {"repeat_last_n": -1, "typical_p": 0.5, "num_predict": -2, "num_ctx": 1},
        },
    },
    ("/api/generate", "post"): {
        **{name: {"model": MODEL, "prompt": "Hi.", "options": edge} for name, edge in _SAMPLING_EDGES.items()},
        "raw-huge": {"model": MODEL, "prompt": _HUGE_TEXT, "raw": True},
        "load": {"model": MODEL, "keep_alive": "1h"},
    },
    ("/api/embed", "post"): {
        "huge-input-truncated": {"model": MODEL, "input": _HUGE_TEXT},
        "huge-input-refused": {"model": MODEL, "input": _HUGE_TEXT, "truncate": False},
        "most-inputs": {"model": MODEL, "input": ["Hi."] * 256},
    },
}

_NODE = {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}
# Requests schemathesis cannot send: a "$ref" inside the body (it resolves every "$ref" in the document
# itself) and lone surrogates, valid JSON escapes that no UTF-8 string holds (it encodes every body).
_PROBES = {
    "chat-content-lone-surrogate": (
        "/v1/chat/completions",
        {**_CHAT, "messages": [{"role": "user", "content": "\ud800"}]},
    ),
    "chat-stop-lone-surrogate": ("/v1/chat/completions", {**_CHAT, "stop": ["\udfff"]}),
    "chat-schema-missing-ref": (
        "/v1/chat/completions",
        {**_CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/$defs/missing"}}}},
    ),
    "chat-schema-root-ref": (
        "/v1/chat/completions",
        {
            **_CHAT,
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"properties": {"a": {"$ref": "#"}}}}},
        },
    ),
    "chat-schema-recursive-defs": (
        "/v1/chat/completions",
        {
            **_CHAT,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"schema": {"$defs": {"node": _NODE}, "$ref": "#/$defs/node"}},
            },
        },
    ),
    "completion-prompt-lone-surrogate": ("/v1/completions", {**_COMPLETION, "prompt": "\ud800"}),
    "embedding-input-lone-surrogate": ("/v1/embeddings", {"model": MODEL, "input": "\ud800"}),
    "inference-system-prompt-lone-surrogate": ("/inference", {"prompt": "Hi.", "system_prompt": "\ud800"}),
    "load-model-id-lone-surrogate": ("/models/load", {"model_id": "\ud800"}),
}


def _sharpen(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAPI document with the contract the validators enforce spelled out, and edge examples."""
    document = copy.deepcopy(document)
    for component in document.get("components", {}).get("schemas", {}).values():
        properties = component.get("properties", {})
        for branch in properties.get("logit_bias", {}).get("anyOf", []):
            if branch.get("type") == "object":
                branch["propertyNames"] = {"pattern": "^[0-9]{1,20}$"}
        if component.get("title") == "JSONSchemaFormat":
            properties["schema"] = {**_JSON_SCHEMA, "title": "Schema"}
    for (path, method), examples in _BODY_EXAMPLES.items():
        if path in document["paths"]:
            media = document["paths"][path][method]["requestBody"]["content"]["application/json"]
            media["examples"] = {name: {"value": body} for name, body in examples.items()}
    return document


def _schema(api: Any) -> Any:
    """The operations `api` serves, as its /openapi.json describes them, set up for a bounded run."""
    schema = schemathesis.openapi.from_dict(_sharpen(api.get_openapi_schema()))
    schema.config.generation.update(
        modes=list(GenerationMode),  # positive and negative
        max_examples=FUZZ_EXAMPLES,
        deterministic=True,  # Hypothesis' derandomize=True
        database="none",
        no_shrink=True,  # each shrink step is a model call; a 5xx's traceback says more than a minimal body
        with_security_parameters=False,  # every case carries the real token instead
    )
    schema.config.phases.coverage.unexpected_methods = set()  # see the module docstring
    return schema


v1_schema = _schema(v1_api)
native_schema = _schema(native_api)
ollama_schema = _schema(ollama_api)


@pytest.fixture
def _same_draws_every_run(monkeypatch):
    """Hypothesis mixes in constants from whatever project modules are imported; draw without them."""
    empty = providers.Constants()
    monkeypatch.setattr(providers, "_get_local_constants", lambda: empty)
    providers.CONSTANTS_CACHE.cache.clear()
    yield
    providers.CONSTANTS_CACHE.cache.clear()


@pytest.fixture
def target(live_server_url, transactional_db, small_model, admin_user, _same_draws_every_run):
    """(base url, auth headers); afterwards, checks that a plain chat completion still answers 200."""
    ModelConfig.objects.filter(model=small_model).update(max_tokens=MAX_TOKENS)
    _, secret = issue_token(name="fuzz", owner=admin_user, scopes=["inference", "models:read", "models:manage"])
    headers = {"Authorization": f"Bearer {secret}"}
    yield live_server_url, headers
    plain = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": MAX_TOKENS}
    response = httpx.post(f"{live_server_url}/v1/chat/completions", json=plain, headers=headers, timeout=120)
    assert response.status_code == 200, f"after the fuzz run a plain chat completion got {_describe(response)}"


def _clamp(fields: dict[str, Any]) -> None:
    for key in _TOKEN_FIELDS:
        value = fields.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and (value > MAX_TOKENS or value in (-1, -2)):
            fields[key] = MAX_TOKENS  # Ollama's num_predict -1 and -2 mean "as many as allowed"


def _steer(case: Any) -> None:
    """Clamp generation lengths and, three times in four, name the bundled model (see the module doc)."""
    body = case.body
    if isinstance(body, dict):
        _clamp(body)
        for nested in ("parameters", "options"):
            if isinstance(body.get(nested), dict):
                _clamp(body[nested])
    if zlib.crc32(repr((case.path_parameters, body)).encode()) % 4 == 0:
        return
    for fields in (body, case.path_parameters):
        if isinstance(fields, dict):
            for key in _MODEL_FIELDS:
                if isinstance(fields.get(key), str):
                    fields[key] = MODEL


def _describe(response: Any) -> str:
    return f"{response.status_code} {response.text[:2000]}"


def _sent(case: Any) -> str:
    body = case.body if isinstance(case.body, dict | list | str | int | float | bool | None) else "(none)"
    return f"{case.method} {case.formatted_path} {json.dumps(body)[:3000]}"


def _error_shape_problem(payload: Any) -> str | None:
    """Why `payload` is not {"error": {"message": str, "type": str, "param": str|null, "code": str|null}}."""
    if not isinstance(payload, dict) or set(payload) != {"error"} or not isinstance(payload["error"], dict):
        return "the body is not one JSON 'error' object"
    error = payload["error"]
    if set(error) != set(_ERROR_FIELDS):
        return f"the error has fields {sorted(error)}, not {sorted(_ERROR_FIELDS)}"
    wrong = [key for key, types in _ERROR_FIELDS.items() if not isinstance(error[key], types)]
    return f"wrong types for {wrong}" if wrong else None


def _ollama_error_problem(payload: Any) -> str | None:
    """Why `payload` is not Ollama's {"error": "message"}."""
    if not isinstance(payload, dict) or set(payload) != {"error"} or not isinstance(payload["error"], str):
        return "the body is not Ollama's {'error': str}"
    return None


def _shape_problem(path: str, payload: Any) -> str | None:
    return _ollama_error_problem(payload) if path.startswith("/api/") else _error_shape_problem(payload)


def _json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _stream_errors(text: str) -> list[Any]:
    frames = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    decoded = [json.loads(frame) for frame in frames if frame != "[DONE]"]
    return [frame for frame in decoded if isinstance(frame, dict) and "error" in frame]


def _check(case: Any, target: tuple[str, dict[str, str]]) -> None:
    url, headers = target
    _steer(case)
    response = case.call(base_url=url, headers=headers, timeout=120)
    not_offered = response.status_code == 501 and case.formatted_path.startswith(_NOT_OFFERED)
    assert response.status_code < 500 or not_offered, f"{_sent(case)} -> {_describe(response)}"
    if response.status_code >= 400 and case.method.upper() != "HEAD":  # a HEAD answer has no body
        problem = _shape_problem(case.formatted_path, _json_or_none(response))
        assert problem is None, f"{_sent(case)} -> {_describe(response)}: {problem}"
    elif response.headers.get("Content-Type", "").startswith("text/event-stream"):
        errors = _stream_errors(response.text)
        assert not errors, f"{_sent(case)} -> 200, then error frame(s) in the stream: {errors}"
    elif response.headers.get("Content-Type", "").startswith("application/x-ndjson"):
        errors = [line for line in map(json.loads, response.text.splitlines()) if "error" in line]
        assert not errors, f"{_sent(case)} -> 200, then error line(s) in the stream: {errors}"


@v1_schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # `target` is per operation, on purpose
def test_v1_answers_generated_requests_without_5xx_and_in_one_error_shape(case, target):
    _check(case, target)


@native_schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_native_answers_generated_requests_without_5xx_and_in_one_error_shape(case, target):
    _check(case, target)


@ollama_schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_ollama_api_answers_generated_requests_without_5xx_and_in_its_error_shape(case, target):
    _check(case, target)


_SERVED = {
    path: {method.upper() for method in operations}
    for api in (v1_api, native_api, ollama_api)
    for path, operations in api.get_openapi_schema()["paths"].items()
}


@pytest.mark.parametrize("path", list(_SERVED))
def test_unserved_methods_get_405_in_one_error_shape(live_server_url, path):
    url = live_server_url + path.replace("{model_id}", MODEL).replace("{digest}", "sha256-0")
    problems = []
    for method in sorted(set(_UNSERVED_METHODS) - _SERVED[path]):
        response = httpx.request(method, url, timeout=30)
        problem = _shape_problem(path, _json_or_none(response)) if response.status_code == 405 else "not a 405"
        if problem:
            problems.append(f"{method} {path} -> {_describe(response)}: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("probe", list(_PROBES))
def test_edge_request_gets_no_5xx_and_one_error_shape(target, probe):
    url, headers = target
    path, body = _PROBES[probe]
    content = json.dumps(body)  # ASCII-only: a lone surrogate travels as its \ud800 escape
    response = httpx.post(
        url + path, content=content, headers={**headers, "Content-Type": "application/json"}, timeout=120
    )
    sent = f"POST {path} {content[:3000]}"
    assert response.status_code < 500, f"{sent} -> {_describe(response)}"
    if response.status_code >= 400:
        problem = _error_shape_problem(_json_or_none(response))
        assert problem is None, f"{sent} -> {_describe(response)}: {problem}"
