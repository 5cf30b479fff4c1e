"""Wiring: builds the bot from a Config and serves it (HTTP through waitress, or Socket Mode).

This module and handlers/ are the only places that import slack_bolt and slack_sdk.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlparse

import requests
from slack_bolt import App, BoltContext, BoltRequest, BoltResponse
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.adapter.wsgi.http_request import WsgiHttpRequest
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.request.internals import build_context
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    ServerErrorRetryHandler,
)
from waitress.server import create_server

from bot import deletion, exporter
from bot.clock import Clock, SystemClock
from bot.config import Config
from bot.db import Database
from bot.errors import ConfigError
from bot.policy import Rules
from bot.runner import Runner, Settings
from bot.service import Service
from bot.store import TERMINAL, Store
from bot.training import TrainingClient
from handlers.directory import SlackDirectory
from handlers.listeners import register
from handlers.outbox import Deliverer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # Slack's payloads are far smaller; anything bigger is refused


def web_client(config: Config) -> WebClient:
    """Return the slack-sdk client, retrying connection errors and 5xx (429s are rescheduled)."""
    return WebClient(
        token=config.slack_bot_token.reveal(),
        base_url=config.slack_api_url,
        timeout=30,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
    )


@dataclass
class Bot:
    """Every long-lived part of a running bot."""

    config: Config
    db: Database
    store: Store
    client: TrainingClient
    service: Service
    runner: Runner
    deliverer: Deliverer
    app: App
    web: WebClient
    _identity: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        """Start the job workers and the Slack outbox."""
        self.runner.start()
        self.deliverer.start()

    def stop(self) -> None:
        """Stop taking jobs, let running ones reach a checkpoint, flush the outbox, close."""
        self.runner.stop()
        self.deliverer.stop()
        self.client.close()
        self.db.close()


def build_bot(
    config: Config,
    *,
    clock: Clock | None = None,
    session: requests.Session | None = None,
    verify_timeout: float = 120.0,
) -> Bot:
    """Return a Bot wired from `config` (nothing started yet)."""
    clock = clock or SystemClock()
    db = Database(config.database)
    store = Store(db, clock, secrets=config.secrets())
    store.audit_channel = config.audit_channel
    client = TrainingClient(
        config.custom_vision_endpoint,
        config.custom_vision_training_key.reveal(),
        session=session,
        tps=config.custom_vision_tps,
    )
    web = web_client(config)
    rules = Rules(
        approvers=frozenset(config.approvers),
        requesters=frozenset(config.requesters),
        allowed_channels=frozenset(config.allowed_channels),
        required_approvals=config.required_approvals,
    )
    directory = SlackDirectory(web)
    service = Service(
        store,
        rules,
        directory,
        clock,
        approval_ttl=timedelta(hours=config.approval_ttl_hours),
        allow_public_exports=config.allow_public_exports,
        work_dir=config.work_dir,
        command=config.bot_command,
    )
    settings = Settings(
        max_file_bytes=config.max_file_bytes,
        download_concurrency=config.download_concurrency,
        endpoint_host=urlparse(config.custom_vision_endpoint).netloc,
        approval_ttl=timedelta(hours=config.approval_ttl_hours),
    )

    def on_finish(record: Any) -> None:
        if record.status in TERMINAL:
            service.finished(record)

    runner = Runner(
        store,
        client,
        {
            "export": exporter.run_export,
            "preview": lambda ctx: deletion.run_preview(ctx),
            "delete": lambda ctx: deletion.run_delete(ctx, verify_timeout=verify_timeout),
        },
        clock=clock,
        work_dir=config.work_dir,
        settings=settings,
        workers=config.workers,
        on_finish=on_finish,
        housekeeping=service.expire_due,
    )
    service.wake = runner.notify
    deliverer = Deliverer(store, web, required_approvals=config.required_approvals)
    store.on_enqueue = deliverer.wake.set
    app = bolt_app(config, web, service)
    return Bot(config, db, store, client, service, runner, deliverer, app, web)


def bolt_app(config: Config, web: WebClient, service: Service) -> App:
    """Return the Bolt app with the listeners registered; no token check at start-up."""
    identity: dict[str, str] = {}
    lock = threading.Lock()

    def authorize(enterprise_id: str | None, team_id: str | None, **_: Any) -> AuthorizeResult:
        with lock:
            if not identity:
                me = web.auth_test()
                identity.update(user_id=str(me["user_id"]), bot_id=str(me.get("bot_id") or ""))
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=team_id,
            bot_token=config.slack_bot_token.reveal(),
            bot_user_id=identity["user_id"],
            bot_id=identity["bot_id"],
        )

    app = App(
        # Listeners get a client carrying the token from `authorize`; this one only sets the URL.
        client=WebClient(base_url=config.slack_api_url, timeout=30),
        signing_secret=config.slack_signing_secret.reveal(),
        authorize=authorize,
        # Listeners only ack and touch SQLite; a bigger pool keeps bursts under 3 s.
        listener_executor=ThreadPoolExecutor(max_workers=16, thread_name_prefix="bolt"),
        request_verification_enabled=not config.socket_mode,
        logger=logging.getLogger("slack_bolt"),
    )
    if app.oauth_flow is not None:
        raise ConfigError(
            ["SLACK_CLIENT_ID/SLACK_CLIENT_SECRET are set: this single-workspace bot needs neither"]
        )
    register(app, service, command=config.bot_command)
    return app


class FormSafeRequestHandler(SlackRequestHandler):
    """Bolt's WSGI handler, minus its misreading of slash commands that contain "payload".

    Bolt parses any form body containing the word "payload" as an interactive payload, so
    `/cv export ... --reason "payload"` would become an empty request answered 404. Here a form
    without a `payload` field is parsed as the plain form it is (the signature is still checked
    on the raw body).
    """

    def dispatch(self, request: WsgiHttpRequest) -> BoltResponse:
        raw = request.get_body()
        bolt_request = BoltRequest(
            body=raw, query=request.query_string, headers=request.get_headers()
        )
        if not bolt_request.body and raw and not raw.lstrip().startswith("{"):
            form = dict(parse_qsl(raw, keep_blank_values=True))
            if "payload" not in form:
                bolt_request.body = form
                bolt_request.context = build_context(BoltContext({}), form)
        response: BoltResponse = self.app.dispatch(bolt_request)
        return response


def wsgi_app(bot: Bot) -> Callable[..., Iterable[bytes]]:
    """Return the WSGI app: POST /slack/events (Bolt) and GET /healthz."""
    handler = FormSafeRequestHandler(bot.app)

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz" and method == "GET":
            body = json.dumps(
                {
                    "ok": True,
                    "jobs": bot.store.unfinished_jobs(),
                    "outbox": bot.store.outbox_pending_count(),
                }
            ).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path == "/slack/events" and method == "POST":
            result: Iterable[bytes] = handler(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return application


class HttpServer:
    """waitress serving the bot's WSGI app on a thread pool, in a background thread."""

    def __init__(self, bot: Bot, host: str = "0.0.0.0", port: int = 3000, threads: int = 8):
        self.server = create_server(
            wsgi_app(bot),
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=MAX_BODY_BYTES,
            ident="cv-dsr-bot",
            clear_untrusted_proxy_headers=True,
        )
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


def socket_mode(bot: Bot) -> SocketModeHandler:
    """Return the Socket Mode handler (no public URL; Slack pushes over a websocket)."""
    return SocketModeHandler(bot.app, bot.config.slack_app_token.reveal())
