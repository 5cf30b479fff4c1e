"""The Slack Web API clients: the bot's slack-sdk client, and its adapter for the self-check.

`web_client(config)` is the one client the outbox, the directory and the Bolt app's wiring use:
it retries connection errors and 5xx (429s are rescheduled by the outbox). `SlackCalls` wraps it
for `handlers.checks`: Slack's errors come back as a `SlackAnswer`, no answer at all as
`SlackUnreachable`. `BotIdentity` fetches the bot's own ids (auth.test) for Bolt's `authorize`
in the background, so no listener ever waits for it; the workspace's URL and id it also
answers are where the App Home's thread links point.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot.config import Config

log = logging.getLogger(__name__)


class SlackUnreachable(Exception):
    """No HTTP answer from the Slack Web API (the message names only the error type)."""


@dataclass(frozen=True)
class SlackAnswer:
    """One Web API answer: its JSON body and its headers (names in lower case)."""

    data: Mapping[str, Any]
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return bool(self.data.get("ok"))

    @property
    def error(self) -> str:
        return str(self.data.get("error") or "unknown_error")


class SlackCalls:
    """The bot's own slack-sdk client as the self-checks call it: Slack's errors come back as
    answers, a missing answer as SlackUnreachable (naming only the error type)."""

    def __init__(self, web: WebClient) -> None:
        self.web = web

    @classmethod
    def for_config(cls, config: Config) -> SlackCalls:
        """Return the calls with the bot's client, retrying one 429 as the checks run once."""
        web = web_client(config)
        web.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
        return cls(web)

    def call(self, method: str, **params: str) -> SlackAnswer:
        """Return Slack's answer to `method`; raise SlackUnreachable when there is none."""
        try:
            response = self.web.api_call(method, data=params)
        except SlackApiError as exc:
            response = exc.response
        except OSError as exc:  # urllib's URLError and socket errors; never str(exc)
            raise SlackUnreachable(type(exc).__name__) from None
        data = response.data if isinstance(response.data, dict) else None
        if data is None:
            data = {"ok": False, "error": f"HTTP {response.status_code}, not a Slack answer"}
        headers = {str(k).lower(): str(v) for k, v in (response.headers or {}).items()}
        return SlackAnswer(data, headers)


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


class BotIdentity:
    """The bot's own user and bot ids (auth.test), fetched in the background.

    Bolt's `authorize` runs before every listener, inside Slack's 3 seconds: it must never
    wait for Slack. Nothing the listeners do needs the bot's ids (Bolt uses them to ignore
    the bot's own events); the App Home's publisher, after the ack, may `wait` for the
    workspace's `url` and `team_id`.
    """

    def __init__(self, web: WebClient) -> None:
        self.web = web
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()
        self._fetching = False
        self._tried = threading.Event()  # a fetch ended (whether it got the ids or not)

    def get(self) -> dict[str, str]:
        """Return the ids known so far ({} at first); start fetching them if needed."""
        with self._lock:
            if self._ids or self._fetching:
                return dict(self._ids)
            self._fetching = True
        threading.Thread(target=self._fetch, name="auth-test", daemon=True).start()
        return {}

    def _fetch(self) -> None:
        try:
            me = self.web.auth_test()
            ids = {
                "user_id": str(me["user_id"]),
                "bot_id": str(me.get("bot_id") or ""),
                "url": str(me.get("url") or ""),
                "team_id": str(me.get("team_id") or ""),
            }
        except (SlackApiError, OSError, KeyError) as exc:
            log.warning("auth.test failed (%s); retried on the next request", type(exc).__name__)
            ids = {}
        with self._lock:
            self._ids.update(ids)
            self._fetching = False
        self._tried.set()

    def wait(self, timeout: float) -> dict[str, str]:
        """Return the ids, waiting up to `timeout` s for a first fetch ({} when it failed).

        Never call it before an ack: it may wait for Slack.
        """
        ids = self.get()
        if not ids:
            self._tried.wait(timeout)
            ids = self.get()
        return ids
