"""Sends the bot what Slack sends it: signed slash commands, button clicks, modal submissions,
and Events API events.

Bodies are built field for field like the recorded Slack payloads in specs/slack/ (form fields
in Slack's order; interactive payloads as `payload=<url-encoded compact JSON>`), with ids,
names and messages taken from the `SlackEmulator`, which also issues the trigger_ids and
response_urls the bot then uses. `signature()` is pure; the driver does HTTP with requests.

In Socket Mode the same payloads travel as envelopes over the emulator's WebSocket
(`socket_command`, `socket_click`, `socket_submit_view`, `socket_event`); bot_url and the
signing secret are then unused.

Events (`home_opened`: a person opens the app's Home tab) are delivered as Slack delivers them
(docs.slack.dev/apis/events-api/, "Retries" and "Failure conditions"): a signed JSON
`event_callback` with a unique `event_id`; a delivery that gets no HTTP 2xx within 3 seconds,
or no connection, is sent again, up to 3 times, with `X-Slack-Retry-Num` (1, 2, 3) and
`X-Slack-Retry-Reason` (`http_timeout`, `http_error`, `connection_failed`); the same body, so
the same event_id. Slack waits about a minute and then five before the 2nd and 3rd retries;
`retry_delays` scales that (tests: no wait). An answer carrying `X-Slack-No-Retry: 1` stops
the retries. Over Socket Mode an unacknowledged envelope is sent again with `retry_attempt`
and `retry_reason` (specs/slack/06: `retry_reason: "timeout"`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import requests

from emulators.slack.records import Channel
from emulators.slack.webapi import SlackEmulator

__all__ = ["Delivery", "SlackDriver", "signature", "slack_headers"]

JsonObject = dict[str, Any]
EVENT_TIMEOUT = 3.0  # seconds Slack waits for an event's HTTP 2xx (or a Socket Mode ack)
EVENT_RETRIES = 3
SLACK_RETRY_DELAYS = (0.0, 60.0, 300.0)  # before retries 1, 2, 3: "nearly immediately", 1, 5 min


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver an event: its retry number (0: the first) and what came back."""

    retry: int
    reason: str | None  # the X-Slack-Retry-Reason sent with it (None on the first attempt)
    status: int | None  # the HTTP status (None: no answer within the time, or no connection)
    outcome: str  # "ok", or the reason the next attempt will give


def signature(signing_secret: str, timestamp: int | str, body: bytes) -> str:
    """Return Slack's X-Slack-Signature for a body sent at `timestamp` (epoch seconds)."""
    base = b"v0:" + str(timestamp).encode("ascii") + b":" + body
    digest = hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return f"v0={digest}"


def slack_headers(
    *,
    timestamp: int,
    signature: str | None,
    content_type: str = "application/x-www-form-urlencoded",
) -> dict[str, str]:
    """Return the headers Slack sends with a body at `timestamp`, with `signature` (None or ""
    sends none)."""
    headers = {
        "Content-Type": content_type,
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        "X-Slack-Request-Timestamp": str(timestamp),
    }
    if signature:
        headers["X-Slack-Signature"] = signature
    return headers


def _channel_name(channel: Channel | None, channel_id: str) -> str:
    if channel is None:
        return channel_id.lower()
    if channel.is_im:
        return "directmessage"
    return channel.name


def _find_element(blocks: list[JsonObject], action_id: str) -> tuple[str, JsonObject | None]:
    """Return (block_id, element) of the interactive element with `action_id` in `blocks`."""
    for block in blocks:
        candidates = [block.get("accessory"), block.get("element"), *(block.get("elements") or [])]
        for element in candidates:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return str(block.get("block_id", "")), element
    return "", None


def _state_values(values: Mapping[str, Any]) -> JsonObject:
    """Return view.state.values; plain strings become plain_text_input values."""
    state: JsonObject = {}
    for block_id, actions in values.items():
        state[block_id] = {}
        for action_id, value in dict(actions).items():
            if isinstance(value, dict):
                state[block_id][action_id] = value
            else:
                state[block_id][action_id] = {"type": "plain_text_input", "value": value}
    return state


class SlackDriver:
    """Sends correctly signed Slack requests to the bot's HTTP endpoint."""

    def __init__(
        self,
        bot_url: str,
        signing_secret: str,
        emulator: SlackEmulator,
        *,
        command: str = "/cv",
        verification_token: str = "emulator-verification-token",
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bot_url = bot_url
        self.emulator = emulator
        self.slash_command = command
        self.verification_token = verification_token
        self.timeout = timeout
        self._signing_secret = signing_secret
        self._clock = clock
        self._views = 0

    def __repr__(self) -> str:
        # The signing secret stays out of reprs and tracebacks.
        return f"SlackDriver(bot_url={self.bot_url!r}, command={self.slash_command!r})"

    # -- payloads --------------------------------------------------------------------------

    def _user(self, user_id: str) -> JsonObject:
        user = self.emulator.user(user_id)
        name = user.name if user is not None else user_id.lower()
        return {"id": user_id, "username": name, "name": name, "team_id": self.emulator.team_id}

    def _team(self) -> JsonObject:
        team: JsonObject = {"id": self.emulator.team_id, "domain": self.emulator.team_domain}
        if self.emulator.enterprise_id:
            # Enterprise Grid (specs/slack/03 and 05): the team names its organisation.
            team["enterprise_id"] = self.emulator.enterprise_id
            team["enterprise_name"] = self.emulator.enterprise_name
        return team

    def _enterprise(self) -> JsonObject | None:
        """Return the payload's `enterprise` object: None outside Enterprise Grid."""
        if not self.emulator.enterprise_id:
            return None
        return {"id": self.emulator.enterprise_id, "name": self.emulator.enterprise_name}

    def command_form(self, user_id: str, channel_id: str, text: str) -> dict[str, str]:
        """Return the form fields of a slash command, in Slack's order (fresh trigger, URL)."""
        user = self._user(user_id)
        channel = self.emulator.channel(channel_id)
        form = {
            "token": self.verification_token,
            "team_id": self.emulator.team_id,
            "team_domain": self.emulator.team_domain,
            "channel_id": channel_id,
            "channel_name": _channel_name(channel, channel_id),
            "user_id": user_id,
            "user_name": str(user["name"]),
            "command": self.slash_command,
            "text": text,
        }
        if self.emulator.enterprise_id:
            # Enterprise Grid (specs/slack/02: user W111, enterprise_id after text).
            form["enterprise_id"] = self.emulator.enterprise_id
            form["enterprise_name"] = self.emulator.enterprise_name
        form.update(
            {
                "api_app_id": self.emulator.app_id,
                "is_enterprise_install": "false",
                "response_url": self.emulator.response_url(channel_id, user_id),
                "trigger_id": self.emulator.new_trigger_id(user_id),
            }
        )
        return form

    def block_actions_payload(
        self, user_id: str, channel_id: str, message_ts: str, action_id: str, value: str
    ) -> JsonObject:
        """Return the block_actions payload of a button click on a message the emulator holds.

        Raises LookupError when no message or ephemeral message has that ts.
        """
        message = self.emulator.message(channel_id, message_ts)
        ephemeral = None if message is not None else self.emulator.ephemeral(message_ts)
        if message is None and ephemeral is None:
            raise LookupError(f"no message {message_ts} in {channel_id}")
        blocks = message.blocks if message is not None else ephemeral.blocks if ephemeral else []
        block_id, element = _find_element(blocks, action_id)
        action: JsonObject = {"action_id": action_id, "block_id": block_id or "actions"}
        if element is not None and "text" in element:
            action["text"] = element["text"]
        action.update({"value": value, "type": "button", "action_ts": f"{self._clock():.6f}"})
        if element is not None and "style" in element:
            action["style"] = element["style"]
        container: JsonObject = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": message is None,
        }
        thread_ts = message.thread_ts if message is not None else None
        if thread_ts and thread_ts != message_ts:
            container["thread_ts"] = thread_ts
        payload: JsonObject = {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": self.emulator.app_id,
            "token": self.verification_token,
            "container": container,
            "trigger_id": self.emulator.new_trigger_id(user_id),
            "team": self._team(),
            "enterprise": self._enterprise(),
            "is_enterprise_install": False,
            "channel": {
                "id": channel_id,
                "name": _channel_name(self.emulator.channel(channel_id), channel_id),
            },
        }
        if message is not None:
            # Slack sends the message itself only for non-ephemeral messages.
            shown: JsonObject = {
                "bot_id": self.emulator.bot_id,
                "type": "message",
                "text": message.text,
                "user": message.user,
                "ts": message.ts,
                "app_id": self.emulator.app_id,
                "blocks": message.blocks,
                "team": self.emulator.team_id,
            }
            if thread_ts and thread_ts != message_ts:
                shown["thread_ts"] = thread_ts
            payload["message"] = shown
        payload["state"] = {"values": {}}
        payload["response_url"] = self.emulator.response_url(
            channel_id, user_id, message_ts=message_ts, ephemeral=message is None
        )
        payload["actions"] = [action]
        return payload

    def view_submission_payload(
        self,
        user_id: str,
        callback_id: str,
        private_metadata: str,
        values: Mapping[str, Any],
    ) -> JsonObject:
        """Return the view_submission payload for the user's latest modal with `callback_id`.

        `values` is view.state.values ({block_id: {action_id: {...}}}); a plain string value
        stands for a plain_text_input's value. Without such an opened modal, a minimal one
        is described.
        """
        opened = [v for v in self.emulator.views(user_id) if v.callback_id == callback_id]
        if opened:
            view = dict(opened[-1].view)
        else:
            self._views += 1
            view_id = f"V0DRIVER{self._views:04d}"
            view = {
                "id": view_id,
                "team_id": self.emulator.team_id,
                "type": "modal",
                "blocks": [],
                "callback_id": callback_id,
                "hash": f"{int(self._clock())}.driver",
                "title": {"type": "plain_text", "text": "Modal"},
                "clear_on_close": False,
                "notify_on_close": False,
                "close": None,
                "submit": {"type": "plain_text", "text": "Submit"},
                "previous_view_id": None,
                "root_view_id": view_id,
                "app_id": self.emulator.app_id,
                "external_id": "",
                "app_installed_team_id": self.emulator.team_id,
                "bot_id": self.emulator.bot_id,
            }
        view["private_metadata"] = private_metadata
        view["callback_id"] = callback_id
        view["state"] = {"values": _state_values(values)}
        return {
            "type": "view_submission",
            "team": self._team(),
            "user": self._user(user_id),
            "api_app_id": self.emulator.app_id,
            "token": self.verification_token,
            "trigger_id": self.emulator.new_trigger_id(user_id),
            "view": view,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": self._enterprise(),
        }

    def event_body(self, event: Mapping[str, Any]) -> JsonObject:
        """Return an Events API `event_callback` body wrapping `event`, with a new event_id."""
        now = self._clock()
        body: JsonObject = {
            "token": self.verification_token,
            "team_id": self.emulator.team_id,
            "api_app_id": self.emulator.app_id,
            "event": dict(event),
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(now),
            "authorizations": [
                {
                    "enterprise_id": self.emulator.enterprise_id,
                    "team_id": self.emulator.team_id,
                    "user_id": self.emulator.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }
        if self.emulator.enterprise_id:
            body["enterprise_id"] = self.emulator.enterprise_id
        return body

    def home_opened_body(self, user_id: str, tab: str = "home") -> JsonObject:
        """Return the event_callback of `user_id` opening the app's `tab` (home or messages).

        The event carries the Home tab's current view once one was published (app_home_opened
        reference); `channel` is the app's DM with the person.
        """
        event: JsonObject = {
            "type": "app_home_opened",
            "user": user_id,
            "channel": self.emulator.app_dm(user_id),
            "tab": tab,
            "event_ts": f"{self._clock():.6f}",
        }
        current = self.emulator.home(user_id)
        if current is not None and tab == "home":
            event["view"] = current.view
        return self.event_body(event)

    def post_event(
        self,
        body: Mapping[str, Any],
        *,
        retry: int = 0,
        reason: str | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        """POST one delivery of an event (JSON, signed), as retry `retry` when > 0."""
        raw = json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers = self.headers(raw, content_type="application/json")
        if retry:
            headers["X-Slack-Retry-Num"] = str(retry)
            headers["X-Slack-Retry-Reason"] = reason or "http_error"
        return requests.post(
            self.bot_url, data=raw, headers=headers, timeout=timeout or self.timeout
        )

    def deliver_event(
        self,
        body: Mapping[str, Any],
        *,
        answer_within: float = EVENT_TIMEOUT,
        retry_delays: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> list[Delivery]:
        """Deliver an event as Slack does, retrying until a 2xx; return every attempt.

        `retry_delays`: the waits before retries 1 to 3 (Slack: SLACK_RETRY_DELAYS).
        """
        attempts: list[Delivery] = []
        reason: str | None = None
        for retry in range(EVENT_RETRIES + 1):
            if retry:
                time.sleep(retry_delays[retry - 1])
            try:
                response = self.post_event(body, retry=retry, reason=reason, timeout=answer_within)
            except requests.Timeout:
                attempts.append(Delivery(retry, reason, None, "http_timeout"))
                reason = "http_timeout"
                continue
            except requests.ConnectionError:
                attempts.append(Delivery(retry, reason, None, "connection_failed"))
                reason = "connection_failed"
                continue
            if 200 <= response.status_code < 300:
                attempts.append(Delivery(retry, reason, response.status_code, "ok"))
                break
            attempts.append(Delivery(retry, reason, response.status_code, "http_error"))
            if response.headers.get("X-Slack-No-Retry") == "1":
                break
            reason = "http_error"
        return attempts

    def home_opened(self, user_id: str, tab: str = "home") -> list[Delivery]:
        """Deliver `user_id` opening the app's Home tab (with Slack's retries); the attempts."""
        return self.deliver_event(self.home_opened_body(user_id, tab))

    # -- Socket Mode -----------------------------------------------------------------------

    def command_envelope(self, user_id: str, channel_id: str, text: str) -> JsonObject:
        """Return the Socket Mode envelope of a slash command (accepts a response payload)."""
        return {
            "envelope_id": str(uuid.uuid4()),
            "payload": self.command_form(user_id, channel_id, text),
            "type": "slash_commands",
            "accepts_response_payload": True,
        }

    @staticmethod
    def interactive_envelope(payload: Mapping[str, Any]) -> JsonObject:
        """Return the Socket Mode envelope of an interactive payload (click, submission)."""
        return {
            "envelope_id": str(uuid.uuid4()),
            "payload": dict(payload),
            "type": "interactive",
            "accepts_response_payload": payload.get("type") == "view_submission",
        }

    @staticmethod
    def events_envelope(
        body: Mapping[str, Any], *, retry_attempt: int = 0, retry_reason: str = ""
    ) -> JsonObject:
        """Return the Socket Mode envelope of an Events API body (specs/slack/06)."""
        return {
            "envelope_id": str(uuid.uuid4()),
            "payload": dict(body),
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": retry_reason,
        }

    def socket_event(self, body: Mapping[str, Any]) -> list[Delivery]:
        """Deliver an event over Socket Mode, sending it again (up to 3 times, `retry_attempt`,
        `retry_reason: timeout`) while no ack comes within 3 s; return every attempt."""
        attempts: list[Delivery] = []
        reason = ""
        for retry in range(EVENT_RETRIES + 1):
            envelope = self.events_envelope(body, retry_attempt=retry, retry_reason=reason)
            envelope_id = self.emulator.socket_mode.send(envelope, timeout=self.timeout)
            acked = self.emulator.socket_mode.ack(envelope_id, timeout=EVENT_TIMEOUT)
            if acked is not None:
                attempts.append(Delivery(retry, reason or None, 200, "ok"))
                break
            attempts.append(Delivery(retry, reason or None, None, "timeout"))
            reason = "timeout"
        return attempts

    def socket_envelope(self, envelope: Mapping[str, Any]) -> JsonObject:
        """Push an envelope over Socket Mode; return the ack's payload ({} when it has none).

        Raises TimeoutError when the bot does not ack within the driver's timeout.
        """
        envelope_id = self.emulator.socket_mode.send(envelope, timeout=self.timeout)
        ack = self.emulator.socket_mode.ack(envelope_id, timeout=self.timeout)
        if ack is None:
            raise TimeoutError(f"no ack for envelope {envelope_id}")
        payload = ack.get("payload")
        return dict(payload) if isinstance(payload, dict) else {}

    def socket_command(self, user_id: str, channel_id: str, text: str) -> JsonObject:
        """Send a slash command over Socket Mode; return the ack payload (the bot's reply).

        What it shows the user is recorded in the emulator, as for `command()`.
        """
        payload = self.socket_envelope(self.command_envelope(user_id, channel_id, text))
        if payload:
            body = json.dumps(payload).encode("utf-8")
            self.emulator.record_command_ack(channel_id, user_id, body)
        return payload

    def socket_click(
        self, user_id: str, channel_id: str, message_ts: str, action_id: str, value: str
    ) -> JsonObject:
        """Send a button click over Socket Mode; return the ack payload ({} for a plain ack)."""
        payload = self.block_actions_payload(user_id, channel_id, message_ts, action_id, value)
        return self.socket_envelope(self.interactive_envelope(payload))

    def socket_submit_view(
        self, user_id: str, callback_id: str, private_metadata: str, values: Mapping[str, Any]
    ) -> JsonObject:
        """Send a modal submission over Socket Mode; return the ack payload (response_action)."""
        payload = self.view_submission_payload(user_id, callback_id, private_metadata, values)
        return self.socket_envelope(self.interactive_envelope(payload))

    # -- sending ---------------------------------------------------------------------------

    def command(
        self, user_id: str, channel_id: str, text: str, *, timestamp: int | None = None
    ) -> requests.Response:
        """Send a slash command; return the bot's HTTP response.

        What an acknowledgement body shows the user is recorded in the emulator
        (see SlackEmulator.record_command_ack).
        """
        body = urlencode(self.command_form(user_id, channel_id, text)).encode("ascii")
        response = self.post(body, timestamp=timestamp)
        if response.status_code == 200:
            self.emulator.record_command_ack(channel_id, user_id, response.content)
        return response

    def click(
        self, user_id: str, channel_id: str, message_ts: str, action_id: str, value: str
    ) -> requests.Response:
        """Send a button click (block_actions) on a message; return the bot's HTTP response."""
        payload = self.block_actions_payload(user_id, channel_id, message_ts, action_id, value)
        return self.post(self.interactive_body(payload))

    def submit_view(
        self, user_id: str, callback_id: str, private_metadata: str, values: Mapping[str, Any]
    ) -> requests.Response:
        """Send a modal submission (view_submission); return the bot's HTTP response."""
        payload = self.view_submission_payload(user_id, callback_id, private_metadata, values)
        return self.post(self.interactive_body(payload))

    @staticmethod
    def interactive_body(payload: Mapping[str, Any]) -> bytes:
        """Return an interactive request body: payload=<url-encoded compact JSON>."""
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        return urlencode({"payload": text}).encode("ascii")

    def post(
        self,
        body: bytes,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        content_type: str = "application/x-www-form-urlencoded",
    ) -> requests.Response:
        """POST `body` to the bot, signed unless `signature` is given ("" sends no signature)."""
        headers = self.headers(
            body, timestamp=timestamp, signature=signature, content_type=content_type
        )
        return requests.post(self.bot_url, data=body, headers=headers, timeout=self.timeout)

    def headers(
        self,
        body: bytes,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        content_type: str = "application/x-www-form-urlencoded",
    ) -> dict[str, str]:
        """Return the headers Slack sends with `body` (see `post`), signed now by default."""
        sent_at = int(self._clock()) if timestamp is None else timestamp
        if signature is None:
            signature = self.sign(body, sent_at)
        return slack_headers(timestamp=sent_at, signature=signature, content_type=content_type)

    @property
    def signing_secret(self) -> str:
        """Return the secret this driver signs with (for a load generator of its own)."""
        return self._signing_secret

    def sign(self, body: bytes, timestamp: int | str) -> str:
        """Return the signature Slack would send for `body` at `timestamp`."""
        return signature(self._signing_secret, timestamp, body)
