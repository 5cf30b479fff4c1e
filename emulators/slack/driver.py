"""Sends the bot what Slack sends it: signed slash commands, button clicks, modal submissions.

Bodies are built field for field like the recorded Slack payloads in specs/slack/ (form fields
in Slack's order; interactive payloads as `payload=<url-encoded compact JSON>`), with ids,
names and messages taken from the `SlackEmulator`, which also issues the trigger_ids and
response_urls the bot then uses. `signature()` is pure; the driver does HTTP with requests.

In Socket Mode the same payloads travel as envelopes over the emulator's WebSocket
(`socket_command`, `socket_click`, `socket_submit_view`); bot_url and the signing secret are
then unused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import requests

from emulators.slack.records import Channel
from emulators.slack.webapi import SlackEmulator

__all__ = ["SlackDriver", "signature"]

JsonObject = dict[str, Any]


def signature(signing_secret: str, timestamp: int | str, body: bytes) -> str:
    """Return Slack's X-Slack-Signature for a body sent at `timestamp` (epoch seconds)."""
    base = b"v0:" + str(timestamp).encode("ascii") + b":" + body
    digest = hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return f"v0={digest}"


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
        headers = {
            "Content-Type": content_type,
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            "X-Slack-Request-Timestamp": str(sent_at),
        }
        if signature is None:
            headers["X-Slack-Signature"] = self.sign(body, sent_at)
        elif signature:
            headers["X-Slack-Signature"] = signature
        return headers

    def sign(self, body: bytes, timestamp: int | str) -> str:
        """Return the signature Slack would send for `body` at `timestamp`."""
        return signature(self._signing_secret, timestamp, body)
