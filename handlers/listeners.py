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

from bot.service import Reply, Service
from handlers import blocks

log = logging.getLogger(__name__)

_MENTION = re.compile(r"<@[UW][A-Z0-9]+>")


def reply_text(text: str) -> str:
    """Return service text safe for mrkdwn, keeping only the bot's own user mentions."""
    parts = _MENTION.split(text)
    mentions = _MENTION.findall(text)
    out = [blocks.escape(parts[0])]
    for mention, part in zip(mentions, parts[1:], strict=True):
        out.extend([mention, blocks.escape(part)])
    return "".join(out)


def _answer(reply: Reply) -> dict[str, Any]:
    return {
        "text": reply_text(reply.text),
        "response_type": "in_channel" if reply.public else "ephemeral",
    }


def register(app: App, service: Service, *, command: str) -> None:
    """Attach the slash command, the buttons and the rejection dialog to `app`."""

    @app.command(command)
    def on_command(ack: Ack, body: dict[str, Any]) -> None:
        reply = service.handle_command(
            str(body.get("user_id", "")), str(body.get("channel_id", "")), str(body.get("text", ""))
        )
        ack(**_answer(reply))

    def _decide(body: dict[str, Any]) -> tuple[str, str, str]:
        action = (body.get("actions") or [{}])[0]
        user = str((body.get("user") or {}).get("id", ""))
        channel = str((body.get("channel") or {}).get("id", ""))
        return user, channel, str(action.get("value", ""))

    @app.action("request.approve")
    def on_approve(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        user, _, request_id = _decide(body)
        respond(replace_original=False, **_answer(service.approve(user, request_id)))

    @app.action("request.cancel")
    def on_cancel(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        user, _, request_id = _decide(body)
        respond(replace_original=False, **_answer(service.cancel(user, request_id)))

    @app.action("request.reject")
    def on_reject(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        user, channel, request_id = _decide(body)
        refusal = service.check_reject(user, request_id)
        if refusal is not None:
            respond(replace_original=False, **_answer(refusal))
            return
        client.views_open(
            trigger_id=body["trigger_id"], view=blocks.reject_modal(request_id, channel)
        )

    @app.view("request.reject_reason")
    def on_reject_reason(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        view = body.get("view") or {}
        values = (view.get("state") or {}).get("values") or {}
        reason = str(((values.get("reason") or {}).get("value") or {}).get("value") or "").strip()
        if not reason:
            ack(response_action="errors", errors={"reason": "Give a reason for the rejection."})
            return
        ack()
        request_id, _, channel = str(view.get("private_metadata", "")).partition("|")
        user = str((body.get("user") or {}).get("id", ""))
        reply = service.reject(user, request_id, reason)
        if channel:
            client.chat_postEphemeral(channel=channel, user=user, text=reply_text(reply.text))

    @app.error
    def on_error(error: Exception, body: dict[str, Any]) -> BoltResponse:
        log.error("unhandled error in a listener", exc_info=error)
        return BoltResponse(status=500, body="")
