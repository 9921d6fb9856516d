"""Token ids as input (embeddings, completions), several prompts at once, and tokenize / detokenize / apply-template."""

import httpx
import numpy as np
import pytest

from models_app.models import UsageRecord


def post(live, path, body):
    url, secret, _ = live
    return httpx.post(f"{url}{path}", headers={"Authorization": f"Bearer {secret}"}, json=body, timeout=60)


def tokens_of(live, text, **extra):
    response = post(live, "/v1/tokenize", {"model": live[2], "prompt": text, **extra})
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def test_tokenize_and_detokenize_round_trip(live):
    tokens = tokens_of(live, "Hello, world! Ünïcode ✓", add_special_tokens=False)
    assert tokens and all(isinstance(t, int) for t in tokens)
    back = post(live, "/v1/detokenize", {"model": live[2], "tokens": tokens}).json()
    assert back == {"prompt": "Hello, world! Ünïcode ✓"}
    native = post(live, "/tokenize", {"model_id": live[2], "content": "Hello", "with_pieces": True}).json()
    assert "".join(p["piece"] for p in native["tokens"]) == "Hello"
    assert post(live, "/detokenize", {"model_id": live[2], "tokens": tokens}).json() == {"content": back["prompt"]}


def test_a_chat_tokenizes_as_the_engine_renders_it(live):
    messages = [{"role": "user", "content": "Say hi."}]
    prompt = post(live, "/apply-template", {"model_id": live[2], "messages": messages}).json()["prompt"]
    assert "<|im_start|>user\nSay hi.<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    counted = post(live, "/v1/tokenize", {"model": live[2], "messages": messages}).json()["count"]
    reply = post(live, "/v1/chat/completions", {"model": live[2], "messages": messages, "max_tokens": 1}).json()
    assert reply["usage"]["prompt_tokens"] == counted


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/detokenize", {"tokens": [10**9]}, "tokens.0"),
        ("/v1/detokenize", {"tokens": [-1]}, "tokens.0"),
        ("/v1/tokenize", {}, "prompt"),
        ("/v1/embeddings", {"input": [[1, 2], [99999999]]}, "input"),
        ("/v1/embeddings", {"input": [[]]}, "input"),
        ("/v1/completions", {"prompt": [10**9]}, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b", "c"], "n": 3}, None),
    ],
)
def test_bad_token_ids_are_refused_by_name(live, path, body, param):
    response = post(live, path, {"model": live[2], "max_tokens": 2, **body} if "completions" in path
                    else {"model": live[2], **body})  # fmt: skip
    assert response.status_code == 400, response.text
    if param:
        assert response.json()["error"]["param"].startswith(param), response.json()
    assert not UsageRecord.objects.filter(status="completed").exists()


def test_embeddings_of_token_ids_are_those_of_the_text(live):
    text = "The quick brown fox"
    tokens = tokens_of(live, text)  # with BOS, as the engine tokenizes an input
    by_text = post(live, "/v1/embeddings", {"model": live[2], "input": text}).json()
    by_ids = post(live, "/v1/embeddings", {"model": live[2], "input": tokens}).json()
    several = post(live, "/v1/embeddings", {"model": live[2], "input": [tokens, tokens[:2]]}).json()
    assert by_ids["usage"]["prompt_tokens"] == len(tokens) == by_text["usage"]["prompt_tokens"]
    assert np.allclose(by_ids["data"][0]["embedding"], by_text["data"][0]["embedding"], atol=1e-5)
    assert [d["index"] for d in several["data"]] == [0, 1]


def test_several_prompts_and_token_id_prompts_in_one_completions_request(live):
    ids = tokens_of(live, "1, 2, 3,", add_special_tokens=False)
    reply = post(live, "/v1/completions", {"model": live[2], "prompt": [ids, ids + ids], "max_tokens": 3,
                                           "temperature": 0})  # fmt: skip
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    rows = UsageRecord.objects.filter(status="completed")
    assert rows.count() == 2
    assert body["usage"]["prompt_tokens"] == sum(r.prompt_tokens for r in rows)
    assert sorted(r.prompt_tokens for r in rows)[0] == len(ids)
