"""Spend alerts end to end: the real gateway binary, real clients (the
official openai SDK), real receivers (HTTP and SMTP on loopback), signatures
verified with the reference Standard Webhooks library.

Prices make every request cost the same: the in-process mock provider
answers `max_tokens` words; "hi" with max_tokens=10 is 7 prompt tokens and 10
completion tokens at $1 / $2 per million: $0.000027. A $0.0027 budget is
therefore exactly 100 requests: 50% after 50, 80% after 80, 100% after 100.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import BIN_DIR
from receivers import (
    HttpReceiver,
    SmtpReceiver,
    check_discord,
    check_pagerduty,
    check_slack,
    check_teams,
    check_webhook_envelope,
    verify_standard_webhook,
)

ADMIN = "admin-secret"
KEY = "sk-alert-key"
# base64 of 24 bytes: a Standard Webhooks secret.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REQUEST_COST = 27  # micro-dollars


def config(receiver: HttpReceiver, *, mode: str = "soft", limit: str = "0.0027",
           thresholds=(50, 80, 100), extra: str = "", channels=None,
           smtp_port: int | None = None, pd_url: str | None = None) -> str:
    names = channels or ["hook"]
    chans = f"""
[alerts]
# The admin API test adds a channel to the local receiver.
api_channels_allow_private = true

[[alerts.channels]]
name = "hook"
kind = "webhook"
url = "{receiver.url('/hook')}"
secret = "{SECRET}"
allow_private = true
rate_limit_per_minute = 10000

[[alerts.channels]]
name = "slack"
kind = "slack"
url = "{receiver.url('/slack')}"
allow_private = true
rate_limit_per_minute = 10000

[[alerts.channels]]
name = "teams"
kind = "teams"
url = "{receiver.url('/teams')}"
allow_private = true
rate_limit_per_minute = 10000

[[alerts.channels]]
name = "discord"
kind = "discord"
url = "{receiver.url('/discord')}"
allow_private = true
rate_limit_per_minute = 10000

[[alerts.channels]]
name = "pagerduty"
kind = "pagerduty"
url = "{pd_url or receiver.url('/pagerduty')}"
routing_key = "R0UT1NGKEY0123456789abcdefabcdef"
allow_private = true
rate_limit_per_minute = 10000
"""
    if smtp_port:
        chans += f"""
[[alerts.channels]]
name = "mail"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_tls = "none"
from = "bursar@example.com"
to = ["ops@example.com"]
allow_private = true
rate_limit_per_minute = 10000
"""
    return f"""
[server]
workers = 2

[[providers]]
name = "inproc"
kind = "mock"
models = ["mock-model"]

[[prices]]
model = "mock-model"
input_per_mtok_usd = "1"
output_per_mtok_usd = "2"

[[virtual_keys]]
name = "spender"
key = "{KEY}"
budget = {{ limit_usd = "{limit}", reset = "1d", mode = "{mode}" }}

[admin]
token = "{ADMIN}"

[log]
sink = "off"
{chans}
[[alerts.rules]]
name = "key-budgets"
scope = "keys"
thresholds = {list(thresholds)}
channels = {json.dumps(names)}
{extra}
"""


class Gateway:
    """One bursar process on a state directory that outlives it."""

    def __init__(self, tmp: Path, text: str):
        self.tmp = tmp
        self.cfg = tmp / "bursar.toml"
        self.cfg.write_text(text)
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN_DIR / "bursar"), "serve", "--config", str(self.cfg),
             "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--state-dir", str(self.tmp / "state")],
            cwd=self.tmp, env={**os.environ, "BURSAR_LOG": "warn"},
            stdout=subprocess.PIPE, text=True)
        words = self.proc.stdout.readline().split()
        if words[:3] != ["bursar", "listening", "on"]:
            raise RuntimeError(f"bursar did not start: {words!r}")
        self.base = f"http://{words[3]}/v1"
        self.admin_url = f"http://{words[5]}"
        self.client = openai.OpenAI(base_url=self.base, api_key=KEY, max_retries=0)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def spend(self, n: int = 1) -> int:
        """n requests of one fixed cost; returns how many were admitted."""
        ok = 0
        for _ in range(n):
            try:
                self.client.chat.completions.create(
                    model="mock-model", max_tokens=10,
                    messages=[{"role": "user", "content": "hi"}])
                ok += 1
            except openai.APIStatusError as e:
                assert e.status_code == 402, e
        return ok

    def admin(self, method: str, path: str, body=None):
        req = urllib.request.Request(
            self.admin_url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"authorization": f"Bearer {ADMIN}",
                     "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no metric {name}")


@pytest.fixture()
def tmp():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.fixture()
def hook():
    with HttpReceiver() as r:
        yield r


def webhook_events(receiver: HttpReceiver) -> list[dict]:
    """Every webhook delivery, verified, as its payload."""
    return [verify_standard_webhook(SECRET, r) for r in receiver.requests("/hook")]


def thresholds_of(events: list[dict]) -> list[int]:
    return sorted(e["data"]["threshold_percent"] for e in events
                  if e["type"] == "budget.threshold_crossed")


def test_64_concurrent_clients_get_one_alert_per_threshold_per_channel(tmp, hook):
    with SmtpReceiver() as smtp:
        gw = Gateway(tmp, config(hook, channels=[
            "hook", "slack", "teams", "discord", "pagerduty", "mail"],
            smtp_port=smtp.port))
        try:
            admitted = [0]
            lock = threading.Lock()

            def client():
                # Until the budget refuses: soft mode admits while under the limit.
                c = openai.OpenAI(base_url=gw.base, api_key=KEY, max_retries=0)
                while True:
                    try:
                        c.chat.completions.create(
                            model="mock-model", max_tokens=10,
                            messages=[{"role": "user", "content": "hi"}])
                    except openai.APIStatusError as e:
                        assert e.status_code == 402, e
                        return
                    with lock:
                        admitted[0] += 1

            threads = [threading.Thread(target=client) for _ in range(64)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert admitted[0] >= 100, admitted[0]

            # 50, 80, 100 and exhausted: four alerts, on each of six channels.
            for path in ["/hook", "/slack", "/teams", "/discord", "/pagerduty"]:
                hook.wait_for(4, path=path, timeout=30)
            smtp.wait_for(4, timeout=30)
            time.sleep(2)  # anything more would be a storm

            events = webhook_events(hook)
            assert thresholds_of(events) == [50, 80, 100]
            assert sorted(e["type"] for e in events) == sorted([
                "budget.threshold_crossed"] * 3 + ["budget.exhausted"])
            assert len({e["id"] for e in events}) == 4
            for req, e in zip(hook.requests("/hook"), events):
                check_webhook_envelope(e)
                assert req.headers["webhook-id"] == e["id"]
                assert e["data"]["entity"] == {"kind": "key", "name": "spender"}
                assert e["data"]["limit_usd"] == "0.0027"
                assert e["data"]["rules"] == ["key-budgets"]
                assert e["data"]["reset_at"]
            by_threshold = {e["data"]["threshold_percent"]: e for e in events
                            if e["type"] == "budget.threshold_crossed"}
            # Exact: the crossing charge is the one that reached the threshold.
            assert by_threshold[50]["data"]["spent_usd"] == "0.00135"
            assert by_threshold[80]["data"]["spent_usd"] == "0.00216"

            for r in hook.requests("/slack"):
                check_slack(r.body)
            for r in hook.requests("/teams"):
                check_teams(r.body)
            for r in hook.requests("/discord"):
                check_discord(r.body)
            pd = [check_pagerduty(r.body) for r in hook.requests("/pagerduty")]
            assert {p["event_action"] for p in pd} == {"trigger"}
            assert len({p["dedup_key"] for p in pd}) == 1, "one incident per entity+period+rule"
            for path in ["/slack", "/teams", "/discord", "/pagerduty"]:
                assert len(hook.requests(path)) == 4, path
            assert len(smtp.messages()) == 4
            ids = {e["id"] for e in events}
            for m in smtp.messages():
                msg = m.message
                assert msg["X-Bursar-Alert-Id"] in ids
                assert msg.get_body(("plain",)) is not None
                assert msg.get_body(("html",)) is not None
            assert gw.metric("bursar_alerts_emitted_total") == 4
            assert gw.metric("bursar_alerts_sent_total") == 24
        finally:
            gw.stop()


def test_a_strict_budget_alerts_exhausted_and_a_reset_resolves(tmp, hook):
    gw = Gateway(tmp, config(hook, mode="strict", channels=["hook", "pagerduty"]))
    try:
        while gw.spend(1):
            pass
        hook.wait_for(lambda r: r.json["type"] == "budget.exhausted", path="/hook", timeout=20)
        events = webhook_events(hook)
        assert 50 in thresholds_of(events) and 80 in thresholds_of(events)
        status, _ = gw.admin("POST", "/admin/keys/spender/reset")
        assert status == 200
        rec = hook.wait_for(lambda r: r.json["type"] == "budget.recovered",
                            path="/hook", timeout=20)[0]
        data = verify_standard_webhook(SECRET, rec)["data"]
        assert data["reason"] == "reset"
        pd = hook.wait_for(lambda r: r.json.get("event_action") == "resolve",
                           path="/pagerduty", timeout=20)[0]
        triggers = [r.json for r in hook.requests("/pagerduty")
                    if r.json["event_action"] == "trigger"]
        assert pd.json["dedup_key"] == triggers[0]["dedup_key"]
        check_pagerduty(pd.body)
        # The new epoch fires again from the start: 50% once more.
        gw.spend(50)
        hook.wait_for(lambda r: r.json.get("type") == "budget.threshold_crossed"
                      and r.json["data"]["threshold_percent"] == 50,
                      path="/hook", count=2, timeout=20)
    finally:
        gw.stop()


def test_a_raised_limit_recovers_and_rearms_only_what_no_longer_holds(tmp, hook):
    gw = Gateway(tmp, config(hook, thresholds=(50, 80)))
    try:
        gw.spend(85)
        hook.wait_for(2, path="/hook", timeout=20)
        status, _ = gw.admin("PATCH", "/admin/keys/spender", {
            "budget": {"limit_usd": "0.0054", "reset": "1d", "mode": "soft"}})
        assert status == 200, _
        rec = hook.wait_for(lambda r: r.json["type"] == "budget.recovered",
                            path="/hook", timeout=20)[0].json
        assert rec["data"]["reason"] == "limit_raised"
        assert rec["data"]["threshold_percent"] == 80
        # 85 of 200 requests: 50% holds no more either; both re-armed.
        gw.spend(16)  # 101 of 200: 50% again
        hook.wait_for(lambda r: r.json.get("type") == "budget.threshold_crossed"
                      and r.json["data"]["threshold_percent"] == 50,
                      path="/hook", count=2, timeout=20)
        time.sleep(1)
        assert thresholds_of(webhook_events(hook)) == [50, 50, 80]
    finally:
        gw.stop()


def test_a_receiver_down_gets_every_alert_afterwards_with_the_same_ids(tmp, hook):
    gw = Gateway(tmp, config(hook))
    try:
        hook.go_down()
        gw.spend(100)
        deadline = time.time() + 20
        while gw.metric("bursar_alerts_failed_total") < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert gw.metric("bursar_alerts_failed_total") >= 2
        time.sleep(5)
        _, history = gw.admin("GET", "/admin/alerts/history?limit=10")
        ids = [h["id"] for h in history["data"]]
        # 50, 80, 100 and exhausted (a soft budget's spend reached its limit).
        assert len(ids) == 4 and all(
            r["state"] == "pending" for h in history["data"] for r in h["routes"])
        hook.come_up()
        hook.wait_for(4, path="/hook", timeout=90)
        time.sleep(1)
        got = [r.headers["webhook-id"] for r in hook.requests("/hook")]
        assert sorted(got) == sorted(ids), "each alert once, with the id it had"
        _, history = gw.admin("GET", "/admin/alerts/history?limit=10")
        for h in history["data"]:
            assert h["routes"][0]["state"] == "delivered"
        # In order per channel: the oldest was retried while the receiver was
        # down; the others waited behind it and went on their first attempt.
        oldest = history["data"][-1]  # newest first
        assert oldest["routes"][0]["attempts"] >= 2
    finally:
        gw.stop()


def test_kill_9_right_after_a_crossing_delivers_it_once_after_restart(tmp, hook):
    gw = Gateway(tmp, config(hook, thresholds=(50,)))
    try:
        gw.spend(49)
        time.sleep(1)
        assert hook.requests("/hook") == []
        gw.spend(1)  # crosses 50%: the charge is in the settle ring
        gw.kill9()
        gw.start()
        hook.wait_for(1, path="/hook", timeout=20)
        time.sleep(2)
        events = webhook_events(hook)
        assert thresholds_of(events) == [50], events
        # And once more: a restart with the alert delivered repeats nothing.
        gw.kill9()
        gw.start()
        time.sleep(2)
        assert len(hook.requests("/hook")) == 1
    finally:
        gw.stop()


def test_kill_9_with_a_delivery_pending_sends_it_after_restart_with_its_id(tmp, hook):
    gw = Gateway(tmp, config(hook, thresholds=(50,)))
    try:
        hook.go_down()
        gw.spend(50)
        deadline = time.time() + 20
        while gw.metric("bursar_alerts_failed_total") < 1 and time.time() < deadline:
            time.sleep(0.1)
        _, history = gw.admin("GET", "/admin/alerts/history?limit=5")
        [pending] = history["data"]
        gw.kill9()
        hook.come_up()
        gw.start()
        hook.wait_for(1, path="/hook", timeout=30)
        time.sleep(2)
        assert [r.headers["webhook-id"] for r in hook.requests("/hook")] == [pending["id"]]
    finally:
        gw.stop()


def test_admin_api_channels_rules_test_state_history_replay(tmp, hook):
    gw = Gateway(tmp, config(hook, thresholds=(50,)))
    try:
        status, chans = gw.admin("GET", "/admin/alerts/channels")
        assert status == 200
        text = json.dumps(chans)
        assert SECRET not in text and "R0UT1NGKEY" not in text, "secrets are masked"
        assert "/hook" not in text, "a URL's path may hold a token: masked"
        # A channel defined at run time may not read the gateway's
        # environment (provider keys, the admin token live there).
        # (HOME is set and would pass as a password: only the rule refuses.)
        status, err = gw.admin("POST", "/admin/alerts/channels", {
            "name": "leak", "kind": "email", "smtp_host": "127.0.0.1", "smtp_port": 25,
            "smtp_tls": "none", "from": "bursar@example.com", "to": ["x@example.com"],
            "username": "u", "password_env": "HOME", "allow_private": True})
        assert status == 400, err
        assert "password_env" in err["error"]["message"], err
        assert "environment variable of the gateway's" in err["error"]["message"], err
        # A channel and a rule added at run time work at once.
        status, created = gw.admin("POST", "/admin/alerts/channels", {
            "name": "late", "kind": "webhook", "url": hook.url("/late"),
            "allow_private": True})
        assert status == 201, created
        status, rule = gw.admin("POST", "/admin/alerts/rules", {
            "name": "late-rule", "scope": "keys/spender", "thresholds": [10],
            "channels": ["late"]})
        assert status == 201, rule
        status, err = gw.admin("POST", "/admin/alerts/rules", {
            "name": "bad", "scope": "keys", "channels": ["nope"]})
        assert status == 400 and "nope" in err["error"]["message"]
        status, test = gw.admin("POST", "/admin/alerts/channels/late/test")
        assert status == 200 and test["delivered"], test
        assert hook.wait_for(1, path="/late")[0].json["type"] == "alert.test"
        gw.spend(11)
        late = hook.wait_for(lambda r: r.json.get("type") == "budget.threshold_crossed",
                             path="/late", timeout=20)[0].json
        assert late["data"]["threshold_percent"] == 10
        gw.spend(40)
        hook.wait_for(1, path="/hook", timeout=20)
        status, state = gw.admin("GET", "/admin/alerts/state")
        assert status == 200
        [ent] = state["entities"]
        assert ent["entity"] == {"kind": "key", "name": "spender"}
        assert sorted(ent["firing"]) == ["threshold:10", "threshold:50"]
        status, history = gw.admin("GET", "/admin/alerts/history?limit=1")
        assert status == 200 and len(history["data"]) == 1
        newest = history["data"][0]
        status, replayed = gw.admin("POST", f"/admin/alerts/{newest['id']}/replay")
        assert status == 202 and replayed["queued"] == 1, replayed
        hook.wait_for(2, path="/hook", timeout=20)
        assert {r.headers["webhook-id"] for r in hook.requests("/hook")} == {newest["id"]}
        assert gw.admin("GET", "/admin/alerts/history?limit=0")[0] == 400
        assert gw.admin("POST", "/admin/alerts/alrt_nope/replay")[0] == 404
        # Definitions made through the API survive a restart.
        gw.stop()
        gw.start()
        _, rules = gw.admin("GET", "/admin/alerts/rules")
        assert "late-rule" in [r["name"] for r in rules["data"]]
    finally:
        gw.stop()


def test_a_private_destination_is_refused_unless_allowed(tmp, hook):
    text = config(hook, thresholds=(50,)).replace(
        'secret = "' + SECRET + '"\nallow_private = true',
        'secret = "' + SECRET + '"\nallow_private = false')
    gw = Gateway(tmp, text)
    try:
        gw.spend(50)
        deadline = time.time() + 20
        while gw.metric("bursar_alerts_dead_lettered_total") < 1 and time.time() < deadline:
            time.sleep(0.1)
        assert gw.metric("bursar_alerts_dead_lettered_total") == 1
        assert hook.requests("/hook") == []
        _, history = gw.admin("GET", "/admin/alerts/history?limit=1")
        route = history["data"][0]["routes"][0]
        assert route["state"] == "dead"
        assert "allow_private" in route["last_error"]
    finally:
        gw.stop()


def test_check_config_names_a_bad_alert_field(tmp, hook):
    bad = config(hook).replace('scope = "keys"', 'scope = "keys/nobody"')
    path = tmp / "bad.toml"
    path.write_text(bad)
    out = subprocess.run([str(BIN_DIR / "bursar"), "check-config", "--config", str(path)],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "alerts.rules[0].scope" in out.stderr + out.stdout


def test_rules_scoped_to_a_keys_model_budget_and_a_tag_budget_alert_on_them(tmp, hook):
    """A rule's scope may name the levels beside the organisation chart: a
    key's budget on one model (`key_models/<key>/<model>`) and a tag value's
    budget (`tags/<key>=<value>`). Each crosses 50% after 50 requests."""
    extra = """
[[tag_budgets]]
tag = "feature=search"
budget = { limit_usd = "0.0027", reset = "1d" }

[[alerts.rules]]
name = "model-and-tag"
scope = "key_models/spender/mock-model"
thresholds = [50]
channels = ["hook"]

[[alerts.rules]]
name = "tag"
scope = "tags/feature=search"
thresholds = [50]
channels = ["hook"]
"""
    # The key's own budget is large; its budget on the model is 100 requests.
    text = config(hook, limit="10", thresholds=(99,), extra=extra).replace(
        'budget = { limit_usd = "10", reset = "1d", mode = "soft" }',
        'budget = { limit_usd = "10", reset = "1d", mode = "soft" }\n'
        'model_budgets = [ { model = "mock-model", limit_usd = "0.0027", reset = "1d" } ]')
    assert "model_budgets" in text
    gw = Gateway(tmp, text)
    try:
        tagged = openai.OpenAI(base_url=gw.base, api_key=KEY, max_retries=0,
                               default_headers={"x-bursar-tags": "feature=search"})
        for _ in range(50):
            tagged.chat.completions.create(
                model="mock-model", max_tokens=10,
                messages=[{"role": "user", "content": "hi"}])
        hook.wait_for(2, path="/hook", timeout=30)
        time.sleep(1)
        events = webhook_events(hook)
        crossed = sorted((e["data"]["entity"]["kind"], e["data"]["entity"]["name"],
                          e["data"]["threshold_percent"], e["data"]["rules"][0])
                         for e in events if e["type"] == "budget.threshold_crossed")
        assert crossed == [
            ("key_model", "spender/mock-model", 50, "model-and-tag"),
            ("tag", "feature=search", 50, "tag"),
        ], crossed
        # The spend API agrees with what the alerts said.
        for path in ["/admin/spend/keys/spender/models/mock-model",
                     "/admin/spend/tags/feature=search"]:
            status, body = gw.admin("GET", path)
            assert status == 200, body
            assert body["spent_usd"] == "0.00135", body
    finally:
        gw.stop()
