"""Bolt listeners: ack, pull plain values out of the payload, call one Service method, reply.

Besides the slash command, the buttons and the rejection dialog, one Events API event:
`app_home_opened` on the Home tab publishes the person's dashboard (handlers.hometabs, after
the ack; a retried delivery of an event already taken does nothing: handlers.events).

No rule lives here: who may do what is bot.policy, what happens is bot.service. Every
listener acknowledges within Slack's 3 seconds: decisions run through handlers.decider, which
acks with the decision's answer when it is quick and otherwise with a holding answer, the
decision's own answer following through response_url. Listeners run in the thread that
answers Slack (`process_before_response`), so every Slack call that follows an ack goes to
the decider's follow-up threads. Long work is queued for the workers.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltRequest, BoltResponse, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.service import Reply, Service
from handlers import blocks, home
from handlers.decider import Decider
from handlers.events import SeenEvents
from handlers.hometabs import HomeTabs

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
KNOWN_ACTIONS = ("request.approve", "request.reject", "request.cancel", home.OPEN_THREAD)
HOLDING_COMMAND = (
    "Working on it: this takes longer than usual (a search across projects, or the database or"
    " Slack is slow). My answer follows here in a moment; until then this is neither recorded"
    " nor refused, so please do not type it again."
)
HOLDING_CLICK = (
    "Working on your click on {request_id}: the database or Slack is slow right now. My "
    "answer follows here in a moment; please do not click again."
)


def received_at(context: dict[str, Any]) -> float:
    """Return when the request reached the bot (monotonic): as the HTTP edge stamped it on
    arrival (handlers.wsgi), else now (Socket Mode, where Bolt's middleware and this listener
    start together; a middleware of our own to stamp it would only cost every request)."""
    stamped = context.get("received_at")
    return float(stamped) if isinstance(stamped, float) else time.monotonic()


def catch_all(known: tuple[str, ...]) -> re.Pattern[str]:
    """Return a pattern matching every id except `known`.

    Bolt runs the next matching listener when one did not ack within 3 s: the catch-alls must
    not match the bot's own commands and buttons, or they would answer "nothing was done" for
    something that may well be stored.
    """
    return re.compile("^(?!(?:" + "|".join(re.escape(k) for k in known) + ")$)")


def register(
    app: App,
    service: Service,
    *,
    command: str,
    decider: Decider,
    homes: HomeTabs,
    seen: SeenEvents | None = None,
) -> None:
    """Attach the slash command, the buttons, the rejection dialog and the App Home to `app`.

    `homes`: publishes the Home tabs (after the ack); `seen`: the Events API event ids already
    taken.
    """
    seen = seen or SeenEvents()

    @app.command(command)
    def on_command(
        ack: Ack, body: dict[str, Any], context: dict[str, Any], respond: Respond
    ) -> None:
        user, channel = str(body.get("user_id", "")), str(body.get("channel_id", ""))
        text = str(body.get("text", ""))

        def answer(reply: Reply | None) -> None:
            ack(**_answer(reply or Reply(HOLDING_COMMAND)))

        decider.run(
            received_at(context),
            lambda: service.handle_command(user, channel, text),
            answer=answer,
            late=lambda reply: _follow_up(respond, reply),
        )

    def _decide(body: dict[str, Any]) -> tuple[str, str, str]:
        action = _obj((body.get("actions") or [{}])[0])
        # Our buttons carry only a request id ("R-1042"); a longer value is not one of ours, and
        # the cap keeps the answer that quotes it short.
        value = str(action.get("value") or "")[:MAX_VALUE_CHARS]
        return _id(body.get("user")), _id(body.get("channel")), value

    def _click(
        ack: Ack,
        body: dict[str, Any],
        context: dict[str, Any],
        respond: Respond,
        decide: Callable[[str, str, str], Reply],
    ) -> None:
        # The decision (a SQLite transaction) is what the click's answer reports; the ack
        # itself shows nothing, so it never claims anything.
        user, channel, request_id = _decide(body)

        def tell(reply: Reply | None) -> None:
            _respond(body, respond, reply or Reply(HOLDING_CLICK.format(request_id=request_id)))

        decider.run(
            received_at(context),
            lambda: decide(user, request_id, channel),
            answer=lambda _: ack(),
            follow=tell,
            late=lambda reply: _respond(body, respond, reply),
        )

    @app.action("request.approve")
    def on_approve(
        ack: Ack, body: dict[str, Any], context: dict[str, Any], respond: Respond
    ) -> None:
        _click(ack, body, context, respond, service.approve)

    @app.action("request.cancel")
    def on_cancel(
        ack: Ack, body: dict[str, Any], context: dict[str, Any], respond: Respond
    ) -> None:
        _click(ack, body, context, respond, service.cancel)

    @app.action("request.reject")
    def on_reject(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        decider.after(lambda: _open_reject_dialog(body, respond, client))

    def _open_reject_dialog(body: dict[str, Any], respond: Respond, client: WebClient) -> None:
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
    def on_reject_reason(
        ack: Ack, body: dict[str, Any], context: dict[str, Any], client: WebClient
    ) -> None:
        view = _obj(body.get("view"))
        values = _obj(_obj(view.get("state")).get("values"))
        reason = str(_obj(_obj(values.get("reason")).get("value")).get("value") or "").strip()
        if not reason:
            ack(response_action="errors", errors={"reason": "Give a reason for the rejection."})
            return
        request_id, _, channel = str(view.get("private_metadata") or "").partition("|")
        user = _id(body.get("user"))

        def tell(reply: Reply) -> None:
            if channel:
                client.chat_postEphemeral(channel=channel, user=user, text=reply_text(reply.text))

        decider.run(
            received_at(context),
            lambda: service.reject(user, request_id, reason, channel or None),
            answer=lambda _: ack(),  # closes the dialog; what happened is told in the channel
            follow=lambda reply: None if reply is None else tell(reply),
            late=tell,
        )

    @app.event("app_home_opened")
    def on_home_opened(
        ack: Ack,
        body: dict[str, Any],
        event: dict[str, Any],
        request: BoltRequest,
        client: WebClient,
    ) -> None:
        ack()  # Slack's 3 seconds: the view is published after the answer
        user = _id(event.get("user"))
        if event.get("tab") != "home" or not user:
            return  # the Messages tab: nothing to show there
        event_id = str(body.get("event_id") or "")
        if event_id and not seen.first(event_id):
            log.info(
                "event %s delivered again (retry %s, %s): already taken",
                event_id[:40],
                _header(request, "x-slack-retry-num"),
                _header(request, "x-slack-retry-reason"),
            )
            return
        decider.after(lambda: homes.opened(user))

    @app.action(home.OPEN_THREAD)
    def on_open_thread(ack: Ack) -> None:
        ack()  # a link button: Slack opens the link and still sends the click, to be acked

    # Registered last: Bolt runs the first listener that matches, so these only see what the
    # ones above do not handle, and answer it instead of Bolt's bare 404.
    @app.action(catch_all(KNOWN_ACTIONS))
    def on_unknown_action(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        action = _obj((body.get("actions") or [{}])[0])
        log.warning(
            "click on unknown action %r by %s",
            str(action.get("action_id"))[:80],
            _id(body.get("user")),
        )
        decider.after(
            lambda: _respond(body, respond, Reply(UNKNOWN_ACTION.format(command=command)))
        )

    @app.command(catch_all((command,)))
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


def _header(request: BoltRequest, name: str) -> str:
    values = request.headers.get(name) or [""]
    return str(values[0])[:20]


def _follow_up(respond: Respond, reply: Reply) -> None:
    """Answer a command through its response_url (its ack went out with a holding answer)."""
    respond(**_answer(reply))


def _respond(body: dict[str, Any], respond: Respond, reply: Reply) -> None:
    """Answer a click ephemerally through its response_url (a click in a modal has none)."""
    if body.get("response_url"):
        respond(replace_original=False, **_answer(reply))
    else:
        log.info("no response_url to answer with: %s", reply.text[:200])
