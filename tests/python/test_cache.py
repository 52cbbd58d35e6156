"""The exact response cache through the official openai SDK (issue 16):
the same question asked again is answered from the cache, streamed or
not, costs nothing, and another tenant never gets it."""

import openai
import pytest

from conftest import running_gateway

QUESTION = [{"role": "user", "content": "what is the capital of France"}]


@pytest.fixture(scope="module")
def cache_gateway(mock_upstream):
    config = f"""
[server]
workers = 1

[cache]
enabled = true

[[providers]]
name = "local"
kind = "openai"
base_url = "{mock_upstream}"
api_key = "sk-upstream-secret"
models = ["gpt-4o-mini", "text-embedding-3-small"]

[[customers]]
name = "acme"
[[customers]]
name = "globex"

[[virtual_keys]]
name = "acme"
key = "sk-acme-cache"
customer = "acme"

[[virtual_keys]]
name = "globex"
key = "sk-globex-cache"
customer = "globex"
"""
    with running_gateway(config) as (data, _control):
        yield f"http://{data}/v1"


def client(url, key):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def test_a_repeated_question_is_a_free_hit(cache_gateway):
    acme = client(cache_gateway, "sk-acme-cache")
    first = acme.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=QUESTION, max_tokens=5, temperature=0
    )
    assert first.headers["x-bursar-cache"] == "miss"
    second = acme.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=QUESTION, max_tokens=5, temperature=0
    )
    assert second.headers["x-bursar-cache"] == "hit"
    assert second.headers["x-bursar-cost-usd"] == "0"
    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.usage.completion_tokens == a.usage.completion_tokens == 5
    # Another tenant asks the same: its own miss.
    globex = client(cache_gateway, "sk-globex-cache")
    other = globex.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=QUESTION, max_tokens=5, temperature=0
    )
    assert other.headers["x-bursar-cache"] == "miss"


def test_a_streamed_hit_is_a_stream_the_sdk_reads(cache_gateway):
    acme = client(cache_gateway, "sk-acme-cache")
    texts = []
    for _ in range(2):
        stream = acme.chat.completions.create(
            model="gpt-4o-mini",
            messages=QUESTION,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        assert chunks[-1].usage.completion_tokens == 4
    assert texts[0] == texts[1] and len(texts[0].split()) == 4


def test_embeddings_are_cached_too(cache_gateway):
    acme = client(cache_gateway, "sk-acme-cache")
    heads = []
    for _ in range(2):
        r = acme.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input="cache me"
        )
        heads.append(r.headers["x-bursar-cache"])
        assert len(r.parse().data[0].embedding) > 0
    assert heads == ["miss", "hit"]
