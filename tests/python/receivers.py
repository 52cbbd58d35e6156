"""Real local receivers for the alert tests: an HTTP endpoint, an SMTP server,
and schema checkers for the bodies each channel sends.

Nothing here starts the gateway; these are the other end of its deliveries.

    with HttpReceiver() as hook:
        ...configure the gateway with hook.url("/slack")...
        [req] = hook.wait_for(1, timeout=10)
        check_slack(req.body)

HttpReceiver answers every request on 127.0.0.1 (any method, any path),
records it, and answers as programmed (status, Retry-After, failures, down).
SmtpReceiver is aiosmtpd on 127.0.0.1, plain SMTP (the gateway's
smtp_tls = "none"); no STARTTLS mode: `cryptography`, needed to make a
certificate at run time, is not a dependency of anything pinned here.
"""

from __future__ import annotations

import email
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from standardwebhooks import Webhook

__all__ = [
    "CIHeaders",
    "HttpReceiver",
    "RecordedRequest",
    "ReceivedMail",
    "SchemaError",
    "SmtpReceiver",
    "WaitTimeout",
    "check_discord",
    "check_pagerduty",
    "check_slack",
    "check_teams",
    "check_webhook_envelope",
    "verify_standard_webhook",
]


class WaitTimeout(AssertionError):
    """wait_for ran out of time; the message lists what had arrived."""


class SchemaError(AssertionError):
    """A body does not follow the documented schema of its channel."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# HTTP


class CIHeaders(Mapping):
    """Request headers, looked up case-insensitively. A repeated header keeps
    every value: `h["x"]` is the last one, `h.get_all("x")` all of them."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self._pairs = list(pairs)
        self._last: dict[str, str] = {}
        self._names: dict[str, str] = {}
        for name, value in self._pairs:
            self._last[name.lower()] = value
            self._names.setdefault(name.lower(), name)

    def __getitem__(self, name: str) -> str:
        return self._last[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._last

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._last)

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self._pairs if n.lower() == name.lower()]

    def __repr__(self) -> str:
        return f"CIHeaders({self._pairs!r})"


_NO_JSON = object()


@dataclass
class RecordedRequest:
    method: str
    target: str  # as sent: path and query
    path: str  # without the query
    query: dict[str, list[str]]
    headers: CIHeaders
    body: bytes
    time: float  # time.time() when the body had been read
    status: int  # what the receiver answered
    _json: Any = field(default=_NO_JSON, repr=False)

    @property
    def json(self) -> Any:
        """The body parsed as JSON, or None if it is not JSON."""
        if self._json is _NO_JSON:
            try:
                self._json = json.loads(self.body)
            except ValueError:
                self._json = None
        return self._json

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients may keep connections alive as they would with a
    # real service; every answer carries a Content-Length.
    protocol_version = "HTTP/1.1"
    receiver: "HttpReceiver"  # set on the per-receiver subclass

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def setup(self):
        super().setup()
        self.receiver._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.receiver._track(self.connection, False)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self):
        body = self._read_body()
        status, retry_after, answer, delay = self.receiver._decide()
        if delay:
            time.sleep(delay)
        split = urlsplit(self.path)
        self.receiver._record(
            RecordedRequest(
                method=self.command,
                target=self.path,
                path=split.path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers=CIHeaders(list(self.headers.items())),
                body=body,
                time=time.time(),
                status=status,
            )
        )
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if status in (204, 304) or self.command == "HEAD":
            answer = b""
        if answer:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if answer:
            self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # come_up rebinds the same port at once

    def handle_error(self, request, client_address):
        # A peer that resets or gives up (a client timing out on set_delay, a
        # connection cut by go_down) is part of what these tests do.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class HttpReceiver:
    """A threaded HTTP server on 127.0.0.1 that records every request.

    Answers 200 "ok" unless told otherwise:
      set_status(code, retry_after=None, body=None)  from now on
      fail_next(n, code=500, retry_after=None)       the next n requests only
      set_delay(seconds)                             wait before answering
      go_down() / come_up()                          refuse connections / serve
                                                     again on the same port
    """

    def __init__(self, port: int = 0):
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._status = 200
        self._retry_after: int | str | None = None
        self._answer = b"ok"
        self._failures: list[tuple[int, int | str | None]] = []
        self._delay = 0.0
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._handler = type("Handler", (_Handler,), {"receiver": self})
        self._start(port)
        self.port: int = self._server.server_address[1]
        self.host = "127.0.0.1"

    # -- lifecycle
    def _start(self, port: int) -> None:
        self._server = _Server(("127.0.0.1", port), self._handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"HttpReceiver:{self._server.server_address[1]}", daemon=True,
        )
        self._thread.start()

    def _stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()  # the listening socket: connections are refused
        # Kept-alive connections too, as a dead service's would be.
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def go_down(self) -> None:
        """Close the listening socket (and open connections): connects fail."""
        self._stop()

    def come_up(self) -> None:
        """Listen again on the same port."""
        if self._closed:
            raise RuntimeError("receiver is closed")
        if self._server is None:
            self._start(self.port)

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        self._closed = True
        self._stop()

    def __enter__(self) -> "HttpReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # -- addresses
    def url(self, path: str = "/hook") -> str:
        if not path.startswith("/"):
            path = "/" + path
        return f"http://127.0.0.1:{self.port}{path}"

    # -- behaviour
    def set_status(self, code: int, retry_after: int | str | None = None,
                   body: bytes | str | None = None) -> None:
        """Answer every following request with `code` (and Retry-After)."""
        with self._lock:
            self._status = code
            self._retry_after = retry_after
            if body is not None:
                self._answer = body.encode() if isinstance(body, str) else body

    def fail_next(self, n: int, code: int = 500, retry_after: int | str | None = None) -> None:
        """Answer the next `n` requests with `code`, then as set_status says."""
        with self._lock:
            self._failures.extend([(code, retry_after)] * n)

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering each following request."""
        with self._lock:
            self._delay = seconds

    def _decide(self) -> tuple[int, int | str | None, bytes, float]:
        with self._lock:
            if self._failures:
                code, retry_after = self._failures.pop(0)
                return code, retry_after, b"failure as told", self._delay
            return self._status, self._retry_after, self._answer, self._delay

    # -- what arrived
    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)
            self._lock.notify_all()

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def clear(self) -> None:
        """Forget the recorded requests (the programmed behaviour stays)."""
        with self._lock:
            self._requests.clear()

    def wait_for(self, what: int | Callable[[RecordedRequest], bool] = 1,
                 timeout: float = 10.0, *, path: str | None = None,
                 count: int = 1) -> list[RecordedRequest]:
        """Wait until `what` requests arrived (an int), or until `count`
        requests satisfy `what` (a predicate); return those requests (all
        recorded ones for an int). Only requests to `path` count, if given.
        Raises WaitTimeout listing what had arrived."""
        if callable(what):
            pred, need = what, count
        else:
            pred, need = (lambda r: True), what
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self._requests
                       if (path is None or r.path == path) and pred(r)]
                if len(got) >= need:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(
                        f"  {r.method} {r.target} -> {r.status}: {r.body[:200]!r}"
                        for r in self._requests) or "  (nothing)"
                    raise WaitTimeout(
                        f"waited {timeout}s for {need} matching request(s)"
                        f"{' to ' + path if path else ''}, got {len(got)}; "
                        f"all {len(self._requests)} seen:\n{seen}")
                self._lock.wait(left)


def verify_standard_webhook(secret: str, request: RecordedRequest) -> Any:
    """Verify a Standard Webhooks signature with the reference library and
    return the JSON payload. Raises standardwebhooks.WebhookVerificationError
    (bad or missing signature, timestamp outside 5 minutes)."""
    return Webhook(secret).verify(request.body, dict(request.headers))


# --------------------------------------------------------------------------
# SMTP


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage  # parsed with policy.default
    login: str | None  # the AUTH user, if the client authenticated
    time: float


class _SmtpHandler:
    def __init__(self, receiver: "SmtpReceiver"):
        self.receiver = receiver

    async def handle_DATA(self, server, session, envelope):
        reply = self.receiver._next_reply()
        if reply is not None:
            return reply
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.receiver._record(ReceivedMail(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            raw=raw,
            message=email.message_from_bytes(raw, policy=policy.default),
            login=login.decode() if isinstance(login, bytes) else login,
            time=time.time(),
        ))
        return "250 Message accepted for delivery"


class SmtpReceiver:
    """An SMTP server (aiosmtpd) on 127.0.0.1 and a free port, plain text.

    auth=(user, password): AUTH PLAIN/LOGIN required (over plain SMTP), others
    rejected. fail_next(n, reply) answers the next n DATA commands with reply.
    """

    def __init__(self, auth: tuple[str, str] | None = None):
        self._lock = threading.Condition()
        self._mails: list[ReceivedMail] = []
        self._replies: list[str] = []
        self.host = "127.0.0.1"
        kwargs: dict[str, Any] = {}
        if auth is not None:
            user, password = auth

            def authenticator(server, session, envelope, mechanism, data):
                ok = (isinstance(data, LoginPassword)
                      and data.login == user.encode() and data.password == password.encode())
                return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

            kwargs = dict(authenticator=authenticator, auth_required=True,
                          auth_require_tls=False)
        last: Exception | None = None
        for _ in range(5):  # a free port can be taken between probe and bind
            self.port = _free_port()
            self._controller = Controller(_SmtpHandler(self), hostname=self.host,
                                          port=self.port, **kwargs)
            try:
                self._controller.start()
                break
            except Exception as e:  # noqa: BLE001 - retried, then raised
                last = e
        else:
            raise RuntimeError(f"SMTP receiver did not start: {last!r}")
        self._closed = False

    def _record(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._mails.append(mail)
            self._lock.notify_all()

    def _next_reply(self) -> str | None:
        with self._lock:
            return self._replies.pop(0) if self._replies else None

    def fail_next(self, n: int, reply: str = "451 4.3.0 Temporary failure, try later") -> None:
        with self._lock:
            self._replies.extend([reply] * n)

    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._mails)

    def clear(self) -> None:
        with self._lock:
            self._mails.clear()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedMail]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._mails) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(f"  {m.mail_from} -> {m.rcpt_tos}: {m.message['Subject']!r}"
                                     for m in self._mails) or "  (nothing)"
                    raise WaitTimeout(f"waited {timeout}s for {count} mail(s), "
                                      f"got {len(self._mails)}:\n{seen}")
                self._lock.wait(left)
            return list(self._mails)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._controller.stop()

    def __enter__(self) -> "SmtpReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------
# Schema checkers. Each takes the body (bytes, str, a parsed dict, or a
# RecordedRequest), raises SchemaError on the first rule broken, and returns
# the parsed JSON.


def _parse(body: Any) -> Any:
    if isinstance(body, RecordedRequest):
        body = body.body
    if isinstance(body, (bytes, bytearray, str)):
        try:
            return json.loads(body)
        except ValueError as e:
            raise SchemaError(f"body is not JSON: {e}: {body[:200]!r}") from None
    return body


def _require(cond: Any, msg: str) -> None:
    if not cond:
        raise SchemaError(msg)


def _str(obj: Mapping, key: str, where: str, *, required: bool = True,
         max_len: int | None = None, nonempty: bool = True) -> str | None:
    if key not in obj or obj[key] is None:
        _require(not required, f"{where}: '{key}' is required")
        return None
    v = obj[key]
    _require(isinstance(v, str), f"{where}: '{key}' must be a string, got {type(v).__name__}")
    _require(not nonempty or v, f"{where}: '{key}' must not be empty")
    if max_len is not None:
        _require(len(v) <= max_len, f"{where}: '{key}' is {len(v)} chars, over {max_len}")
    return v


def _obj(v: Any, where: str) -> dict:
    _require(isinstance(v, dict), f"{where} must be a JSON object, got {type(v).__name__}")
    return v


def _list(v: Any, where: str, max_items: int | None = None) -> list:
    _require(isinstance(v, list), f"{where} must be an array, got {type(v).__name__}")
    if max_items is not None:
        _require(len(v) <= max_items, f"{where} has {len(v)} items, over {max_items}")
    return v


# Slack incoming webhooks take a message payload: `text` and/or `blocks`.
# https://docs.slack.dev/messaging/sending-messages-using-incoming-webhooks
# https://docs.slack.dev/reference/block-kit/blocks ("up to 50 blocks in each
#   message"; every block has `type`; block_id at most 255 characters)
# https://docs.slack.dev/reference/block-kit/blocks/section-block (`text` at
#   most 3000 characters, required unless `fields`: at most 10, each at most 2000)
# https://docs.slack.dev/reference/block-kit/blocks/header-block (plain_text,
#   at most 150 characters)
# https://docs.slack.dev/reference/block-kit/composition-objects/text-object
#   (`type` plain_text or mrkdwn, `text` at least 1 character)
SLACK_MAX_BLOCKS = 50
SLACK_SECTION_TEXT_MAX = 3000


def _slack_text(t: Any, where: str, max_len: int, types=("plain_text", "mrkdwn")) -> None:
    t = _obj(t, where)
    _require(t.get("type") in types, f"{where}: type must be one of {types}, got {t.get('type')!r}")
    _str(t, "text", where, max_len=max_len)


def check_slack(body: Any) -> dict:
    msg = _obj(_parse(body), "slack message")
    has_text = isinstance(msg.get("text"), str) and msg["text"] != ""
    _require("text" not in msg or isinstance(msg["text"], str), "slack: 'text' must be a string")
    blocks = msg.get("blocks")
    _require(has_text or blocks, "slack: a message needs 'text' or 'blocks'")
    if blocks is not None:
        _list(blocks, "slack: blocks", SLACK_MAX_BLOCKS)
        for i, b in enumerate(blocks):
            where = f"slack: blocks[{i}]"
            b = _obj(b, where)
            _str(b, "type", where)
            _str(b, "block_id", where, required=False, max_len=255)
            if b["type"] == "section":
                _require("text" in b or "fields" in b, f"{where}: section needs 'text' or 'fields'")
                if "text" in b:
                    _slack_text(b["text"], f"{where}.text", SLACK_SECTION_TEXT_MAX)
                if "fields" in b:
                    for j, f in enumerate(_list(b["fields"], f"{where}.fields", 10)):
                        _slack_text(f, f"{where}.fields[{j}]", 2000)
            elif b["type"] == "header":
                _slack_text(b.get("text"), f"{where}.text", 150, types=("plain_text",))
            elif b["type"] == "context":
                _require(b.get("elements"), f"{where}: context needs 'elements'")
                _list(b["elements"], f"{where}.elements", 10)
    return msg


# Teams Workflows ("When a Teams webhook request is received") post Adaptive
# Cards only, wrapped as a message with attachments:
# https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using
#   (Workflows support Adaptive Cards only, not the connector MessageCard)
# https://learn.microsoft.com/en-us/microsoftteams/platform/task-modules-and-cards/cards/cards-reference
# Adaptive Card schema: https://adaptivecards.io/explorer/AdaptiveCard.html
#   (`type` "AdaptiveCard", `version` "major.minor", `body` of elements with `type`)
TEAMS_CARD_TYPE = "application/vnd.microsoft.card.adaptive"


def check_teams(body: Any) -> dict:
    msg = _obj(_parse(body), "teams message")
    _require(msg.get("type") == "message", f"teams: type must be 'message', got {msg.get('type')!r}")
    atts = _list(msg.get("attachments"), "teams: attachments")
    _require(atts, "teams: attachments must not be empty")
    for i, a in enumerate(atts):
        where = f"teams: attachments[{i}]"
        a = _obj(a, where)
        _require(a.get("contentType") == TEAMS_CARD_TYPE,
                 f"{where}: contentType must be {TEAMS_CARD_TYPE!r}, got {a.get('contentType')!r}")
        card = _obj(a.get("content"), f"{where}.content")
        _require(card.get("type") == "AdaptiveCard",
                 f"{where}.content: type must be 'AdaptiveCard', got {card.get('type')!r}")
        version = _str(card, "version", f"{where}.content")
        _require(re.fullmatch(r"\d+\.\d+", version), f"{where}.content: bad version {version!r}")
        elements = _list(card.get("body"), f"{where}.content.body")
        _require(elements, f"{where}.content.body must not be empty")
        for j, e in enumerate(elements):
            _str(_obj(e, f"{where}.content.body[{j}]"), "type", f"{where}.content.body[{j}]")
    return msg


# PagerDuty Events API v2, POST /v2/enqueue:
# https://developer.pagerduty.com/docs/events-api-v2/trigger-events/
# https://developer.pagerduty.com/docs/events-api-v2/overview/
#   routing_key and event_action (trigger, acknowledge, resolve) always;
#   dedup_key at most 255 characters, required to acknowledge or resolve;
#   a trigger's payload: summary (at most 1024), source, severity (critical,
#   error, warning, info) required; timestamp, component, group, class,
#   custom_details optional.
PD_ACTIONS = ("trigger", "acknowledge", "resolve")
PD_SEVERITIES = ("critical", "error", "warning", "info")


def check_pagerduty(body: Any) -> dict:
    ev = _obj(_parse(body), "pagerduty event")
    _str(ev, "routing_key", "pagerduty")
    _require(ev.get("event_action") in PD_ACTIONS,
             f"pagerduty: event_action must be one of {PD_ACTIONS}, got {ev.get('event_action')!r}")
    trigger = ev["event_action"] == "trigger"
    _str(ev, "dedup_key", "pagerduty", required=not trigger, max_len=255)
    if trigger:
        p = _obj(ev.get("payload"), "pagerduty: payload")
        _str(p, "summary", "pagerduty: payload", max_len=1024)
        _str(p, "source", "pagerduty: payload")
        _require(p.get("severity") in PD_SEVERITIES,
                 f"pagerduty: payload.severity must be one of {PD_SEVERITIES}, got {p.get('severity')!r}")
        for k in ("timestamp", "component", "group", "class"):
            _str(p, k, "pagerduty: payload", required=False)
        if "custom_details" in p:
            _require(p["custom_details"] is not None, "pagerduty: payload.custom_details is null")
    for k, item_key in (("links", "href"), ("images", "src")):
        if k in ev:
            for i, item in enumerate(_list(ev[k], f"pagerduty: {k}")):
                _str(_obj(item, f"pagerduty: {k}[{i}]"), item_key, f"pagerduty: {k}[{i}]")
    return ev


# Discord Execute Webhook:
# https://discord.com/developers/docs/resources/webhook#execute-webhook
#   content at most 2000 characters, embeds at most 10; one of them needed
# https://discord.com/developers/docs/resources/message#embed-object-embed-limits
#   title 256, description 4096, fields 25 (name 256, value 1024, both
#   required), footer.text 2048, author.name 256; the sum of those across all
#   embeds of a message at most 6000 characters.
DISCORD_TOTAL_MAX = 6000


def check_discord(body: Any) -> dict:
    msg = _obj(_parse(body), "discord message")
    content = _str(msg, "content", "discord", required=False, max_len=2000, nonempty=False)
    embeds = msg.get("embeds")
    _require(content or embeds, "discord: a message needs 'content' or 'embeds'")
    _str(msg, "username", "discord", required=False, max_len=80)
    total = 0
    for i, e in enumerate(_list(embeds, "discord: embeds", 10) if embeds is not None else []):
        where = f"discord: embeds[{i}]"
        e = _obj(e, where)
        for k, lim in (("title", 256), ("description", 4096)):
            total += len(_str(e, k, where, required=False, max_len=lim) or "")
        if "footer" in e:
            total += len(_str(_obj(e["footer"], f"{where}.footer"), "text", f"{where}.footer", max_len=2048))
        if "author" in e:
            total += len(_str(_obj(e["author"], f"{where}.author"), "name", f"{where}.author", max_len=256))
        if "color" in e:
            _require(isinstance(e["color"], int) and 0 <= e["color"] <= 0xFFFFFF,
                     f"{where}: color must be an integer 0..0xFFFFFF")
        if "timestamp" in e:
            _require(_is_rfc3339(e["timestamp"]), f"{where}: timestamp must be ISO 8601")
        for j, f in enumerate(_list(e.get("fields", []), f"{where}.fields", 25)):
            fw = f"{where}.fields[{j}]"
            f = _obj(f, fw)
            total += len(_str(f, "name", fw, max_len=256))
            total += len(_str(f, "value", fw, max_len=1024))
    _require(total <= DISCORD_TOTAL_MAX, f"discord: embeds hold {total} chars, over {DISCORD_TOTAL_MAX}")
    return msg


# The generic webhook's body: the Standard Webhooks payload structure (`type`,
# `timestamp` RFC 3339, `data` object) plus the event's own `id`.
# https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _is_rfc3339(v: Any) -> bool:
    if not isinstance(v, str) or not _RFC3339.fullmatch(v):
        return False
    try:
        datetime.fromisoformat(v.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return False
    return True


def check_webhook_envelope(payload: Any) -> dict:
    p = _obj(_parse(payload), "webhook payload")
    _str(p, "id", "webhook")
    _str(p, "type", "webhook")
    _require(_is_rfc3339(p.get("timestamp")),
             f"webhook: timestamp must be RFC 3339 with an offset, got {p.get('timestamp')!r}")
    _obj(p.get("data"), "webhook: data")
    return p

