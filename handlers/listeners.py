"""Bolt listeners: ack, pull plain values out of the payload, call one Service method, reply.

No rule lives here: who may do what is bot.policy, what happens is bot.service. Every
listener acknowledges within Slack's 3 seconds because the service only touches SQLite and
cached Slack lookups; long work is queued for the bot's own workers.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt import Ack, App, BoltResponse, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.service import Reply, Service
from handlers import blocks

log = logging.getLogger(__name__)


def reply_text(text: str) -> str:
    """Return service text safe for mrkdwn (only the bot's own mentions), fitting one message."""
    return blocks.message_text(text)


def _answer(reply: Reply) -> dict[str, Any]:
    return {
        "text": reply_text(reply.text),
        "response_type": "in_channel" if reply.public else "ephemeral",
    }


def _obj(value: object) -> dict[str, Any]:
    """Return `value` when it is a JSON object, else an empty one (payloads are untrusted)."""
    return value if isinstance(value, dict) else {}


def _id(value: object) -> str:
    """Return the id of a payload's user/channel, which Slack sends as an object or a string."""
    return value if isinstance(value, str) else str(_obj(value).get("id") or "")


MAX_VALUE_CHARS = 40
UNKNOWN_ACTION = (
    "That button is not one this bot knows (it may come from an older version of the bot). "
    "Nothing was done. `{command} status` shows your requests."
)


def register(app: App, service: Service, *, command: str) -> None:
    """Attach the slash command, the buttons and the rejection dialog to `app`."""

    @app.command(command)
    def on_command(ack: Ack, body: dict[str, Any]) -> None:
        reply = service.handle_command(
            str(body.get("user_id", "")), str(body.get("channel_id", "")), str(body.get("text", ""))
        )
        ack(**_answer(reply))

    def _decide(body: dict[str, Any]) -> tuple[str, str, str]:
        action = _obj((body.get("actions") or [{}])[0])
        # Our buttons carry only a request id ("R-1042"); a longer value is not one of ours, and
        # the cap keeps the answer that quotes it short.
        value = str(action.get("value") or "")[:MAX_VALUE_CHARS]
        return _id(body.get("user")), _id(body.get("channel")), value

    @app.action("request.approve")
    def on_approve(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        # Decide (a SQLite transaction) before acking: an acknowledged click is a stored click.
        user, channel, request_id = _decide(body)
        reply = service.approve(user, request_id, channel)
        ack()
        _respond(body, respond, reply)

    @app.action("request.cancel")
    def on_cancel(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        user, channel, request_id = _decide(body)
        reply = service.cancel(user, request_id, channel)
        ack()
        _respond(body, respond, reply)

    @app.action("request.reject")
    def on_reject(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        user, channel, request_id = _decide(body)
        refusal = service.check_reject(user, request_id, channel)
        if refusal is not None:
            _respond(body, respond, refusal)
            return
        trigger = body.get("trigger_id")
        try:
            if not isinstance(trigger, str) or not trigger:
                raise ValueError("no trigger_id")
            client.views_open(trigger_id=trigger, view=blocks.reject_modal(request_id, channel))
        except (SlackApiError, ValueError) as exc:
            log.warning("could not open the rejection dialog: %s", type(exc).__name__)
            _respond(
                body,
                respond,
                Reply(
                    f"Slack did not open the rejection dialog; click Reject on {request_id} again."
                ),
            )

    @app.view("request.reject_reason")
    def on_reject_reason(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        view = _obj(body.get("view"))
        values = _obj(_obj(view.get("state")).get("values"))
        reason = str(_obj(_obj(values.get("reason")).get("value")).get("value") or "").strip()
        if not reason:
            ack(response_action="errors", errors={"reason": "Give a reason for the rejection."})
            return
        request_id, _, channel = str(view.get("private_metadata") or "").partition("|")
        user = _id(body.get("user"))
        reply = service.reject(user, request_id, reason, channel or None)
        ack()
        if channel:
            client.chat_postEphemeral(channel=channel, user=user, text=reply_text(reply.text))

    # Registered last: Bolt runs the first listener that matches, so these only see what the
    # ones above do not handle, and answer it instead of Bolt's bare 404.
    @app.action(re.compile(".*"))
    def on_unknown_action(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        action = _obj((body.get("actions") or [{}])[0])
        log.warning(
            "click on unknown action %r by %s",
            str(action.get("action_id"))[:80],
            _id(body.get("user")),
        )
        _respond(body, respond, Reply(UNKNOWN_ACTION.format(command=command)))

    @app.command(re.compile(".*"))
    def on_unknown_command(ack: Ack, body: dict[str, Any]) -> None:
        typed = str(body.get("command") or "")[:40]
        log.warning("slash command %r reached the bot, which is configured for %s", typed, command)
        ack(
            text=reply_text(
                f"This bot answers `{command}`, not `{typed}`: nothing was done. "
                "Ask an admin to align BOT_COMMAND with the app's manifest."
            ),
            response_type="ephemeral",
        )

    @app.error
    def on_error(error: Exception, body: dict[str, Any]) -> BoltResponse:
        log.error("unhandled error in a listener", exc_info=error)
        return BoltResponse(status=500, body="")


def _respond(body: dict[str, Any], respond: Respond, reply: Reply) -> None:
    """Answer a click ephemerally through its response_url (a click in a modal has none)."""
    if body.get("response_url"):
        respond(replace_original=False, **_answer(reply))
    else:
        log.info("no response_url to answer with: %s", reply.text[:200])
