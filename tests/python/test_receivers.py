"""Self-tests of the receivers the alert tests use (no gateway needed)."""

import base64
import copy
import http.client
import json
import smtplib
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from email.message import EmailMessage

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from receivers import (
    HttpReceiver,
    SchemaError,
    SmtpReceiver,
    WaitTimeout,
    check_discord,
    check_pagerduty,
    check_slack,
    check_teams,
    check_webhook_envelope,
    verify_standard_webhook,
)


def post(url, body=b"{}", headers=None, timeout=5):
    """POST and return (status, headers, body), also for error statuses."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture()
def hook():
    with HttpReceiver() as r:
        yield r


# ---------------------------------------------------------------- HTTP


def test_request_is_recorded_with_headers_and_body(hook):
    before = time.time()
    status, _, answer = post(hook.url("/slack") + "?a=1", b'{"text": "hi"}',
                             {"X-Custom-Thing": "v1"})
    assert (status, answer) == (200, b"ok")
    [req] = hook.wait_for(1, timeout=2)
    assert req.method == "POST"
    assert req.path == "/slack" and req.target == "/slack?a=1" and req.query == {"a": ["1"]}
    assert req.headers["x-custom-thing"] == "v1"
    assert req.headers["X-CUSTOM-THING"] == "v1"
    assert "content-type" in req.headers
    assert req.body == b'{"text": "hi"}'
    assert req.json == {"text": "hi"}
    assert before <= req.time <= time.time()
    assert req.status == 200
    assert hook.requests("/slack") == [req] and hook.requests("/other") == []


def test_non_json_body_and_chunked_body(hook):
    post(hook.url("/a"), b"not json", {"Content-Type": "text/plain"})
    conn = http.client.HTTPConnection("127.0.0.1", hook.port, timeout=5)
    conn.request("POST", "/b", body=iter([b"hel", b"lo"]), encode_chunked=True,
                  headers={"Transfer-Encoding": "chunked"})
    assert conn.getresponse().status == 200
    conn.close()
    a, b = hook.wait_for(2, timeout=2)
    assert a.body == b"not json" and a.json is None
    assert b.body == b"hello"


def test_fail_next_answers_as_told_then_normal(hook):
    hook.fail_next(2, code=503, retry_after=3)
    statuses = [post(hook.url())[0] for _ in range(3)]
    assert statuses == [503, 503, 200]
    reqs = hook.wait_for(3, timeout=2)
    assert [r.status for r in reqs] == [503, 503, 200]


def test_set_status_with_retry_after_holds_until_changed(hook):
    hook.set_status(429, retry_after=7)
    for _ in range(2):
        status, headers, _ = post(hook.url())
        assert status == 429 and headers["Retry-After"] == "7"
    hook.set_status(204)
    status, headers, body = post(hook.url())
    assert status == 204 and body == b"" and headers.get("Retry-After") is None


def test_go_down_refuses_and_come_up_serves_on_the_same_port(hook):
    port = hook.port
    assert post(hook.url())[0] == 200
    hook.go_down()
    assert not hook.is_up
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(urllib.error.URLError):
        post(hook.url())
    hook.come_up()
    assert hook.port == port and hook.url().startswith(f"http://127.0.0.1:{port}/")
    assert post(hook.url())[0] == 200
    assert len(hook.requests()) == 2


def test_go_down_also_drops_kept_alive_connections(hook):
    conn = http.client.HTTPConnection("127.0.0.1", hook.port, timeout=5)
    conn.request("POST", "/k", body=b"1")
    assert conn.getresponse().read() == b"ok"  # HTTP/1.1: the connection stays
    conn.request("POST", "/k", body=b"2")
    assert conn.getresponse().read() == b"ok"
    hook.go_down()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("POST", "/k", body=b"3")
        conn.getresponse()
    conn.close()
    assert [r.body for r in hook.requests()] == [b"1", b"2"]


def test_wait_for_predicate_waits_for_a_later_request(hook):
    t = threading.Timer(0.2, lambda: post(hook.url("/late"), b'{"n": 2}'))
    post(hook.url("/early"), b'{"n": 1}')
    t.start()
    [req] = hook.wait_for(lambda r: (r.json or {}).get("n") == 2, timeout=5)
    t.join()
    assert req.path == "/late"
    assert len(hook.wait_for(2, timeout=1)) == 2


def test_wait_for_timeout_says_what_it_saw(hook):
    post(hook.url("/seen"), b'{"x": 1}')
    with pytest.raises(WaitTimeout, match=r"(?s)got 1.*POST /seen -> 200"):
        hook.wait_for(2, timeout=0.3)
    with pytest.raises(WaitTimeout):
        hook.wait_for(1, timeout=0.2, path="/never")
    hook.clear()
    assert hook.requests() == []


def test_set_delay_delays_the_answer(hook):
    hook.set_delay(0.3)
    t0 = time.monotonic()
    post(hook.url())
    assert time.monotonic() - t0 >= 0.3


# ---------------------------------------------------------------- Standard Webhooks

SECRET = "whsec_" + base64.b64encode(b"a-test-secret-of-32-bytes-length").decode()


def signed_post(hook, body, secret=SECRET, msg_id="msg_1"):
    now = datetime.now(timezone.utc)
    sig = Webhook(secret).sign(msg_id, now, body)
    return post(hook.url(), body, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sig,
    })


def test_standard_webhook_signature_verifies(hook):
    body = json.dumps({"id": "evt_1", "type": "budget.threshold", "data": {}}).encode()
    signed_post(hook, body)
    [req] = hook.wait_for(1, timeout=2)
    assert verify_standard_webhook(SECRET, req)["id"] == "evt_1"


def test_standard_webhook_tampered_or_wrong_secret_fails(hook):
    body = b'{"id": "evt_1", "type": "t", "data": {"usd": "1"}}'
    signed_post(hook, body)
    [req] = hook.wait_for(1, timeout=2)
    tampered = copy.copy(req)
    tampered.body = body.replace(b'"1"', b'"9"')
    with pytest.raises(WebhookVerificationError):
        verify_standard_webhook(SECRET, tampered)
    other = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-len!!").decode()
    with pytest.raises(WebhookVerificationError):
        verify_standard_webhook(other, req)


def test_standard_webhook_unsigned_request_fails(hook):
    post(hook.url(), b"{}")
    [req] = hook.wait_for(1, timeout=2)
    with pytest.raises(WebhookVerificationError):
        verify_standard_webhook(SECRET, req)


# ---------------------------------------------------------------- SMTP


def alert_mail():
    m = EmailMessage()
    m["From"] = "bursar@example.test"
    m["To"] = "ops@example.test"
    m["Subject"] = "Budget 80% used"
    m.set_content("plain body: 80% of $10 used\n")
    m.add_alternative("<p>html body: <b>80%</b> of $10 used</p>\n", subtype="html")
    return m


def test_smtp_message_recorded_with_both_alternatives():
    with SmtpReceiver() as smtp:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as c:
            c.send_message(alert_mail(), to_addrs=["ops@example.test", "cfo@example.test"])
        [mail] = smtp.wait_for(1, timeout=5)
        assert mail.mail_from == "bursar@example.test"
        assert mail.rcpt_tos == ["ops@example.test", "cfo@example.test"]
        assert mail.login is None
        msg = mail.message
        assert msg["Subject"] == "Budget 80% used"
        assert msg.get_content_type() == "multipart/alternative"
        assert "plain body" in msg.get_body(preferencelist=("plain",)).get_content()
        assert "<b>80%</b>" in msg.get_body(preferencelist=("html",)).get_content()
        assert b"Subject: Budget 80% used" in mail.raw
        assert smtp.messages() == [mail]


# aiosmtpd warns that AUTH without TLS is unsafe; on loopback in a test it is the point.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth_required_and_checked():
    with SmtpReceiver(auth=("bursar", "s3cret")) as smtp:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as c:
            with pytest.raises(smtplib.SMTPSenderRefused):  # 530: authenticate first
                c.send_message(alert_mail())
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as c:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                c.login("bursar", "wrong")
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as c:
            c.login("bursar", "s3cret")
            c.send_message(alert_mail())
        [mail] = smtp.wait_for(1, timeout=5)
        assert mail.login == "bursar"


def test_smtp_fail_next_and_wait_timeout():
    with SmtpReceiver() as smtp:
        smtp.fail_next(1)
        with smtplib.SMTP(smtp.host, smtp.port, timeout=5) as c:
            with pytest.raises(smtplib.SMTPDataError) as e:
                c.send_message(alert_mail())
            assert e.value.smtp_code == 451
            c.send_message(alert_mail())
        assert len(smtp.wait_for(1, timeout=5)) == 1
        with pytest.raises(WaitTimeout, match="got 1"):
            smtp.wait_for(2, timeout=0.3)


# ---------------------------------------------------------------- schema checkers

SLACK_OK = {
    "text": "Budget 80% used",
    "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": "Budget alert"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "*demo* used 80%"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Limit*\n$10"}]},
        {"type": "divider"},
    ],
}
TEAMS_OK = {
    "type": "message",
    "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": None,
        "content": {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard", "version": "1.4",
            "body": [{"type": "TextBlock", "text": "Budget 80% used", "wrap": True},
                     {"type": "FactSet", "facts": [{"title": "Key", "value": "demo"}]}],
        },
    }],
}
PD_OK = {
    "routing_key": "R0UT1NGKEY0000000000000000000000",
    "event_action": "trigger",
    "dedup_key": "bursar:budget:demo:80",
    "payload": {"summary": "Budget 80% used", "source": "bursar", "severity": "warning",
                "custom_details": {"used_usd": "8"}},
}
PD_RESOLVE_OK = {"routing_key": "k", "event_action": "resolve", "dedup_key": "bursar:budget:demo:80"}
DISCORD_OK = {
    "content": "Budget alert",
    "embeds": [{"title": "Budget 80% used", "description": "demo used $8 of $10",
                "color": 0xFFA500, "timestamp": "2025-01-02T03:04:05Z",
                "fields": [{"name": "Key", "value": "demo", "inline": True}],
                "footer": {"text": "bursar"}}],
}
ENVELOPE_OK = {"id": "evt_01", "type": "budget.threshold_crossed",
               "timestamp": "2025-01-02T03:04:05.123Z", "data": {"key": "demo"}}


def broken(base, mutate):
    d = copy.deepcopy(base)
    mutate(d)
    return d


def _set(path, value):
    def f(d):
        *head, last = path
        for k in head:
            d = d[k]
        d[last] = value
    return f


def _del(path):
    def f(d):
        *head, last = path
        for k in head:
            d = d[k]
        del d[last]
    return f


GOOD = [
    (check_slack, SLACK_OK),
    (check_slack, {"text": "plain only"}),
    (check_slack, {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3000}}] * 50}),
    (check_teams, TEAMS_OK),
    (check_pagerduty, PD_OK),
    (check_pagerduty, PD_RESOLVE_OK),
    (check_discord, DISCORD_OK),
    (check_discord, {"content": "only content"}),
    (check_discord, {"embeds": [{"description": "d" * 4096, "title": "t" * 256}]}),
    (check_webhook_envelope, ENVELOPE_OK),
    (check_webhook_envelope, {**ENVELOPE_OK, "timestamp": "2025-01-02T03:04:05+02:00"}),
]

BAD = [
    (check_slack, {}),
    (check_slack, {"text": ""}),
    (check_slack, broken(SLACK_OK, _del(["blocks", 1, "type"]))),
    (check_slack, broken(SLACK_OK, _set(["blocks", 1, "text", "text"], "x" * 3001))),
    (check_slack, broken(SLACK_OK, _set(["blocks", 1, "text", "type"], "markdown"))),
    (check_slack, broken(SLACK_OK, _set(["blocks", 0, "text", "type"], "mrkdwn"))),
    (check_slack, {"blocks": [{"type": "divider"}] * 51}),
    (check_slack, {"blocks": [{"type": "section"}]}),
    (check_teams, broken(TEAMS_OK, _set(["type"], "AdaptiveCard"))),
    (check_teams, broken(TEAMS_OK, _set(["attachments"], []))),
    (check_teams, broken(TEAMS_OK, _set(["attachments", 0, "contentType"], "application/vnd.microsoft.teams.card.o365connector"))),
    (check_teams, broken(TEAMS_OK, _set(["attachments", 0, "content", "type"], "MessageCard"))),
    (check_teams, broken(TEAMS_OK, _del(["attachments", 0, "content", "version"]))),
    (check_teams, broken(TEAMS_OK, _del(["attachments", 0, "content", "body"]))),
    (check_teams, broken(TEAMS_OK, _del(["attachments", 0, "content", "body", 0, "type"]))),
    (check_pagerduty, broken(PD_OK, _del(["routing_key"]))),
    (check_pagerduty, broken(PD_OK, _set(["event_action"], "alert"))),
    (check_pagerduty, broken(PD_OK, _set(["dedup_key"], "k" * 256))),
    (check_pagerduty, broken(PD_OK, _del(["payload"]))),
    (check_pagerduty, broken(PD_OK, _set(["payload", "summary"], "s" * 1025))),
    (check_pagerduty, broken(PD_OK, _del(["payload", "source"]))),
    (check_pagerduty, broken(PD_OK, _set(["payload", "severity"], "high"))),
    (check_pagerduty, broken(PD_RESOLVE_OK, _del(["dedup_key"]))),
    (check_discord, {}),
    (check_discord, {"content": "c" * 2001}),
    (check_discord, {"embeds": [{"title": "t"}] * 11}),
    (check_discord, broken(DISCORD_OK, _set(["embeds", 0, "title"], "t" * 257))),
    (check_discord, broken(DISCORD_OK, _set(["embeds", 0, "description"], "d" * 4097))),
    (check_discord, broken(DISCORD_OK, _set(["embeds", 0, "fields"], [{"name": "n", "value": "v"}] * 26))),
    (check_discord, broken(DISCORD_OK, _set(["embeds", 0, "fields", 0, "name"], "n" * 257))),
    (check_discord, broken(DISCORD_OK, _set(["embeds", 0, "fields", 0, "value"], "v" * 1025))),
    (check_discord, broken(DISCORD_OK, _del(["embeds", 0, "fields", 0, "value"]))),
    (check_discord, {"embeds": [{"description": "d" * 4000}, {"description": "d" * 2001}]}),
    (check_webhook_envelope, broken(ENVELOPE_OK, _del(["id"]))),
    (check_webhook_envelope, broken(ENVELOPE_OK, _del(["type"]))),
    (check_webhook_envelope, broken(ENVELOPE_OK, _set(["timestamp"], "2025-01-02 03:04:05"))),
    (check_webhook_envelope, broken(ENVELOPE_OK, _set(["timestamp"], 1735787045))),
    (check_webhook_envelope, broken(ENVELOPE_OK, _set(["timestamp"], "2025-13-02T03:04:05Z"))),
    (check_webhook_envelope, broken(ENVELOPE_OK, _set(["data"], "x"))),
]


@pytest.mark.parametrize("check,body", GOOD, ids=lambda x: getattr(x, "__name__", None))
def test_checker_accepts_valid(check, body):
    # dict, bytes and str all parse to the same thing
    assert check(body) == body
    assert check(json.dumps(body).encode()) == body
    assert check(json.dumps(body)) == body


@pytest.mark.parametrize("check,body", BAD, ids=lambda x: getattr(x, "__name__", None))
def test_checker_rejects_broken(check, body):
    with pytest.raises(SchemaError):
        check(body)


def test_checkers_reject_non_json_and_take_recorded_requests(hook):
    with pytest.raises(SchemaError, match="not JSON"):
        check_slack(b"<html>")
    post(hook.url(), json.dumps(PD_OK).encode())
    [req] = hook.wait_for(1, timeout=2)
    assert check_pagerduty(req) == PD_OK
    with pytest.raises(SchemaError):
        check_teams(req)
