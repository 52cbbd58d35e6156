"""GET /v1/bursar/usage through the official openai SDK, unmodified: a key
holder reads its own spend and last requests with the client it already
has (`client.get(..., cast_to=object)`), and never another key's."""

import json
import time
import urllib.request

import openai
import pytest

from conftest import running_gateway

CONFIG = """
[server]
workers = 2

[[providers]]
name = "inproc"
kind = "mock"
models = ["mock-model"]

[[customers]]
name = "acme"
budget = { limit_usd = "5", reset = "1d" }

[[virtual_keys]]
name = "alice"
key = "sk-usage-alice"
customer = "acme"
budget = { limit_usd = "1", reset = "1d" }

[[virtual_keys]]
name = "bob"
key = "sk-usage-bob"
budget = { limit_usd = "2", reset = "1d" }

[admin]
token = "admin-secret"

[[prices]]
model = "mock-model"
input_per_mtok_usd = "1"
output_per_mtok_usd = "2"

[log]
flush_interval = "50ms"
"""

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def usage_gateway():
    with running_gateway(CONFIG) as (data, control):
        yield f"http://{data}/v1", f"http://{control}"


def sdk(base_url, key):
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def usage(client, **params):
    return client.get("/bursar/usage", cast_to=object, options={"params": params})


def admin_get(control, path):
    req = urllib.request.Request(
        control + path, headers={"authorization": "Bearer admin-secret"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def usage_with_rows(client, n):
    """Usage once the log holds `n` rows (it is written in batches)."""
    deadline = time.time() + 10
    while True:
        u = usage(client)
        if len(u["requests"]) >= n or time.time() > deadline:
            assert len(u["requests"]) == n, u
            return u
        time.sleep(0.05)


def test_a_key_holder_reads_its_own_usage_with_the_sdk(usage_gateway):
    base_url, control = usage_gateway
    alice, bob = sdk(base_url, "sk-usage-alice"), sdk(base_url, "sk-usage-bob")
    ids = []
    for _ in range(3):
        raw = alice.chat.completions.with_raw_response.create(
            model="mock-model", messages=MESSAGES, max_tokens=5
        )
        ids.append(raw.headers["x-request-id"])
    bob.chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=50)

    u = usage_with_rows(alice, 3)
    assert u["object"] == "usage"
    assert u["key"] == "alice"
    assert u["team"] is None
    assert u["customer"] == "acme"
    assert u["requests_available"] is True
    # Newest first, only alice's.
    assert [r["id"] for r in u["requests"]] == ids[::-1]
    assert {r["key"] for r in u["requests"]} == {"alice"}
    # The spend is the ledger's, as the admin API shows it.
    spend = admin_get(control, "/admin/spend/keys/alice")
    for field in ("spent_usd", "limit_usd", "remaining_usd", "reset_at", "mode", "blocked"):
        assert u["budget"][field] == spend[field], field
    assert u["budget"]["limit_usd"] == "1"
    [level] = u["levels"]
    assert (level["kind"], level["name"], level["limit_usd"]) == ("customer", "acme", "5")

    # limit= bounds the rows.
    assert [r["id"] for r in usage(alice, limit=2)["requests"]] == ids[:0:-1]

    b = usage_with_rows(bob, 1)
    assert b["key"] == "bob"
    assert b["customer"] is None and b["levels"] == []
    assert {r["key"] for r in b["requests"]} == {"bob"}
    assert b["budget"]["spent_usd"] == admin_get(control, "/admin/spend/keys/bob")["spent_usd"]
    assert b["budget"]["spent_usd"] != u["budget"]["spent_usd"]


def test_the_sdk_sees_openai_shaped_errors(usage_gateway):
    base_url, _ = usage_gateway
    with pytest.raises(openai.AuthenticationError) as e:
        usage(sdk(base_url, "sk-nobody"))
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as e:
        usage(sdk(base_url, "sk-usage-alice"), limit=0)
    assert e.value.code == "invalid_value"
    # No parameter names another key.
    with pytest.raises(openai.BadRequestError) as e:
        usage(sdk(base_url, "sk-usage-alice"), key="bob")
    assert e.value.code == "invalid_value"
