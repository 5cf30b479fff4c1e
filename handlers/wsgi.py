"""The Slack HTTP edge: the WSGI app Slack posts to, hardened, and the waitress server.

`wsgi_app(bot)` serves POST /slack/events (through Bolt) and GET /healthz. Before Bolt sees a
request, `FormSafeRequestHandler` parses the body without trusting it (`parse_slack_body`,
`payload_problem`: pure) and checks its signature (`signature_ok`: pure), so a body Bolt would
crash on is answered 401 when unsigned and 400 when signed, never 500. `HttpServer` runs
waitress on a thread pool in a background thread, with a body size limit, and stamps each
request with the moment its last byte arrived: Slack's 3 seconds run from then, also while it
waits for a thread. Socket Mode, which needs none of this, is wired in `bot.app`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from slack_bolt import App, BoltContext, BoltRequest, BoltResponse
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.adapter.wsgi.http_request import WsgiHttpRequest
from slack_bolt.request.internals import build_context
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import WSGITask

from bot.app import Bot

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # Slack's payloads are far smaller; anything bigger is refused
SIGNATURE_MAX_AGE = 300  # seconds either way, as Slack and Bolt require


class MalformedRequest(ValueError):
    """A request body that is not one of the shapes Slack sends; the message says why."""


def signature_ok(
    signing_secret: str, raw: bytes, timestamp: str | None, signature: str | None, now: float
) -> bool:
    """Return True when `signature` is Slack's v0 HMAC of `raw` at `timestamp`, within 5 minutes.

    Pure. Works on the raw bytes, so a body that is not UTF-8 is checked, not crashed on.
    """
    if not signing_secret or not timestamp or not signature:
        return False
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > SIGNATURE_MAX_AGE:
        return False
    base = b"v0:" + timestamp.encode("ascii") + b":" + raw
    digest = hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    # WSGI header values are latin-1 strings: this encoding never fails.
    return hmac.compare_digest(f"v0={digest}".encode("ascii"), signature.encode("latin-1"))


# Bolt matches listeners on these with regular expressions or string comparisons; Slack always
# sends them as strings.
_STRING_FIELDS = (
    "type", "command", "callback_id", "action_id", "trigger_id", "response_url", "user_id",
    "channel_id", "team_id", "text", "token", "api_app_id",
)  # fmt: skip


def payload_problem(body: object) -> str | None:
    """Return what makes a parsed body unlike anything Slack sends to this app, or None. Pure.

    Checks the parts Bolt and the listeners index into without checking: the top level is an
    object, an Events API callback an event object with a type and an event_id, a click a
    non-empty list of actions with an `action_id`, a view submission a view with a
    `callback_id`, and the nested user/channel/team objects are objects.
    """
    if not isinstance(body, dict):
        return "the payload is not a JSON object"
    for key in _STRING_FIELDS:
        if key in body and not isinstance(body[key], str):
            return f"`{key}` is not a string"
    if "view" in body and not isinstance(body["view"], dict):
        return "`view` is not an object"
    for key in ("user", "channel", "team", "enterprise", "container", "message"):
        if body.get(key) is not None and not isinstance(body[key], dict | str):
            return f"`{key}` is neither an object nor a string"
    kind = body.get("type")
    if "event" in body and not isinstance(body["event"], dict):
        return "`event` is not an object"
    if "authorizations" in body and not isinstance(body["authorizations"], list):
        return "`authorizations` is not a list"
    if kind == "event_callback":
        event = body.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return "an event_callback without an event type"
        if not isinstance(body.get("event_id"), str):
            return "an event_callback without an event_id"
    if "command" in body and not (body.get("user_id") and body.get("channel_id")):
        return "a slash command without user_id or channel_id"
    if kind in ("block_actions", "view_submission") and not _user_id(body.get("user")):
        return f"a {kind} payload without a user id"
    if kind == "block_actions":
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions:
            return "a block_actions payload without actions"
        for action in actions:
            if not isinstance(action, dict) or not isinstance(action.get("action_id"), str):
                return "an action without an action_id"
    if kind in ("view_submission", "view_closed"):
        view = body.get("view")
        if not isinstance(view, dict) or not isinstance(view.get("callback_id"), str):
            return f"a {kind} payload without a view callback_id"
    return None


def _user_id(user: object) -> str:
    if isinstance(user, dict):
        user = user.get("id")
    return user if isinstance(user, str) else ""


def parse_slack_body(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """Return the fields of a Slack request body; raise MalformedRequest. Pure.

    Bolt parses any form body containing the word "payload" as an interactive payload, so
    `/cv export ... --reason "payload"` would become an empty request answered 404. Here a form
    without a `payload` field is parsed as the plain form it is.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("the body is not UTF-8") from None
    if not text.strip():
        raise MalformedRequest("the body is empty")
    media = (content_type or "").split(";")[0].strip().lower()
    try:
        if media == "application/json" or text.lstrip().startswith("{"):
            body: object = json.loads(text)
        else:
            form = dict(parse_qsl(text, keep_blank_values=True))
            body = json.loads(form["payload"]) if "payload" in form else form
    except ValueError:
        raise MalformedRequest("the body or its payload field is not valid JSON") from None
    problem = payload_problem(body)
    if problem is not None:
        raise MalformedRequest(problem)
    assert isinstance(body, dict)  # payload_problem said so
    return body


class FormSafeRequestHandler(SlackRequestHandler):
    """Bolt's WSGI handler, made safe for any body: 401 unless signed, 400 when malformed.

    Bolt parses the body before it checks the signature and crashes (500) on bodies that are
    not UTF-8, not JSON, or not shaped like Slack's; it also misreads slash commands containing
    "payload" (see `parse_slack_body`). Here the body is parsed first without trusting it: a
    body that cannot be parsed is answered 401 when its signature is wrong (nothing about it is
    revealed) and 400 when it is signed. Bolt still checks the signature of everything it gets.
    """

    def __init__(self, app: App, signing_secret: str) -> None:
        super().__init__(app)
        self._signing_secret = signing_secret

    def _signed(self, raw: bytes, headers: dict[str, Any]) -> bool:
        return signature_ok(
            self._signing_secret,
            raw,
            _header(headers, "x-slack-request-timestamp"),
            _header(headers, "x-slack-signature"),
            time.time(),
        )

    def _refuse(self, raw: bytes, headers: dict[str, Any], problem: str) -> BoltResponse:
        if not self._signed(raw, headers):
            return BoltResponse(status=401, body={"error": "invalid request"})
        log.warning("refused a signed request: %s", problem)
        return BoltResponse(status=400, body={"error": f"malformed request: {problem}"})

    def dispatch(self, request: WsgiHttpRequest) -> BoltResponse:
        environ = request.environ
        arrived = environ.get(ARRIVED)
        received = arrived if isinstance(arrived, float) else time.monotonic()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw: bytes = environ["wsgi.input"].read(length) if length > 0 else b""
        headers = request.get_headers()
        if not _integer(_header(headers, "x-slack-request-timestamp") or "0"):
            # Bolt's verification middleware would crash (500) on int() of it.
            return BoltResponse(status=401, body={"error": "invalid request"})
        try:
            body = parse_slack_body(raw, _header(headers, "content-type"))
            # Bolt is given the body parsed here instead of parsing it again (and differently):
            # its raw text, which its signature check reads, its fields and their context.
            bolt_request = BoltRequest(body="", query=request.query_string, headers=headers)
            bolt_request.raw_body = raw.decode("utf-8")
            bolt_request.body = body
            bolt_request.context = build_context(BoltContext({}), body)
            # Slack's 3 seconds run from the arrival, not from when a listener starts.
            bolt_request.context["received_at"] = received

        except MalformedRequest as exc:
            return self._refuse(raw, headers, str(exc))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            # Bolt's own parsing or context building choked on a shape payload_problem let by.
            return self._refuse(raw, headers, "a payload Bolt cannot read")
        response: BoltResponse = self.app.dispatch(bolt_request)
        return response


def _integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _header(headers: dict[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return None if value is None else str(value)


def health(bot: Bot) -> dict[str, Any]:
    """Return the /healthz report: ok unless no worker is alive or a job waits too long.

    A job waiting longer than BOT_HEALTH_MAX_QUEUE_SECONDS means the workers are stuck, all
    busy for that long, or the database stays locked: worth a look either way.
    """
    live = bot.runner.live_workers()
    report: dict[str, Any] = {
        "ok": True,
        "workers": {"live": live, "configured": bot.runner.workers},
        "oldest_queued_seconds": None,
        "max_queue_seconds": bot.config.health_max_queue_seconds,
    }
    problems = []
    if live == 0:
        problems.append("no live worker")
    try:
        wait = bot.store.oldest_wait()
        report["jobs"] = bot.store.unfinished_jobs()
        report["outbox"] = bot.store.outbox_pending_count()
    except sqlite3.Error as exc:
        problems.append(f"the database cannot be read: {type(exc).__name__}")
    else:
        if wait is not None:
            seconds = int(wait.total_seconds())
            report["oldest_queued_seconds"] = seconds
            if seconds > bot.config.health_max_queue_seconds:
                problems.append(
                    f"a job has waited {seconds} s "
                    f"(more than {bot.config.health_max_queue_seconds} s)"
                )
    if problems:
        report["ok"] = False
        report["problem"] = "; ".join(problems)
    return report


def wsgi_app(bot: Bot) -> Callable[..., Iterable[bytes]]:
    """Return the WSGI app: POST /slack/events (Bolt) and GET /healthz."""
    handler = FormSafeRequestHandler(bot.app, bot.config.slack_signing_secret.reveal())

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz" and method == "GET":
            report = health(bot)
            start_response(
                "200 OK" if report["ok"] else "503 Service Unavailable",
                [("Content-Type", "application/json")],
            )
            return [json.dumps(report).encode()]
        if path == "/slack/events" and method == "POST":
            result: Iterable[bytes] = handler(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return application


# A request waits in its thread until its decision is known (up to handlers.decider.ACK_BY
# after it arrived). The threads mostly wait (decisions run on the decider's pool); enough of
# them keep a burst out of waitress's queue, where its time runs too.
HTTP_THREADS = 32
ARRIVED = "cvdsr.arrived"  # environ key: time.monotonic() when the request's last byte came in


class _StampedParser(HTTPRequestParser):
    """Notes when the request is complete (in waitress's I/O thread, before any queue)."""

    arrived: float | None = None

    def received(self, data: bytes) -> int:
        consumed: int = super().received(data)
        if self.completed and self.arrived is None:
            self.arrived = time.monotonic()
        return consumed


class _StampedTask(WSGITask):
    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ[ARRIVED] = getattr(self.request, "arrived", None)
        return environ


class _StampedChannel(HTTPChannel):
    parser_class = _StampedParser
    task_class = _StampedTask


class HttpServer:
    """waitress serving the bot's WSGI app on a thread pool, in a background thread."""

    def __init__(
        self, bot: Bot, host: str = "0.0.0.0", port: int = 3000, threads: int = HTTP_THREADS
    ):
        self.server = create_server(
            wsgi_app(bot),
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=MAX_BODY_BYTES,
            ident="cv-dsr-bot",
            clear_untrusted_proxy_headers=True,
        )
        server: Any = self.server
        server.channel_class = _StampedChannel
        self.port: int = self.server.socket.getsockname()[1]  # type: ignore[union-attr]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    def _serve(self) -> None:
        # waitress has no stop(): run its loop in short slices and close it from this thread,
        # so no socket is closed under a select() running elsewhere.
        server: Any = self.server
        while not self._stop.is_set():
            server.asyncore.loop(timeout=0.1, map=server._map, use_poll=True, count=1)
        server.close()

    def start(self) -> HttpServer:
        """Start serving in the background."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, close the listening socket and finish the requests in flight."""
        self._stop.set()
        self._thread.join(10)
