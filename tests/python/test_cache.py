"""The exact response cache through the official openai SDK (issue 16):
the same question asked again is answered from the cache, streamed or
not, costs nothing, and another tenant never gets it."""

import os
import time
import urllib.request
from pathlib import Path

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


# The semantic cache: the same question in other words, through the SDK.

EMBEDDINGS = Path(
    os.environ.get(
        "BURSAR_EMBEDDINGS_DIR",
        Path(__file__).resolve().parents[2] / "target" / "embeddings",
    )
)


@pytest.fixture(scope="module")
def semantic_gateway(mock_upstream):
    assert (EMBEDDINGS / "manifest.json").is_file(), (
        f"{EMBEDDINGS}: run scripts/fetch-embeddings {EMBEDDINGS} (scripts/test does)"
    )
    config = f"""
[server]
workers = 1

[cache]
enabled = true
semantic = true
embedding_dir = "{EMBEDDINGS}"

[[providers]]
name = "local"
kind = "openai"
base_url = "{mock_upstream}"
api_key = "sk-upstream-secret"
models = ["gpt-4o-mini"]

[[customers]]
name = "acme"
[[customers]]
name = "globex"

[[virtual_keys]]
name = "acme"
key = "sk-acme-semantic"
customer = "acme"

[[virtual_keys]]
name = "globex"
key = "sk-globex-semantic"
customer = "globex"
"""
    with running_gateway(config) as (data, control):
        yield f"http://{data}/v1", control


def semantic_entries(control):
    text = urllib.request.urlopen(f"http://{control}/metrics", timeout=5).read().decode()
    return sum(
        int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bursar_cache_semantic_entries{")
    )


def wait_indexed(control, n):
    deadline = time.monotonic() + 60
    while semantic_entries(control) < n:
        assert time.monotonic() < deadline, "the prompt was never indexed"
        time.sleep(0.02)


def test_a_paraphrase_is_a_semantic_hit_streamed_or_not(semantic_gateway):
    url, control = semantic_gateway
    acme = client(url, "sk-acme-semantic")
    ask = lambda content, **kw: acme.chat.completions.with_raw_response.create(  # noqa: E731
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": content}],
        max_tokens=6,
        temperature=0,
        **kw,
    )
    first = ask("Which country has the largest population in Africa?")
    assert first.headers["x-bursar-cache"] == "miss"
    wait_indexed(control, 1)
    second = ask("What is the most populous country in Africa?")
    assert second.headers["x-bursar-cache"] == "semantic-hit"
    assert 0.0 < float(second.headers["x-bursar-cache-similarity"]) <= 1.0
    assert second.headers["x-bursar-cost-usd"] == "0"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    # A near-miss is never served that answer.
    near = ask("Which country has the smallest population in Africa?")
    assert near.headers["x-bursar-cache"] == "miss"
    # Another tenant neither.
    globex = client(url, "sk-globex-semantic")
    other = globex.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What is the most populous country in Africa?"}],
        max_tokens=6,
        temperature=0,
    )
    assert other.headers["x-bursar-cache"] == "miss"

    # Streamed: stored as a stream, served to a paraphrase as a stream the
    # SDK reads.
    def streamed(content):
        with acme.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": content}],
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ) as r:
            chunks = list(r.parse())
            return r.headers["x-bursar-cache"], chunks

    status, first_chunks = streamed("What is the highest mountain in Japan?")
    assert status == "miss"
    wait_indexed(control, 4)
    status, chunks = streamed("Which mountain is the tallest in Japan?")
    assert status == "semantic-hit"
    text = lambda cs: "".join(c.choices[0].delta.content or "" for c in cs if c.choices)  # noqa: E731
    assert text(chunks) == text(first_chunks)
    assert chunks[-1].usage.completion_tokens == first_chunks[-1].usage.completion_tokens
