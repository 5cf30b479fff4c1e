"""The Slack emulator's length limits: counted in UTF-16 units, on every surface Slack checks.

Each case is something an older bot did (or could do) that real Slack refuses: the old
`plain()` cut at 2,900 code points, so 1,600 emoji (3,200 units) passed the old emulator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from emulators.slack.blockkit import MAX_BLOCKS_TEXT
from emulators.slack.webapi import SlackEmulator

EMOJI = "🙂"  # one character, two UTF-16 units


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "plain_text", "text": text}}


def _refusal(client: WebClient, **arguments: Any) -> dict[str, Any]:
    with pytest.raises(SlackApiError) as caught:
        client.chat_postMessage(**{"channel": "C1", "text": "fallback", **arguments})
    data = caught.value.response.data
    assert isinstance(data, dict)
    return data


def test_emulator_counts_section_text_in_utf16_units(client: WebClient) -> None:
    client.chat_postMessage(channel="C1", text="x", blocks=[_section(EMOJI * 1500)])
    refused = _refusal(client, blocks=[_section(EMOJI * 1501)])  # 1,501 characters, 3,002 units
    assert refused["error"] == "invalid_blocks"
    assert refused["response_metadata"]["messages"] == [
        "[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/text/text]"
    ]


def test_emulator_counts_message_text_in_utf16_units(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.max_text = 4_000
    client.chat_postMessage(channel="C1", text=EMOJI * 2000)
    assert _refusal(client, text=EMOJI * 2001)["error"] == "msg_too_long"


def test_emulator_refuses_too_much_block_text_in_one_message(client: WebClient) -> None:
    fits = [_section("a" * 3000) for _ in range(MAX_BLOCKS_TEXT // 3000)]
    client.chat_postMessage(channel="C1", text="x", blocks=fits)
    refused = _refusal(client, blocks=[*fits, _section("a")])
    assert refused["error"] == "msg_blocks_too_long"
    with pytest.raises(SlackApiError) as caught:
        ts = client.chat_postMessage(channel="C1", text="x", blocks=fits[:1])["ts"]
        client.chat_update(channel="C1", ts=ts, text="x", blocks=[*fits, _section("a")])
    assert caught.value.response["error"] == "msg_blocks_too_long"


def _button(**confirm: Any) -> dict[str, Any]:
    dialog = {
        "title": {"type": "plain_text", "text": "Approve?"},
        "text": {"type": "plain_text", "text": "Sure?"},
        "confirm": {"type": "plain_text", "text": "Yes"},
        "deny": {"type": "plain_text", "text": "No"},
    }
    for key, text in confirm.items():
        dialog[key] = {"type": "plain_text", "text": text}
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": "a",
                "text": {"type": "plain_text", "text": "Go"},
                "value": "R-1",
                "confirm": dialog,
            }
        ],
    }


@pytest.mark.parametrize(
    ("field", "limit"), [("title", 100), ("text", 300), ("confirm", 30), ("deny", 30)]
)
def test_emulator_confirm_dialog_limits(client: WebClient, field: str, limit: int) -> None:
    client.chat_postMessage(channel="C1", text="x", blocks=[_button(**{field: "a" * limit})])
    refused = _refusal(client, blocks=[_button(**{field: EMOJI * (limit // 2 + 1)})])
    assert refused["error"] == "invalid_blocks"
    assert refused["response_metadata"]["messages"] == [
        f"[ERROR] must be less than {limit + 1} characters "
        f"[json-pointer:/blocks/0/elements/0/confirm/{field}/text]"
    ]


def _modal(**element: Any) -> dict[str, Any]:
    return {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Reject"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "private_metadata": "R-1|C1",
        "blocks": [
            {
                "type": "input",
                "label": {"type": "plain_text", "text": "Why?"},
                "element": {"type": "plain_text_input", "action_id": "v", **element},
            }
        ],
    }


@pytest.mark.parametrize(
    ("element", "problem"),
    [
        (
            {"max_length": 3001},
            "must be between 1 and 3000 [json-pointer:/view/blocks/0/element/max_length]",
        ),
        (
            {"placeholder": {"type": "plain_text", "text": EMOJI * 76}},
            "must be less than 151 characters "
            "[json-pointer:/view/blocks/0/element/placeholder/text]",
        ),
        (
            {"initial_value": EMOJI * 1501},
            "must be less than 3001 characters [json-pointer:/view/blocks/0/element/initial_value]",
        ),
    ],
)
def test_emulator_input_limits(
    emulator: SlackEmulator, client: WebClient, element: dict[str, Any], problem: str
) -> None:
    client.views_open(trigger_id=emulator.new_trigger_id("U1"), view=_modal(max_length=3000))
    with pytest.raises(SlackApiError) as caught:
        client.views_open(trigger_id=emulator.new_trigger_id("U1"), view=_modal(**element))
    assert caught.value.response["error"] == "invalid_arguments"
    assert caught.value.response["response_metadata"]["messages"] == [f"[ERROR] {problem}"]


def test_emulator_view_title_and_private_metadata_in_utf16_units(
    emulator: SlackEmulator, client: WebClient
) -> None:
    view = {**_modal(), "title": {"type": "plain_text", "text": EMOJI * 13}}
    with pytest.raises(SlackApiError) as caught:
        client.views_open(trigger_id=emulator.new_trigger_id("U1"), view=view)
    assert "[json-pointer:/view/title/text]" in str(caught.value.response["response_metadata"])
    view = {**_modal(), "private_metadata": EMOJI * 1501}
    with pytest.raises(SlackApiError) as caught:
        client.views_open(trigger_id=emulator.new_trigger_id("U1"), view=view)
    assert "/view/private_metadata" in str(caught.value.response["response_metadata"])


# -- response_url and slash command acknowledgements -------------------------------------------


def test_emulator_response_url_refuses_too_long_as_a_webhook_does(emulator: SlackEmulator) -> None:
    emulator.max_text = 4_000
    hook = WebhookClient(emulator.response_url("C1", "U1"), timeout=10)
    answer = hook.send(text=EMOJI * 2001)
    assert (answer.status_code, answer.body) == (400, "msg_too_long")
    answer = hook.send(text="x", blocks=[_section(EMOJI * 1501)])
    assert (answer.status_code, answer.body) == (400, "invalid_blocks")
    assert emulator.ephemerals() == []
    assert [c.error for c in emulator.calls_to("response_url")] == [
        "msg_too_long",
        "invalid_blocks",
    ]


@pytest.mark.parametrize("counts_total", [True, False])
def test_emulator_response_url_total_block_text_is_a_switch(
    emulator: SlackEmulator, counts_total: bool
) -> None:
    # bolt-js issue 2867: respond() took blocks chat.postMessage refused; both are plausible.
    emulator.response_url_blocks_total = counts_total
    blocks = [_section("a" * 3000) for _ in range(MAX_BLOCKS_TEXT // 3000 + 1)]
    answer = WebhookClient(emulator.response_url("C1", "U1"), timeout=10).send(
        text="x", blocks=blocks
    )
    if counts_total:
        assert (answer.status_code, answer.body) == (400, "msg_blocks_too_long")
    else:
        assert answer.status_code == 200


def test_emulator_command_ack_is_held_to_message_limits(emulator: SlackEmulator) -> None:
    emulator.max_text = 4_000
    emulator.record_command_ack("C1", "U1", json.dumps({"text": EMOJI * 2001}).encode())
    emulator.record_command_ack(
        "C1", "U1", json.dumps({"text": "x", "blocks": [_section(EMOJI * 1501)]}).encode()
    )
    assert emulator.ephemerals() == []
    assert [c.error for c in emulator.calls_to("command_ack")] == [
        "msg_too_long",
        "invalid_blocks",
    ]
    emulator.record_command_ack("C1", "U1", json.dumps({"text": EMOJI * 2000}).encode())
    assert [e.text for e in emulator.ephemerals()] == [EMOJI * 2000]
