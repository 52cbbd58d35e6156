"""Operational alerts end to end: the real gateway binary, a real webhook
receiver (signatures verified with the reference Standard Webhooks library),
a real failing upstream (an HTTP server answering 500).

The sampler (`bursar-opsalerts`) runs every 15 s; the debug-only
BURSAR_DEBUG_OPERATIONAL_INTERVAL_MS shortens it here. Nothing is timed: the
tests wait for alerts to arrive, and a "no second alert" check waits for a
later alert of another subject (sampled after the repeat) instead of
sleeping.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import openai
import pytest

from receivers import HttpReceiver
from test_alerts import ADMIN, KEY, SECRET, Gateway, webhook_events

INTERVAL_ENV = "BURSAR_DEBUG_OPERATIONAL_INTERVAL_MS"
PROVIDER = "broken-upstream"


def config(hook: HttpReceiver, upstream: HttpReceiver, unpriced: str = "refuse") -> str:
    return f"""
[server]
workers = 2

[[providers]]
name = "{PROVIDER}"
kind = "openai"
base_url = "{upstream.url('/v1')}"
api_key = "sk-upstream"
models = ["err-model"]

[[providers]]
name = "inproc"
kind = "mock"
models = ["*"]

[[prices]]
model = "err-model"
input_per_mtok_usd = "1"
output_per_mtok_usd = "2"

[pricing]
unpriced = "{unpriced}"

[[virtual_keys]]
name = "ops-key"
key = "{KEY}"

[admin]
token = "{ADMIN}"

[log]
sink = "off"

[[alerts.channels]]
name = "hook"
kind = "webhook"
url = "{hook.url('/hook')}"
secret = "{SECRET}"
allow_private = true
rate_limit_per_minute = 10000

[[alerts.rules]]
name = "ops"
scope = "all"
operational = true
channels = ["hook"]
"""


@pytest.fixture()
def tmp():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.fixture()
def hook():
    with HttpReceiver() as r:
        yield r


@pytest.fixture()
def upstream():
    with HttpReceiver() as r:
        r.set_status(500, body=json.dumps(
            {"error": {"message": "boom", "type": "server_error", "code": None}}))
        yield r


@pytest.fixture(autouse=True)
def fast_sampler(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "200")


def of_type(hook: HttpReceiver, kind: str) -> list[dict]:
    return [e for e in webhook_events(hook) if e["type"] == kind]


def wait_for_alert(hook: HttpReceiver, kind: str, subject: str, timeout: float = 30) -> dict:
    def matches(r) -> bool:
        body = r.json or {}
        return body.get("type") == kind and body["data"].get("subject") == subject
    hook.wait_for(matches, timeout=timeout, path="/hook")
    found = [e for e in of_type(hook, kind) if e["data"]["subject"] == subject]
    assert found, kind
    return found[0]


def away_from_the_hour_boundary(seconds: float = 120) -> None:
    """An operational alert fires at most once per subject per UTC hour: a
    test that checks "once" must not straddle an hour's end. Waits, when the
    hour has less than `seconds` left, until the next one has begun."""
    import time
    left = 3600 - time.time() % 3600
    if left < seconds:
        time.sleep(left + 1)


def ask(gw: Gateway, model: str) -> int:
    try:
        gw.client.chat.completions.create(
            model=model, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as e:
        return e.status_code


@pytest.mark.parametrize("unpriced", ["refuse", "allow"])
def test_an_unpriced_model_alerts_once_naming_it(tmp, hook, upstream, unpriced):
    away_from_the_hour_boundary()
    gw = Gateway(tmp, config(hook, upstream, unpriced))
    try:
        assert ask(gw, "no-price-model") == (400 if unpriced == "refuse" else 200)
        alert = wait_for_alert(hook, "operational.unpriced_model", "no-price-model")
        assert alert["data"]["rules"] == ["ops"]
        assert alert["id"].startswith("alrt_")
        assert alert["data"]["count"] >= 1
        assert "no-price-model" in alert["data"]["detail"]
        # The same model again, on both workers: no second alert. Another
        # model's alert, requested after it, is sampled no earlier.
        for _ in range(4):
            assert ask(gw, "no-price-model") == (400 if unpriced == "refuse" else 200)
        assert ask(gw, "another-unpriced-model") in (200, 400)
        wait_for_alert(hook, "operational.unpriced_model", "another-unpriced-model")
        subjects = [e["data"]["subject"] for e in of_type(hook, "operational.unpriced_model")]
        assert sorted(subjects) == ["another-unpriced-model", "no-price-model"], subjects
    finally:
        gw.stop()


def test_a_failing_provider_alerts_once_naming_it(tmp, hook, upstream):
    away_from_the_hour_boundary()
    gw = Gateway(tmp, config(hook, upstream))
    try:
        for _ in range(25):
            assert ask(gw, "err-model") == 500
        assert len(upstream.requests("/v1/chat/completions")) == 25
        alert = wait_for_alert(hook, "operational.provider_errors", PROVIDER)
        assert alert["data"]["rules"] == ["ops"]
        assert alert["data"]["count"] >= 20
        # Still failing: no second alert this hour. A later alert of
        # another kind marks a sample taken after these requests.
        for _ in range(25):
            assert ask(gw, "err-model") == 500
        assert ask(gw, "sentinel-unpriced-model") == 400
        wait_for_alert(hook, "operational.unpriced_model", "sentinel-unpriced-model")
        assert len(of_type(hook, "operational.provider_errors")) == 1
        # The requests the mock provider served are not a provider's errors.
        assert all(e["data"]["subject"] == PROVIDER
                   for e in of_type(hook, "operational.provider_errors"))
    finally:
        gw.stop()


def test_an_operational_rule_added_through_the_admin_api_applies(tmp, hook, upstream):
    text = config(hook, upstream).replace("operational = true", "operational = false")
    gw = Gateway(tmp, text)
    try:
        for _ in range(25):
            assert ask(gw, "err-model") == 500
        # The rules are read at every sample: one added through the admin
        # API applies without a restart. (Whether a model requested before it
        # alerts depends on when the sampler ran: the unit tests cover that.)
        status, _ = gw.admin("POST", "/admin/alerts/rules", {
            "name": "ops-late", "scope": "all", "operational": True, "channels": ["hook"]})
        assert status in (200, 201), status
        assert ask(gw, "late-model") == 400
        alert = wait_for_alert(hook, "operational.unpriced_model", "late-model")
        assert alert["data"]["rules"] == ["ops-late"]
        # The provider's error rate is a state over the window: it alerts too.
        errors = wait_for_alert(hook, "operational.provider_errors", PROVIDER)
        assert errors["data"]["rules"] == ["ops-late"]
        assert all(e["data"]["rules"] == ["ops-late"] for e in webhook_events(hook))
    finally:
        gw.stop()
