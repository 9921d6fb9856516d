"""logprobs on /v1: the sampled token's and the likeliest alternatives', after the sampler chain's filters."""

import math

import httpx

ASK = [{"role": "user", "content": "Name a colour."}]


def post(live, path, body):
    url, secret, _ = live
    return httpx.post(f"{url}{path}", headers={"Authorization": f"Bearer {secret}"}, json=body, timeout=60)


def test_greedy_chat_logprobs_cover_every_token_and_the_pick_is_the_likeliest(openai_client, live):
    reply = openai_client.chat.completions.create(
        model=live[2], messages=ASK, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3,
    )  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for entry in content:
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
        assert entry.logprob <= 0 and sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1 + 1e-6


def test_the_probabilities_are_those_left_after_the_filters(openai_client, live):
    # top_k 2: two candidates at most survive each step, and their probabilities sum to one.
    reply = openai_client.chat.completions.create(
        model=live[2], messages=ASK, max_tokens=6, temperature=1.0, top_p=1.0, seed=3, logprobs=True, top_logprobs=5,
        extra_body={"top_k": 2, "min_p": 0.0},
    )  # fmt: skip
    for entry in reply.choices[0].logprobs.content:
        assert 1 <= len(entry.top_logprobs) <= 2
        assert math.isclose(sum(math.exp(t.logprob) for t in entry.top_logprobs), 1.0, rel_tol=1e-4)
        assert entry.token in [t.token for t in entry.top_logprobs]


def test_streamed_logprobs_match_the_streamed_text(openai_client, live):
    chunks = list(openai_client.chat.completions.create(
        model=live[2], messages=ASK, max_tokens=8, temperature=0, logprobs=True, stream=True,
    ))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    tokens = [t.token for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(tokens) == text and tokens


def test_completions_logprobs_in_the_legacy_shape(live):
    body = post(live, "/v1/completions", {"model": live[2], "prompt": "Red, green,", "max_tokens": 5,
                                          "temperature": 0, "logprobs": 2}).json()  # fmt: skip
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert len(logprobs["token_logprobs"]) == len(logprobs["tokens"]) == body["usage"]["completion_tokens"]
    assert logprobs["text_offset"] == [
        sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(logprobs["tokens"]))
    ]
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])


def test_bad_logprob_requests_name_the_field(live):
    for extra, param in [
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ]:
        response = post(live, "/v1/chat/completions", {"model": live[2], "messages": ASK, "max_tokens": 2, **extra})
        assert response.status_code == 400
        assert param in (response.json()["error"]["param"] or "") or param in response.json()["error"]["message"]
