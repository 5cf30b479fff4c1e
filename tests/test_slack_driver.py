"""The Slack driver: signed requests shaped like Slack's, accepted by a real Bolt app."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qsl, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from slack_bolt import Ack, App, Respond
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.request.internals import parse_body
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier

from emulators.slack.driver import SlackDriver, signature
from emulators.slack.webapi import SlackEmulator
from tests.test_slack_emulator import dialog

SPECS = Path("/work/shared/specs/slack")
TOKEN = "xoxb-emulator-bot-token"
SECRET = "driver-test-signing-secret"


def _spec(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SPECS / name).read_text())
    return data


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Bot:
    """A minimal Bolt app behind a threaded WSGI server, recording what reached it."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    submissions: list[dict[str, Any]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


def _announcement(ts_text: str = "Request R-1") -> tuple[str, list[dict[str, Any]]]:
    return ts_text, [
        {"type": "section", "text": {"type": "mrkdwn", "text": ts_text}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": "request.approve",
                    "value": "R-1",
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Approve"},
                },
                {
                    "type": "button",
                    "action_id": "request.reject",
                    "value": "R-1",
                    "text": {"type": "plain_text", "text": "Reject"},
                },
            ],
        },
    ]


@pytest.fixture
def emulator() -> Iterator[SlackEmulator]:
    with SlackEmulator() as emulator:
        emulator.add_user("U1", "alice")
        emulator.add_user("U2", "bob", is_admin=True)
        emulator.add_channel("C1", "dsr-requests")
        emulator.add_channel("D1", "U1", is_im=True, user="U1")
        yield emulator
        assert emulator.internal_errors == []


@pytest.fixture
def bot(emulator: SlackEmulator) -> Iterator[Bot]:
    client = WebClient(token=TOKEN, base_url=emulator.api_url)
    app = App(client=client, signing_secret=SECRET)
    server = make_server(
        "127.0.0.1", 0, SlackRequestHandler(app), _ThreadingWSGIServer, _QuietHandler
    )
    bot = Bot(url=f"http://127.0.0.1:{server.server_port}/slack/events")

    @app.middleware
    def capture(body: dict[str, Any], next: Any) -> Any:
        bot.bodies.append(body)
        return next()

    @app.command("/cv")
    def on_command(ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        ack(text=f"queued: {command['text']}")
        respond(text=f"<@{command['user_id']}> asked", response_type="in_channel")
        bot.done.set()

    @app.action("request.approve")
    def on_approve(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        respond(replace_original=True, text=f"approved by {body['user']['id']}")
        bot.done.set()

    @app.action("request.reject")
    def on_reject(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        client.views_open(trigger_id=body["trigger_id"], view=dialog())
        bot.done.set()

    @app.view("reject")
    def on_submit(ack: Ack, view: dict[str, Any]) -> None:
        ack()
        bot.submissions.append(view)
        bot.done.set()

    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield bot
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def driver(bot: Bot, emulator: SlackEmulator) -> SlackDriver:
    return SlackDriver(bot.url, SECRET, emulator)


def _post_announcement(emulator: SlackEmulator) -> str:
    text, blocks = _announcement()
    client = WebClient(token=TOKEN, base_url=emulator.api_url)
    return str(client.chat_postMessage(channel="C1", text=text, blocks=blocks)["ts"])


# -- signing -----------------------------------------------------------------------------------


def test_driver_signature_reproduces_slacks_official_vector() -> None:
    vector = _spec("01_slash_command_signing_vector.json")
    headers = vector["headers"]
    raw = vector["raw_body"].encode()
    assert (
        signature(vector["signing_secret"], headers["X-Slack-Request-Timestamp"], raw)
        == headers["X-Slack-Signature"]
    )
    assert (
        signature(vector["signing_secret"], int(headers["X-Slack-Request-Timestamp"]), raw)
        == headers["X-Slack-Signature"]
    )
    assert (
        signature("another-secret", headers["X-Slack-Request-Timestamp"], raw)
        != (headers["X-Slack-Signature"])
    )


def test_driver_form_encoding_matches_slacks_bytes() -> None:
    # The driver encodes form fields with urlencode; Slack's recorded body is byte-identical.
    vector = _spec("01_slash_command_signing_vector.json")
    assert urlencode(vector["parsed_form_fields"]) == vector["raw_body"]
    fixture = _spec("02_slash_command_bolt_fixture.json")
    assert urlencode(fixture["parsed_form_fields"]) == fixture["raw_body"]


def test_driver_sign_agrees_with_slack_sdk_verifier(emulator: SlackEmulator) -> None:
    driver = SlackDriver("http://127.0.0.1:9/slack/events", SECRET, emulator)
    body = urlencode(driver.command_form("U1", "C1", "status R-1")).encode()
    stamp = int(time.time())
    verifier = SignatureVerifier(SECRET)
    assert driver.sign(body, stamp) == verifier.generate_signature(timestamp=str(stamp), body=body)
    assert verifier.is_valid(body, str(stamp), driver.sign(body, stamp))


def test_driver_repr_hides_the_signing_secret(emulator: SlackEmulator) -> None:
    driver = SlackDriver("http://127.0.0.1:9/slack/events", SECRET, emulator)
    assert SECRET not in repr(driver)


# -- payload shapes ----------------------------------------------------------------------------


def test_driver_command_form_has_slacks_fields_in_slacks_order(emulator: SlackEmulator) -> None:
    driver = SlackDriver("http://127.0.0.1:9/slack/events", SECRET, emulator)
    form = driver.command_form("U1", "C1", "export project 1")
    fixture = _spec("02_slash_command_bolt_fixture.json")["parsed_form_fields"]
    # The fixture is an Enterprise Grid install; a plain workspace sends no enterprise_* fields
    # but (like today's Slack) api_app_id and is_enterprise_install.
    expected = (set(fixture) - {"enterprise_id", "enterprise_name"}) | {
        "api_app_id",
        "is_enterprise_install",
    }
    assert set(form) == expected
    vector_order = list(_spec("01_slash_command_signing_vector.json")["parsed_form_fields"])
    assert [k for k in form if k in vector_order] == vector_order
    assert {k: form[k] for k in form if k not in ("response_url", "trigger_id")} == {
        "token": "emulator-verification-token",
        "team_id": "T0EMULATOR",
        "team_domain": "emulator",
        "channel_id": "C1",
        "channel_name": "dsr-requests",
        "user_id": "U1",
        "user_name": "alice",
        "command": "/cv",
        "text": "export project 1",
        "api_app_id": "A0EMULATOR",
        "is_enterprise_install": "false",
    }
    assert form["response_url"].startswith(emulator.base_url + "/commands/T0EMULATOR/")
    assert driver.command_form("U1", "D1", "x")["channel_name"] == "directmessage"


def test_driver_command_body_parses_in_bolt_like_the_fixture(emulator: SlackEmulator) -> None:
    driver = SlackDriver("http://127.0.0.1:9/slack/events", SECRET, emulator)
    body = urlencode(driver.command_form("U1", "C1", 'delete image 1 reason="a&b=c"'))
    parsed = parse_body(body, "application/x-www-form-urlencoded")
    fixture = _spec("02_slash_command_bolt_fixture.json")
    parsed_fixture = parse_body(fixture["raw_body"], "application/x-www-form-urlencoded")
    assert parsed_fixture == fixture["parsed_form_fields"]
    assert set(parsed) - set(parsed_fixture) == {"api_app_id", "is_enterprise_install"}
    assert parsed["text"] == 'delete image 1 reason="a&b=c"'


def _keys(data: dict[str, Any]) -> set[str]:
    return set(data)


def test_driver_block_actions_payload_matches_the_fixtures(emulator: SlackEmulator) -> None:
    driver = SlackDriver("http://127.0.0.1:9/slack/events", SECRET, emulator)
    ts = _post_announcement(emulator)
    payload = driver.block_actions_payload("U2", "C1", ts, "request.approve", "R-1")
    plain = _spec("03_block_actions_bolt_fixture.json")["payload"]
    with_message = _spec("04_block_actions_with_message_bolt_fixture.json")["payload"]
    assert _keys(with_message) <= _keys(payload) <= _keys(plain) | _keys(with_message)
    assert _keys(payload["user"]) == _keys(plain["user"])
    assert _keys(payload["team"]) <= _keys(plain["team"])
    assert _keys(payload["channel"]) == _keys(plain["channel"])
    assert _keys(payload["container"]) == _keys(with_message["container"])
    assert _keys(payload["message"]) == _keys(with_message["message"])
    (action,) = payload["actions"]
    assert _keys(action) - {"style"} == _keys(with_message["actions"][0])
    message = emulator.message("C1", ts)
    assert message is not None
    assert payload["container"] == {
        "type": "message",
        "message_ts": ts,
        "channel_id": "C1",
        "is_ephemeral": False,
    }
    assert payload["message"]["blocks"] == message.blocks
    assert (payload["message"]["ts"], payload["message"]["text"]) == (ts, "Request R-1")
    assert {k: action[k] for k in ("action_id", "block_id", "value", "type", "style")} == {
        "action_id": "request.approve",
        "block_id": message.blocks[1]["block_id"],
        "value": "R-1",
        "type": "button",
        "style": "primary",
    }
    assert action["text"] == {"type": "plain_text", "text": "Approve"}
    assert payload["user"]["id"] == "U2"
    assert payload["response_url"].startswith(emulator.base_url + "/actions/T0EMULATOR/")
    wire = SlackDriver.interactive_body(payload).decode()
    assert list(dict(parse_qsl(wire))) == ["payload"]
    assert parse_body(wire, "application/x-www-form-urlencoded") == payload


def test_driver_block_actions_on_an_ephemeral_message_carry_no_message(
    emulator: SlackEmulator,
) -> None:
    driver = SlackDriver("http://127.0.0.1:9/slack/events", SECRET, emulator)
    client = WebClient(token=TOKEN, base_url=emulator.api_url)
    text, blocks = _announcement()
    ts = client.chat_postEphemeral(channel="C1", user="U1", text=text, blocks=blocks)
    payload = driver.block_actions_payload("U1", "C1", ts["message_ts"], "request.reject", "R-1")
    assert "message" not in payload
    assert payload["container"]["is_ephemeral"] is True
    fixture = _spec("03_block_actions_bolt_fixture.json")["payload"]
    assert _keys(fixture) <= _keys(payload)


def test_driver_click_on_an_unknown_message_is_refused(emulator: SlackEmulator) -> None:
    driver = SlackDriver("http://127.0.0.1:9/slack/events", SECRET, emulator)
    with pytest.raises(LookupError):
        driver.block_actions_payload("U1", "C1", "1.000001", "request.approve", "R-1")


def test_driver_view_submission_payload_matches_the_fixture(emulator: SlackEmulator) -> None:
    driver = SlackDriver("http://127.0.0.1:9/slack/events", SECRET, emulator)
    client = WebClient(token=TOKEN, base_url=emulator.api_url)
    opened = client.views_open(trigger_id=emulator.new_trigger_id("U2"), view=dialog())["view"]
    payload = driver.view_submission_payload(
        "U2", "reject", "R-1|C1", {"reason": {"text": "duplicate request"}}
    )
    fixture = _spec("05_view_submission_bolt_fixture.json")["payload"]
    assert (
        _keys(fixture) <= _keys(payload) <= _keys(fixture) | {"is_enterprise_install", "enterprise"}
    )
    assert _keys(payload["view"]) == _keys(fixture["view"])
    assert payload["view"]["id"] == opened["id"]
    assert payload["view"]["blocks"] == opened["blocks"]
    assert payload["view"]["state"] == {
        "values": {"reason": {"text": {"type": "plain_text_input", "value": "duplicate request"}}}
    }
    assert (payload["view"]["callback_id"], payload["view"]["private_metadata"]) == (
        "reject",
        "R-1|C1",
    )


def test_driver_view_submission_without_an_opened_modal_still_has_the_shape(
    emulator: SlackEmulator,
) -> None:
    driver = SlackDriver("http://127.0.0.1:9/slack/events", SECRET, emulator)
    payload = driver.view_submission_payload("U1", "reject", "m", {})
    fixture = _spec("05_view_submission_bolt_fixture.json")["payload"]
    assert _keys(payload["view"]) == _keys(fixture["view"])


# -- through a real Bolt app -------------------------------------------------------------------


def test_driver_command_reaches_bolt_and_the_replies_reach_the_emulator(
    driver: SlackDriver, bot: Bot, emulator: SlackEmulator
) -> None:
    response = driver.command("U1", "C1", "status R-1")
    assert response.status_code == 200
    assert response.text == "queued: status R-1"  # Bolt acks a bare text as plain text
    assert bot.done.wait(10)
    assert emulator.wait_for(lambda: len(emulator.messages("C1")) == 1)
    (body,) = bot.bodies
    assert (body["command"], body["text"], body["user_id"], body["channel_id"]) == (
        "/cv",
        "status R-1",
        "U1",
        "C1",
    )
    # The ack body is what Slack shows the user; respond(in_channel) posts for everyone.
    assert [(e.text, e.via) for e in emulator.ephemerals("C1", "U1")] == [
        ("queued: status R-1", "ack")
    ]
    assert [(m.text, m.via) for m in emulator.messages("C1")] == [("<@U1> asked", "response_url")]


def test_driver_click_replaces_the_message_through_response_url(
    driver: SlackDriver, bot: Bot, emulator: SlackEmulator
) -> None:
    ts = _post_announcement(emulator)
    response = driver.click("U2", "C1", ts, "request.approve", "R-1")
    assert response.status_code == 200
    assert bot.done.wait(10)
    assert emulator.wait_for(lambda: (emulator.message("C1", ts) or _never()).updates == 1)
    message = emulator.message("C1", ts)
    assert message is not None
    assert message.text == "approved by U2"
    (body,) = bot.bodies
    assert (body["type"], body["actions"][0]["value"]) == ("block_actions", "R-1")


def _never() -> Any:
    raise AssertionError("the message vanished")


def test_driver_click_trigger_opens_a_modal_and_submit_reaches_bolt(
    driver: SlackDriver, bot: Bot, emulator: SlackEmulator
) -> None:
    ts = _post_announcement(emulator)
    assert driver.click("U2", "C1", ts, "request.reject", "R-1").status_code == 200
    assert bot.done.wait(10)
    assert emulator.wait_for(lambda: len(emulator.views("U2")) == 1)
    (opened,) = emulator.views("U2")
    assert opened.trigger_id == bot.bodies[0]["trigger_id"]
    bot.done.clear()
    response = driver.submit_view("U2", "reject", "R-1|C1", {"reason": {"text": "duplicate"}})
    assert response.status_code == 200
    assert bot.done.wait(10)
    (view,) = bot.submissions
    assert view["id"] == opened.id
    assert view["private_metadata"] == "R-1|C1"
    assert view["state"]["values"]["reason"]["text"]["value"] == "duplicate"


@pytest.mark.parametrize(
    ("how", "status"),
    [("stale", 401), ("future", 401), ("wrong", 401), ("missing", 401), ("fresh", 200)],
)
def test_driver_post_forges_requests_bolt_refuses(
    driver: SlackDriver, bot: Bot, emulator: SlackEmulator, how: str, status: int
) -> None:
    body = urlencode(driver.command_form("U1", "C1", "help")).encode()
    now = int(time.time())
    if how == "stale":
        response = driver.post(body, timestamp=now - 301)
    elif how == "future":
        # Well past the 5 minutes, so that a slow machine cannot bring it back within them.
        response = driver.post(body, timestamp=now + 420)
    elif how == "wrong":
        response = driver.post(body, signature=signature("not-the-secret", now, body))
    elif how == "missing":
        response = driver.post(body, signature="")
    else:
        response = driver.post(body)
    assert response.status_code == status
    assert len(bot.bodies) == (1 if status == 200 else 0)


def test_driver_command_at_a_given_timestamp_is_signed_for_it(
    driver: SlackDriver, bot: Bot
) -> None:
    assert driver.command("U1", "C1", "help", timestamp=int(time.time()) - 200).status_code == 200
    assert driver.command("U1", "C1", "help", timestamp=int(time.time()) - 400).status_code == 401
