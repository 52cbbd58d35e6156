"""Weekly spend reports end to end: the real gateway binary with the SQLite
request log, requests from the official openai SDK through keys of two teams
with tags, and the report a signed webhook receives, held to
`GET /admin/spend/totals` over the same range and team (exact strings).

The week reported is the one the requests fall in: the gateway is restarted
with `BURSAR_DEBUG_REPORTS_NOW_MS` (debug builds only) set to a time in the
following week, so that week is the last completed one.
"""

from __future__ import annotations

import tempfile
import time
import urllib.parse
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from receivers import HttpReceiver, verify_standard_webhook
from test_alerts import ADMIN, SECRET, Gateway

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
FIRST_MONDAY_MS = 4 * DAY_MS  # 1970-01-05
TEAM_KEYS = {
    "search": ["sk-search-one-1", "sk-search-two-2"],
    "ads": ["sk-ads-one-111"],
}


def config(receiver: HttpReceiver) -> str:
    keys = "".join(
        f"""
[[virtual_keys]]
name = "{team}-{i}"
key = "{key}"
team = "{team}"
"""
        for team, team_keys in TEAM_KEYS.items()
        for i, key in enumerate(team_keys))
    return f"""
[server]
workers = 2

[[providers]]
name = "inproc"
kind = "mock"
models = ["*"]

[[prices]]
model = "mock-model"
input_per_mtok_usd = "1"
output_per_mtok_usd = "2"

[[prices]]
model = "mock-large"
input_per_mtok_usd = "3"
output_per_mtok_usd = "7"

[[customers]]
name = "acme"

[[teams]]
name = "search"
customer = "acme"

[[teams]]
name = "ads"
customer = "acme"
{keys}
[admin]
token = "{ADMIN}"

[log]
sink = "sqlite"

[[alerts.channels]]
name = "hook"
kind = "webhook"
url = "{receiver.url('/hook')}"
secret = "{SECRET}"
allow_private = true
rate_limit_per_minute = 10000

[[alerts.rules]]
name = "team-reports"
scope = "teams"
reports = ["weekly"]
channels = ["hook"]

# The same report again, through the same channel: still one alert, one
# delivery.
[[alerts.rules]]
name = "search-report"
scope = "teams/search"
reports = ["weekly"]
channels = ["hook", "hook"]
"""


@pytest.fixture()
def tmp():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.fixture()
def hook():
    with HttpReceiver() as r:
        yield r


def week_of(ms: int) -> tuple[int, int]:
    start = FIRST_MONDAY_MS + (ms - FIRST_MONDAY_MS) // WEEK_MS * WEEK_MS
    return start, start + WEEK_MS


def reports(hook: HttpReceiver, from_iso: str) -> list[dict]:
    out = []
    for r in hook.requests("/hook"):
        event = verify_standard_webhook(SECRET, r)
        if event["type"] == "spend.report" and event["data"]["from"] == from_iso:
            out.append(event)
    return out


def totals(gw: Gateway, group_by: str, team: str, frm: int, to: int) -> list[dict]:
    q = urllib.parse.urlencode({"group_by": group_by, "team": team, "from": frm, "to": to})
    status, body = gw.admin("GET", f"/admin/spend/totals?{q}")
    assert status == 200, body
    assert body["range"]["team"] == team
    return body["data"]


def top(groups: list[dict]) -> list[dict]:
    ordered = sorted(groups, key=lambda g: (-Decimal(g["cost_usd"]), -g["requests"],
                                            g["group"].encode()))
    return [{"name": g["group"], "spend_usd": g["cost_usd"], "requests": g["requests"]}
            for g in ordered[:5]]


def test_a_weekly_report_per_team_equals_the_spend_api_and_is_sent_once(
        tmp, hook, monkeypatch):
    gw = Gateway(tmp, config(hook))
    try:
        sent = {"search": 0, "ads": 0}
        plan = [
            # team, key index, model, max_tokens, tags
            ("search", 0, "mock-model", 10, "feature=chat,env=prod"),
            ("search", 0, "mock-large", 25, "feature=chat,env=prod"),
            ("search", 1, "mock-model", 3, "feature=rank,env=prod"),
            ("search", 1, "mock-large", 40, "feature=rank,env=dev"),
            ("search", 0, "mock-model", 17, None),
            ("ads", 0, "mock-large", 12, "feature=bid,env=prod"),
            ("ads", 0, "mock-model", 5, "feature=bid,env=prod"),
        ]
        first_ms = int(time.time() * 1000)
        for round_ in range(2):
            for team, k, model, max_tokens, tags in plan:
                client = openai.OpenAI(base_url=gw.base, api_key=TEAM_KEYS[team][k],
                                       max_retries=0)
                headers = {"x-bursar-tags": tags} if tags else {}
                client.chat.completions.create(
                    model=model, max_tokens=max_tokens + round_,
                    messages=[{"role": "user", "content": "hello there"}],
                    extra_headers=headers)
                sent[team] += 1
        last_ms = int(time.time() * 1000)
        frm, to = week_of(first_ms)
        if week_of(last_ms) != (frm, to):
            pytest.skip("the requests straddle a week boundary (UTC Monday 00:00)")
        # The log writer flushes every 200 ms.
        deadline = time.time() + 20
        while True:
            got = {t: sum(g["requests"] for g in totals(gw, "team", t, frm, to))
                   for t in sent}
            if got == sent or time.time() > deadline:
                break
            time.sleep(0.1)
        assert got == sent
        from_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(frm / 1000))
        to_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(to / 1000))
        # The week is not over: no report of it yet.
        assert reports(hook, from_iso) == []

        # An hour into the next week, as far as the report scheduler knows.
        gw.stop()
        monkeypatch.setenv("BURSAR_DEBUG_REPORTS_NOW_MS", str(to + 3_600_000))
        gw.start()
        hook.wait_for(lambda r: (r.json or {}).get("type") == "spend.report"
                      and r.json["data"]["from"] == from_iso, count=2, timeout=30,
                      path="/hook")
        time.sleep(1.0)  # anything more would come now
        events = reports(hook, from_iso)
        assert sorted(e["data"]["scope"]["name"] for e in events) == ["ads", "search"]

        for e in events:
            data = e["data"]
            team = data["scope"]["name"]
            assert data["scope"]["kind"] == "team"
            assert data["period"] == "weekly"
            assert (data["from"], data["to"]) == (from_iso, to_iso)
            [team_total] = totals(gw, "team", team, frm, to)
            assert team_total["group"] == team
            assert data["total_usd"] == team_total["cost_usd"]
            assert data["requests"] == team_total["requests"] == sent[team]
            assert data["top_keys"] == top(totals(gw, "key", team, frm, to))
            assert data["top_models"] == top(totals(gw, "model", team, frm, to))
            assert data["top_tags"] == top(totals(gw, "tags", team, frm, to))
            assert all("=" in line["name"] for line in data["top_tags"])
            expected_rules = ["team-reports", "search-report"] if team == "search" \
                else ["team-reports"]
            assert data["rules"] == expected_rules
        search = next(e for e in events if e["data"]["scope"]["name"] == "search")
        assert {line["name"] for line in search["data"]["top_tags"]} == {
            "env=prod", "env=dev", "feature=chat", "feature=rank"}
        assert len(search["data"]["top_keys"]) == 2
        # The ads team's numbers are not in the search team's.
        ads = next(e for e in events if e["data"]["scope"]["name"] == "ads")
        assert Decimal(search["data"]["total_usd"]) + Decimal(ads["data"]["total_usd"]) == \
            sum(Decimal(g["cost_usd"]) for g in totals_all(gw, frm, to))

        # A restart builds the same reports again; the outbox knows their ids.
        gw.stop()
        gw.start()
        time.sleep(3.0)
        assert len(reports(hook, from_iso)) == 2
    finally:
        gw.stop()


def totals_all(gw: Gateway, frm: int, to: int) -> list[dict]:
    q = urllib.parse.urlencode({"group_by": "team", "from": frm, "to": to})
    status, body = gw.admin("GET", f"/admin/spend/totals?{q}")
    assert status == 200, body
    return body["data"]
