"""Provider kinds through the official SDKs (issue 15): the openai SDK's chat
through `anthropic`, `gemini` and `bedrock` providers (translated both ways,
streamed and not, tools), and the anthropic SDK on `/v1/messages`, passed
through to an `anthropic` provider. The upstream is the real mock
(`bursar-load mock`), which speaks each provider's wire format."""

import json
from decimal import Decimal

import anthropic
import openai
import pytest

from conftest import running_gateway

MESSAGES = [{"role": "user", "content": "hello there"}]
# The mock's rule: 3 + (3 + words) per turn.
PROMPT_TOKENS = 3 + 3 + 2
BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def providers_gateway(mock_upstream):
    root = mock_upstream.removesuffix("/v1")
    config = f"""
[server]
workers = 2

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{root}"
api_key = "sk-ant-upstream"
models = ["claude-sonnet-4-5"]

[[providers]]
name = "gem"
kind = "gemini"
base_url = "{root}/v1beta"
api_key = "g-upstream"
models = ["gemini-2.5-flash"]

[[providers]]
name = "bed"
kind = "bedrock"
region = "us-east-1"
base_url = "{root}"
models = ["{BEDROCK_MODEL}"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"

[[prices]]
model = "{BEDROCK_MODEL}"
input_per_mtok_usd = "0.25"
output_per_mtok_usd = "1.25"
"""
    env = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "not-checked-by-this-mock",
    }
    with running_gateway(config, env) as (data, _control):
        yield f"http://{data}"


@pytest.fixture()
def oai(providers_gateway):
    return openai.OpenAI(
        base_url=providers_gateway + "/v1", api_key="sk-bursar-demo", max_retries=0
    )


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash", BEDROCK_MODEL])
def test_openai_sdk_chat_through_each_kind(oai, model):
    raw = oai.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=6
    )
    r = raw.parse()
    assert len(r.choices[0].message.content.split()) == 6
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == PROMPT_TOKENS
    assert r.usage.completion_tokens == 6
    assert Decimal(raw.headers["x-bursar-cost-usd"]) > 0
    assert raw.headers["x-bursar-provider"] in ("claude", "gem", "bed")


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash", BEDROCK_MODEL])
@pytest.mark.parametrize("include_usage", [False, True])
def test_openai_sdk_streams_through_each_kind(oai, model, include_usage):
    stream = oai.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True} if include_usage else None,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    usage = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage) == 1 and chunks[-1].choices == []
        assert usage[0].completion_tokens == 5
        assert usage[0].prompt_tokens == PROMPT_TOKENS
    else:
        assert usage == []


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash", BEDROCK_MODEL])
def test_openai_sdk_tools_round_trip_through_each_kind(oai, model):
    r = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER],
        max_tokens=20,
        extra_headers={"x-mock-tool-call": "get_weather"},
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args, dict)
    # The tool's result goes back, translated into the provider's shape.
    r2 = oai.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
        tools=[WEATHER],
        max_tokens=4,
    )
    assert len(r2.choices[0].message.content.split()) == 4


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash", BEDROCK_MODEL])
def test_openai_sdk_streamed_tool_call_through_each_kind(oai, model):
    stream = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER],
        max_tokens=20,
        stream=True,
        extra_headers={"x-mock-tool-call": "get_weather"},
    )
    name, args, finish = "", "", None
    for c in stream:
        if not c.choices:
            continue
        for t in c.choices[0].delta.tool_calls or []:
            name += t.function.name or ""
            args += t.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert isinstance(json.loads(args), dict)
    assert finish == "tool_calls"


@pytest.fixture()
def claude(providers_gateway):
    return anthropic.Anthropic(
        base_url=providers_gateway, api_key="sk-bursar-demo", max_retries=0
    )


def test_anthropic_sdk_on_v1_messages(claude):
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=6,
        system="be brief",
        messages=MESSAGES,
        extra_headers={"x-mock-cache-read-tokens": "3"},
    )
    m = raw.parse()
    assert m.type == "message"
    assert m.stop_reason == "max_tokens"
    assert len(m.content[0].text.split()) == 6
    assert m.usage.output_tokens == 6
    assert m.usage.cache_read_input_tokens == 3
    # claude-sonnet-4-5 at the shipped table's rates: $3 input, $0.30 cache
    # reads, $15 output per million tokens.
    prompt = PROMPT_TOKENS + 5
    expected = (
        Decimal(prompt - 3) * 3 + Decimal(3) * Decimal("0.3") + Decimal(6) * 15
    ) / 1_000_000
    assert Decimal(raw.headers["x-bursar-cost-usd"]) == expected
    assert raw.headers["x-bursar-provider"] == "claude"


def test_anthropic_sdk_streams_on_v1_messages(claude):
    with claude.messages.stream(
        model="claude-sonnet-4-5", max_tokens=5, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 5
    assert final.usage.output_tokens == 5
    assert final.usage.input_tokens == PROMPT_TOKENS


def test_anthropic_sdk_tools_on_v1_messages(claude):
    m = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=30,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[
            {
                "name": "get_weather",
                "description": "The weather in a city",
                "input_schema": WEATHER["function"]["parameters"],
            }
        ],
        extra_headers={"x-mock-tool-call": "get_weather"},
    )
    assert m.stop_reason == "tool_use"
    assert m.content[-1].type == "tool_use"
    assert m.content[-1].name == "get_weather"


def test_anthropic_sdk_sees_an_unknown_key_refused(providers_gateway):
    bad = anthropic.Anthropic(base_url=providers_gateway, api_key="sk-nobody", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=MESSAGES)
