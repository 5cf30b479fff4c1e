"""The Slack emulator's App Home: views.publish as Slack answers it, and events delivered as
Slack delivers them (signed, JSON, retried with X-Slack-Retry-Num while no 2xx comes in 3 s).

The delivery tests run the driver against a small HTTP server of their own that answers as
told (slowly, with an error, not at all), so Slack's retry rules are checked without the bot.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from emulators.slack.blockkit import MAX_HOME_BLOCKS
from emulators.slack.driver import Delivery, SlackDriver
from emulators.slack.webapi import SlackEmulator

SECRET = "home-test-signing-secret"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _home(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "home", "blocks": list(blocks)}


def _refusal(client: WebClient, **arguments: Any) -> dict[str, Any]:
    with pytest.raises(SlackApiError) as caught:
        client.views_publish(**{"user_id": "U1", "view": _home(_section("hi")), **arguments})
    data = caught.value.response.data
    assert isinstance(data, dict)
    return data


def test_emulator_views_publish_replaces_the_home_tab(
    emulator: SlackEmulator, client: WebClient
) -> None:
    first = client.views_publish(user_id="U1", view=_home(_section("one")))
    second = client.views_publish(user_id="U1", view=_home(_section("two")))
    assert first["view"]["type"] == "home"
    assert first["view"]["id"] == second["view"]["id"]  # the same tab, a new version
    assert first["view"]["hash"] != second["view"]["hash"]
    shown = emulator.home("U1")
    assert shown is not None
    assert [b["text"]["text"] for b in shown.blocks] == ["two"]
    assert all(b["block_id"] for b in shown.blocks)  # filled in as Slack stores them
    assert [p.view["blocks"][0]["text"]["text"] for p in emulator.published("U1")] == [
        "one",
        "two",
    ]
    assert emulator.home("U2") is None


def test_emulator_views_publish_takes_a_hash_only_when_current(client: WebClient) -> None:
    current = client.views_publish(user_id="U1", view=_home(_section("one")))["view"]["hash"]
    client.views_publish(user_id="U1", view=_home(_section("two")), hash=current)
    assert _refusal(client, hash=current)["error"] == "hash_conflict"  # it changed since


def test_emulator_views_publish_holds_a_home_tab_to_100_blocks(client: WebClient) -> None:
    client.views_publish(user_id="U1", view=_home(*[_section("x")] * MAX_HOME_BLOCKS))
    refused = _refusal(client, view=_home(*[_section("x")] * (MAX_HOME_BLOCKS + 1)))
    assert refused["error"] == "invalid_arguments"
    assert refused["response_metadata"]["messages"] == [
        "[ERROR] no more than 100 items allowed [json-pointer:/view/blocks]"
    ]


@pytest.mark.parametrize(
    ("view", "message"),
    [
        (
            {"type": "modal", "blocks": [_section("x")]},
            "[ERROR] must be home [json-pointer:/view/type]",
        ),
        (
            _home(_section("🙂" * 1501)),  # 3,002 UTF-16 units
            "[ERROR] must be less than 3001 characters [json-pointer:/view/blocks/0/text/text]",
        ),
        (
            _home(
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": "x"},
                    "accessory": {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open"},
                        "url": "https://x.slack.com/" + "a" * 3000,
                    },
                }
            ),
            "[ERROR] must be less than 3001 characters [json-pointer:/view/blocks/0/accessory/url]",
        ),
        (
            _home(*[_section("x" * 2500)] * 5),
            "[ERROR] the text of the view's blocks must be less than 12001 characters in all"
            " [json-pointer:/view/blocks]",
        ),
    ],
    ids=["not-home", "section-units", "button-url", "total-text"],
)
def test_emulator_views_publish_refuses_what_slack_refuses(
    client: WebClient, view: dict[str, Any], message: str
) -> None:
    refused = _refusal(client, view=view)
    assert refused["error"] == "invalid_arguments"
    assert refused["response_metadata"]["messages"] == [message]


def test_emulator_home_total_text_is_a_switch(emulator: SlackEmulator, client: WebClient) -> None:
    # Slack documents no total for views: the lenient variant lets it through.
    emulator.home_blocks_total = False
    client.views_publish(user_id="U1", view=_home(*[_section("x" * 2500)] * 5))


def test_emulator_views_publish_answers_an_unknown_user_and_missing_arguments(
    client: WebClient,
) -> None:
    assert _refusal(client, user_id="U404")["error"] == "user_not_found"
    with pytest.raises(SlackApiError) as caught:
        client.api_call("views.publish", json={"user_id": "U1"})
    assert caught.value.response["error"] == "invalid_arguments"


# -- events, as Slack delivers them ------------------------------------------------------------


class _Bot(BaseHTTPRequestHandler):
    """Answers each delivery as `plan` says: (status, seconds to wait first); records it.

    A status of 0 stands for a 500 carrying `X-Slack-No-Retry: 1`."""

    plan: list[tuple[int, float]]
    seen: list[tuple[dict[str, str], bytes]]
    release: threading.Event
    url: str

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.seen.append((dict(self.headers.items()), body))
        status, wait = self.plan.pop(0) if self.plan else (200, 0.0)
        if wait:
            self.release.wait(wait)
        self.send_response(status or 500)
        if not status:
            self.send_header("X-Slack-No-Retry", "1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bot() -> Iterator[type[_Bot]]:
    class Handler(_Bot):
        plan: list[tuple[int, float]] = []  # one class per test
        seen: list[tuple[dict[str, str], bytes]] = []
        release = threading.Event()

    handler = Handler
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/slack/events"
    try:
        yield handler
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()


def _driver(emulator: SlackEmulator, url: str) -> SlackDriver:
    return SlackDriver(url, SECRET, emulator)


def test_driver_event_is_a_signed_json_event_callback(
    emulator: SlackEmulator, bot: type[_Bot]
) -> None:
    driver = _driver(emulator, bot.url)
    assert driver.home_opened("U1") == [Delivery(0, None, 200, "ok")]
    [(headers, raw)] = bot.seen
    assert headers["Content-Type"] == "application/json"
    assert "X-Slack-Retry-Num" not in headers
    assert SignatureVerifier(SECRET).is_valid(
        raw, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    )
    body = json.loads(raw)
    assert body["type"] == "event_callback"
    assert body["event_id"].startswith("Ev")
    assert body["event"] == {
        "type": "app_home_opened",
        "user": "U1",
        "channel": emulator.app_dm("U1"),
        "tab": "home",
        "event_ts": body["event"]["event_ts"],
    }
    assert body["authorizations"][0]["user_id"] == emulator.bot_user_id


def test_driver_event_carries_the_published_view(
    emulator: SlackEmulator, client: WebClient
) -> None:
    view = client.views_publish(user_id="U1", view=_home(_section("mine")))["view"]
    driver = _driver(emulator, "http://127.0.0.1:9/unused")
    assert driver.home_opened_body("U1")["event"]["view"] == view
    assert "view" not in driver.home_opened_body("U1", tab="messages")["event"]


def test_driver_retries_an_event_answered_late_or_with_an_error(
    emulator: SlackEmulator, bot: type[_Bot]
) -> None:
    # late (no answer within the time Slack waits), then a 500, then a 200
    bot.plan = [(200, 5.0), (500, 0.0), (200, 0.0)]
    driver = _driver(emulator, bot.url)
    attempts = driver.deliver_event(driver.home_opened_body("U1"), answer_within=0.5)
    assert attempts == [
        Delivery(0, None, None, "http_timeout"),
        Delivery(1, "http_timeout", 500, "http_error"),
        Delivery(2, "http_error", 200, "ok"),
    ]
    bodies = [raw for _, raw in bot.seen]
    assert len(set(bodies)) == 1  # the same event, the same event_id, each time
    retries = [(h.get("X-Slack-Retry-Num"), h.get("X-Slack-Retry-Reason")) for h, _ in bot.seen]
    assert retries == [(None, None), ("1", "http_timeout"), ("2", "http_error")]


def test_driver_gives_up_after_three_retries_and_on_no_retry(
    emulator: SlackEmulator, bot: type[_Bot]
) -> None:
    bot.plan = [(503, 0.0)] * 5
    driver = _driver(emulator, bot.url)
    attempts = driver.deliver_event(driver.home_opened_body("U1"))
    assert [(a.retry, a.status) for a in attempts] == [(0, 503), (1, 503), (2, 503), (3, 503)]

    bot.plan = [(0, 0.0)]  # "X-Slack-No-Retry: 1": Slack does not retry
    attempts = driver.deliver_event(driver.home_opened_body("U1"))
    assert attempts == [Delivery(0, None, 500, "http_error")]

    closed = _driver(emulator, "http://127.0.0.1:9/slack/events")  # nothing listens there
    attempts = closed.deliver_event(closed.home_opened_body("U1"))
    assert [(a.retry, a.reason) for a in attempts] == [
        (0, None),
        (1, "connection_failed"),
        (2, "connection_failed"),
        (3, "connection_failed"),
    ]
