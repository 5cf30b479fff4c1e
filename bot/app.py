"""Wiring: `build_bot(config)` builds every long-lived part of the bot from a Config. Only wires.

It connects the product (bot/: the service, the job runner with the export and delete jobs, the
store, the Training API client) to the Slack edge (handlers/: listeners, outbox, directory, the
Web API client), and builds the Bolt app. Serving is elsewhere: over HTTP with
`handlers.wsgi.HttpServer`, or over Socket Mode with `socket_mode(bot)` here. This module and
handlers/ are the only places that import slack_bolt and slack_sdk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import requests
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from bot import deletion, exporter
from bot.clock import Clock, SystemClock
from bot.config import Config
from bot.db import Database
from bot.errors import ConfigError
from bot.lifecycle import TERMINAL
from bot.policy import Rules
from bot.resources import Resources
from bot.runner import Runner, Settings
from bot.service import Service
from bot.store import OutboxItem, Store
from bot.training import TrainingClient
from handlers.decider import Decider
from handlers.directory import SlackDirectory
from handlers.home import Workspace
from handlers.hometabs import HomeTabs
from handlers.listeners import register
from handlers.outbox import Deliverer
from handlers.webapi import BotIdentity, web_client

log = logging.getLogger(__name__)


@dataclass
class Bot:
    """Every long-lived part of a running bot."""

    config: Config
    db: Database
    store: Store
    client: TrainingClient  # the first resource's, which the jobs use
    clients: Resources  # every resource's, by name
    service: Service
    runner: Runner
    deliverer: Deliverer
    app: App
    web: WebClient
    directory: SlackDirectory
    decider: Decider
    homes: HomeTabs

    def start(self) -> None:
        """Start the job workers, the Slack outbox and the Home tabs' republishing."""
        self.runner.start()
        self.deliverer.start()
        self.homes.start()

    def stop(self) -> None:
        """Stop taking jobs, let running ones reach a checkpoint, flush the outbox, close."""
        self.decider.close()
        self.directory.close()
        self.runner.stop()
        self.deliverer.stop()
        self.homes.stop()
        for client in self.clients.values():
            client.close()
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
    # One client per resource, each with its own rate limiter (10 calls/s is per resource),
    # keeping a connection for every thread that may call at once: each worker's job and its
    # download threads, and a few Slack listeners.
    connections = config.workers * (config.download_concurrency + 1) + 4
    clients = {
        resource.name: TrainingClient(
            resource.endpoint,
            resource.training_key.reveal(),
            session=session,
            tps=resource.tps,
            connections=connections,
        )
        for resource in config.resources
    }
    resources = Resources(clients)
    client = clients[resources.first]
    web = web_client(config)
    rules = Rules(
        approvers=frozenset(config.approvers),
        requesters=frozenset(config.requesters),
        allowed_channels=frozenset(config.allowed_channels),
        required_approvals=config.required_approvals,
        allow_public_exports=config.allow_public_exports,
        allow_shared_exports=config.allow_shared_exports,
    )
    directory = SlackDirectory(web)
    service = Service(
        store,
        rules,
        directory,
        clock,
        approval_ttl=timedelta(hours=config.approval_ttl_hours),
        work_dir=config.work_dir,
        command=config.bot_command,
        holidays=config.public_holidays,
        reminder_hour=config.reminder_hour_utc,
        resources=resources,
    )
    settings = Settings(
        max_file_bytes=config.max_file_bytes,
        download_concurrency=config.download_concurrency,
        approval_ttl=timedelta(hours=config.approval_ttl_hours),
        command=config.bot_command,
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
            "delete": lambda ctx: deletion.run_delete(
                ctx,
                verify_timeout=verify_timeout,
                verify_patience=config.verify_max_hours * 3600,
            ),
        },
        clock=clock,
        work_dir=config.work_dir,
        settings=settings,
        workers=config.workers,
        lease=timedelta(seconds=config.job_lease_seconds),
        on_finish=on_finish,
        housekeeping=service.housekeeping,
        resources=resources,
    )
    service.wake = runner.notify
    identity = BotIdentity(web)
    identity.get()

    def workspace() -> Workspace:
        ids = identity.wait(2.0)
        return Workspace(url=ids.get("url") or None, team_id=ids.get("team_id") or None)

    homes = HomeTabs(web, service, workspace=workspace, command=config.bot_command)

    def delivered(item: OutboxItem) -> None:
        # Every change of a request's state re-renders its announcement: the Home tabs that
        # show the request follow it.
        if item.kind == "announce" and item.request_number is not None:
            homes.changed(store.get(item.request_number).requester)

    deliverer = Deliverer(
        store,
        web,
        rules=rules,
        required_approvals=config.required_approvals,
        work_dir=config.work_dir,
        command=config.bot_command,
        on_delivered=delivered,
    )
    store.on_enqueue = deliverer.wake.set
    decider = Decider(command=config.bot_command)
    app = bolt_app(config, identity, service, decider, homes)
    return Bot(
        config,
        db,
        store,
        client,
        resources,
        service,
        runner,
        deliverer,
        app,
        web,
        directory,
        decider,
        homes,
    )


def _bolt_logger() -> logging.Logger:
    logger = logging.getLogger("slack_bolt")
    if not any(isinstance(f, _EnvTokenNotice) for f in logger.filters):
        logger.addFilter(_EnvTokenNotice())
    return logger


class _EnvTokenNotice(logging.Filter):
    """Drops Bolt's warning that SLACK_BOT_TOKEN from the environment goes unused: the bot
    passes its token explicitly (through `authorize`), so the warning would only confuse."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will be unused" not in record.getMessage()


def bolt_app(
    config: Config, identity: BotIdentity, service: Service, decider: Decider, homes: HomeTabs
) -> App:
    """Return the Bolt app with the listeners registered; no token check at start-up."""

    def authorize(enterprise_id: str | None, team_id: str | None, **_: Any) -> AuthorizeResult:
        me = identity.get()
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=team_id,
            bot_token=config.slack_bot_token.reveal(),
            bot_user_id=me.get("user_id"),
            bot_id=me.get("bot_id"),
        )

    app = App(
        # Listeners get a client carrying the token from `authorize`; this one only sets the URL.
        client=WebClient(
            base_url=config.slack_api_url,
            timeout=30,
            retry_handlers=[
                ConnectionErrorRetryHandler(max_retry_count=1),
                RateLimitErrorRetryHandler(max_retry_count=1),
            ],
        ),
        signing_secret=config.slack_signing_secret.reveal(),
        authorize=authorize,
        request_verification_enabled=not config.socket_mode,
        # The listeners run in the thread that answers Slack, and that answer goes as soon as
        # they return: no second thread, and no Bolt loop polling every 10 ms for the ack
        # (most of an idle ack's time). Bolt also never gives up on a listener then and
        # runs a catch-all instead (the 3-second trap); handlers.decider keeps each under 3 s
        # and moves what follows the ack off this thread.
        process_before_response=True,
        logger=_bolt_logger(),
    )
    if app.oauth_flow is not None:
        raise ConfigError(
            ["SLACK_CLIENT_ID/SLACK_CLIENT_SECRET are set: this single-workspace bot needs neither"]
        )

    register(app, service, command=config.bot_command, decider=decider, homes=homes)
    return app


def socket_mode(bot: Bot) -> SocketModeHandler:
    """Return the Socket Mode handler (no public URL; Slack pushes over a websocket)."""
    return SocketModeHandler(bot.app, bot.config.slack_app_token.reveal())
