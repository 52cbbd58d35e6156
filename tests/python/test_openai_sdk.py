"""The official openai Python SDK, unmodified, through the gateway."""

import json
import time
import urllib.request

import openai
import pytest

MESSAGES = [{"role": "user", "content": "hello there"}]
# The mock's documented rule: 3 + (3 + words) per message.
PROMPT_TOKENS = 3 + 3 + 2


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=gateway, api_key="sk-bursar-demo", max_retries=0)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "mock-model"])
def test_chat(client, model):
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5)
    assert r.model == model
    assert len(r.choices[0].message.content.split(" ")) == 5
    assert r.usage.prompt_tokens == PROMPT_TOKENS
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == PROMPT_TOKENS + 5


def test_request_id_header(client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=2
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.parse().usage.completion_tokens == 2


@pytest.mark.parametrize("model", ["gpt-4o-mini", "mock-model"])
def test_streamed_chat_without_usage(client, model):
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=6, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split(" ")) == 6
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "mock-model"])
def test_streamed_chat_with_usage(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    assert chunks[-1].usage.completion_tokens == 7
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split(" ")) == 7


def test_completions(client):
    r = client.completions.create(model="gpt-4o-mini", prompt="one two three", max_tokens=4)
    assert len(r.choices[0].text.split(" ")) == 4
    assert r.usage.prompt_tokens == 3
    assert r.usage.completion_tokens == 4


def test_streamed_completions(client):
    chunks = list(
        client.completions.create(
            model="gpt-4o-mini", prompt="one two", max_tokens=3, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("model", ["text-embedding-3-small", "mock-model"])
def test_embeddings_default_base64(client, model):
    # The SDK asks for base64 by default and decodes it.
    r = client.embeddings.create(model=model, input=["alpha beta", "gamma"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) == 16
    norm = sum(x * x for x in r.data[0].embedding)
    assert abs(norm - 1.0) < 1e-4
    assert r.usage.prompt_tokens == 3


def test_embeddings_float(client):
    r = client.embeddings.create(
        model="text-embedding-3-small", input="alpha", encoding_format="float", dimensions=8
    )
    assert len(r.data[0].embedding) == 8


@pytest.mark.parametrize("model", ["gpt-4o-mini", "mock-model"])
def test_responses(client, model):
    r = client.responses.create(model=model, input="say something", max_output_tokens=4)
    assert len(r.output_text.split(" ")) == 4
    assert r.usage.output_tokens == 4


@pytest.mark.parametrize("model", ["gpt-4o-mini", "mock-model"])
def test_streamed_responses(client, model):
    events = list(client.responses.create(model=model, input="say something", stream=True))
    done = [e for e in events if e.type == "response.completed"]
    assert len(done) == 1
    assert done[0].response.usage.output_tokens == 16
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == done[0].response.output_text


def test_models(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["gpt-4o-mini", "mock-model", "text-embedding-3-small"]
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_errors_are_sdk_exceptions(gateway):
    bad = openai.OpenAI(base_url=gateway, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert e.value.code == "invalid_api_key"
    good = openai.OpenAI(base_url=gateway, api_key="sk-bursar-demo", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(model="no-such-model", messages=MESSAGES)


def test_upstream_cut_mid_stream_raises_in_the_sdk(gateway):
    c = openai.OpenAI(
        base_url=gateway, api_key="sk-bursar-demo", max_retries=0,
        default_headers={"x-mock-reset-after": "2"},
    )
    got = []
    with pytest.raises(openai.APIError):
        for chunk in c.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, stream=True
        ):
            got.append(chunk)
    assert 1 <= len(got) <= 4


def test_rate_limits_surface_as_rate_limit_errors(gateway):
    c = openai.OpenAI(base_url=gateway, api_key="sk-one-at-a-time", max_retries=0)
    outcomes = []
    for _ in range(4):
        try:
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1)
            outcomes.append("ok")
        except openai.RateLimitError as e:
            assert e.code == "rate_limit_exceeded"
            assert 1 <= int(e.response.headers["retry-after"]) <= 60
            outcomes.append("limited")
    # 2 per minute; a minute boundary mid-test could admit 2 more, never fewer.
    assert outcomes.count("ok") in (2, 4), outcomes
    assert outcomes[:2] == ["ok", "ok"]


def test_costs_are_reported_and_exhausted_budgets_raise_402(gateway):
    c = openai.OpenAI(base_url=gateway, api_key="sk-tiny-budget", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=5
    )
    # 8 prompt tokens at $0.15/M and 5 completion tokens at $0.60/M.
    assert raw.headers["x-bursar-cost-usd"] == "0.0000042"
    assert raw.headers["x-bursar-budget-remaining-usd"] == "0.0000158"
    assert raw.parse().usage.completion_tokens == 5
    # 15.8 µ$ left cannot cover the request's worst case: refused before
    # anything is spent, in OpenAI's error shape.
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert err.value.status_code == 402
    body = err.value.body
    assert body["type"] == "budget_exceeded"
    assert body["entity"] == "tiny-budget"
    assert body["limit_usd"] == "0.00002"
    assert body["spent_usd"] == "0.0000042"


def test_a_cap_the_sdk_sends_as_null_is_replaced_by_the_gateways(gateway):
    # The SDK sends an explicit None as `null`. Under a strict budget the
    # gateway must send the cap it reserved (16384 by default) in its place;
    # the mock, like Python servers, reads the last of duplicate names and
    # generates 100000 tokens when nothing caps it.
    c = openai.OpenAI(base_url=gateway, api_key="sk-strict-dollar", max_retries=0)
    r = c.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_completion_tokens=None,
        extra_headers={"x-mock-uncapped-tokens": "100000"},
    )
    assert r.usage.completion_tokens == 16384


def _logs(admin, key, want):
    """The request log's rows for `key`, once it holds `want` of them."""
    deadline = time.time() + 10
    while True:
        req = urllib.request.Request(
            f"{admin}/admin/logs?key={key}&limit=50",
            headers={"Authorization": "Bearer admin-secret"},
        )
        with urllib.request.urlopen(req) as r:
            rows = json.load(r)["data"]
        if len(rows) >= want or time.time() > deadline:
            return {row["id"]: row for row in rows}
        time.sleep(0.05)


def test_streams_are_logged_with_the_providers_usage(gateway, admin):
    c = openai.OpenAI(base_url=gateway, api_key="sk-logged-key", max_retries=0)
    # Without include_usage: the client sees no usage chunk at all...
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=6, stream=True
    )
    plain_id = raw.headers["x-request-id"]
    chunks = list(raw.parse())
    assert chunks and all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks), "no extra (choices-less) usage chunk"
    # ... with it, exactly one, last.
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage_id = raw.headers["x-request-id"]
    chunks = list(raw.parse())
    assert [ch.usage is not None for ch in chunks].count(True) == 1
    assert chunks[-1].usage.completion_tokens == 7

    rows = _logs(admin, "logged", 2)
    plain, with_usage = rows[plain_id], rows[usage_id]
    # The provider's usage, exactly, in both cases; priced at $0.15/$0.60 per M.
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == (PROMPT_TOKENS, 6)
    assert (with_usage["prompt_tokens"], with_usage["completion_tokens"]) == (PROMPT_TOKENS, 7)
    assert plain["estimated"] is False and with_usage["estimated"] is False
    assert plain["cost_usd"] == "0.0000048"
    assert with_usage["cost_usd"] == "0.0000054"
    assert plain["stream"] is True and plain["status"] == 200
