"""The Slack emulator, driven by the unmodified slack-sdk WebClient (and WebhookClient)."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from emulators.slack.records import Sharing
from emulators.slack.webapi import DEFAULT_SCOPES, SlackEmulator
from tests.conftest import SLACK_TOKEN as TOKEN


class FakeTime:
    """A wall clock that moves only when told to (trigger and response_url expiry)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _workspace(emulator: SlackEmulator) -> SlackEmulator:
    emulator.add_user("U1", "alice")
    emulator.add_user("U2", "bob", is_admin=True)
    emulator.add_user("U3", "carol")
    emulator.add_channel("C1", "dsr-requests")
    emulator.add_channel("C2", "random", bot_member=False)
    emulator.add_channel("G1", "legal", is_private=True)
    emulator.add_channel("G2", "hr", is_private=True, bot_member=False)
    emulator.add_channel("C3", "old", is_archived=True)
    emulator.add_channel("C4", "small", members=["U1"])
    emulator.add_channel("D1", "U1", is_im=True, user="U1")
    emulator.add_usergroup("S1", "dsr-approvers", ["U1", "U2"])
    return emulator


@pytest.fixture
def emulator() -> Iterator[SlackEmulator]:
    with SlackEmulator() as emulator:
        yield _workspace(emulator)
        assert emulator.internal_errors == []


def _error(call: Any) -> str:
    with pytest.raises(SlackApiError) as caught:
        call()
    return str(caught.value.response["error"])


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _button(action_id: str, value: str, text: str = "Approve") -> dict[str, Any]:
    return {
        "type": "button",
        "action_id": action_id,
        "value": value,
        "text": {"type": "plain_text", "text": text},
    }


# -- basics ------------------------------------------------------------------------------------


def test_emulator_api_url_is_local_and_auth_test_names_the_bot(
    emulator: SlackEmulator, client: WebClient
) -> None:
    assert emulator.api_url.startswith("http://127.0.0.1:")
    assert emulator.api_url.endswith("/api/")
    answer = client.auth_test()
    assert answer.data == {
        "ok": True,
        "url": "https://emulator.slack.com/",
        "team": "Emulator Workspace",
        "user": "cv-dsr-bot",
        "team_id": "T0EMULATOR",
        "user_id": "U0BOT",
        "bot_id": "B0BOT",
        "is_enterprise_install": False,
    }
    assert answer.headers["X-OAuth-Scopes"] == ",".join(sorted(DEFAULT_SCOPES))


@pytest.mark.parametrize(
    ("token", "error"),
    [(None, "not_authed"), ("xoxb-wrong", "invalid_auth"), ("", "not_authed")],
)
def test_emulator_refuses_missing_or_wrong_tokens(
    emulator: SlackEmulator, token: str | None, error: str
) -> None:
    client = WebClient(token=token, base_url=emulator.api_url)
    assert _error(lambda: client.chat_postMessage(channel="C1", text="hi")) == error
    assert emulator.messages("C1") == []


def test_emulator_unknown_method_answers_unknown_method(client: WebClient) -> None:
    assert _error(lambda: client.api_call("chat.frobnicate")) == "unknown_method"


def test_emulator_records_token_apart_from_params(
    emulator: SlackEmulator, client: WebClient
) -> None:
    client.chat_postMessage(channel="C1", text="hello")
    by_field = requests.post(
        emulator.api_url + "users.info", data={"token": TOKEN, "user": "U1"}, timeout=10
    )
    assert by_field.json()["ok"] is True
    posted, looked_up = emulator.calls
    assert (posted.method, posted.params, posted.token, posted.status, posted.ok) == (
        "chat.postMessage",
        {"channel": "C1", "text": "hello"},
        TOKEN,
        200,
        True,
    )
    assert posted.content_type == "application/json;charset=utf-8"
    assert (looked_up.params, looked_up.token) == ({"user": "U1"}, TOKEN)
    assert all(TOKEN not in json.dumps(call.params) for call in emulator.calls)


# -- request encodings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("users.info", {"user": "U1"}),
        ("conversations.info", {"channel": "C1"}),
        ("usergroups.users.list", {"usergroup": "S1"}),
        ("auth.test", {}),
    ],
)
@pytest.mark.parametrize("encoding", ["get-query", "get-token-param", "form", "json"])
def test_emulator_accepts_get_form_and_json_for_read_methods(
    emulator: SlackEmulator, method: str, params: dict[str, str], encoding: str
) -> None:
    url = emulator.api_url + method
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    if encoding == "get-query":
        answer = requests.get(url, params=params, headers=bearer, timeout=10)
    elif encoding == "get-token-param":
        answer = requests.get(url, params={**params, "token": TOKEN}, timeout=10)
    elif encoding == "form":
        answer = requests.post(url, data=params, headers=bearer, timeout=10)
    else:
        body = json.dumps(params).encode()
        headers = {**bearer, "Content-Type": "application/json; charset=utf-8"}
        answer = requests.post(url, data=body, headers=headers, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["ok"] is True, answer.json()
    (call,) = emulator.calls
    assert (call.method, call.params, call.http_method) == (
        method,
        params,
        "GET" if encoding.startswith("get") else "POST",
    )


def test_emulator_accepts_form_encoded_chat_post_message_with_blocks_as_json_string(
    emulator: SlackEmulator,
) -> None:
    blocks = [_section("*hello*")]
    answer = requests.post(
        emulator.api_url + "chat.postMessage",
        data={"channel": "C1", "text": "hello", "blocks": json.dumps(blocks)},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ).json()
    assert answer["ok"] is True
    (message,) = emulator.messages("C1")
    assert message.blocks == [{**blocks[0], "block_id": message.blocks[0]["block_id"]}]


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        ("application/json; charset=utf-8", b"{not json", "invalid_json"),
        ("application/json; charset=utf-8", b"[1, 2]", "json_not_object"),
        ("text/xml", b"<x/>", "invalid_form_data"),
    ],
)
def test_emulator_refuses_unreadable_bodies(
    emulator: SlackEmulator, content_type: str, body: bytes, error: str
) -> None:
    answer = requests.post(
        emulator.api_url + "chat.postMessage",
        data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
        timeout=10,
    )
    assert answer.json() == {"ok": False, "error": error}


def test_emulator_warns_about_json_without_charset(emulator: SlackEmulator) -> None:
    answer = requests.post(
        emulator.api_url + "chat.postMessage",
        json={"channel": "C1", "text": "hi"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ).json()
    assert answer["ok"] is True
    assert answer["warning"] == "missing_charset"
    assert answer["response_metadata"] == {"warnings": ["missing_charset"]}


# -- chat.postMessage / chat.update / chat.postEphemeral / chat.getPermalink --------------------


def test_emulator_post_message_answers_like_slack_and_stores_the_message(
    emulator: SlackEmulator, client: WebClient
) -> None:
    blocks = [_section("Request *R-1*"), {"type": "actions", "elements": [_button("a", "R-1")]}]
    answer = client.chat_postMessage(channel="C1", text="Request R-1", blocks=blocks)
    assert answer["channel"] == "C1"
    ts = answer["ts"]
    message = answer["message"]
    assert {k: message[k] for k in ("type", "user", "ts", "text", "bot_id", "team")} == {
        "type": "message",
        "user": "U0BOT",
        "ts": ts,
        "text": "Request R-1",
        "bot_id": "B0BOT",
        "team": "T0EMULATOR",
    }
    (stored,) = emulator.messages("C1")
    assert (stored.ts, stored.user, stored.text, stored.thread_ts, stored.updates) == (
        ts,
        "U0BOT",
        "Request R-1",
        None,
        0,
    )
    # Slack fills in a block_id where none was sent; the rest of each block is kept as sent.
    assert [{k: v for k, v in b.items() if k != "block_id"} for b in stored.blocks] == blocks
    assert all(b["block_id"] for b in stored.blocks)
    assert message["blocks"] == stored.blocks


def test_emulator_ts_values_are_unique_and_increasing(
    emulator: SlackEmulator, client: WebClient
) -> None:
    stamps = [client.chat_postMessage(channel="C1", text=str(n))["ts"] for n in range(20)]
    assert len(set(stamps)) == 20
    keys = [tuple(int(part) for part in ts.split(".")) for ts in stamps]
    assert keys == sorted(keys)
    assert all(len(ts.split(".")[1]) == 6 for ts in stamps)


def test_emulator_ts_stays_unique_when_the_clock_stands_still() -> None:
    with SlackEmulator(clock=FakeTime(1_700_000_000.0)) as emulator:
        emulator.add_channel("C1", "c")
        client = WebClient(token=TOKEN, base_url=emulator.api_url)
        stamps = [client.chat_postMessage(channel="C1", text="x")["ts"] for _ in range(3)]
    assert stamps == ["1700000000.000000", "1700000000.000001", "1700000000.000002"]


def _long_text() -> str:
    return "x" * 40_001


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"channel": "C404", "text": "hi"}, "channel_not_found"),
        ({"channel": "", "text": "hi"}, "channel_not_found"),
        ({"channel": "C2", "text": "hi"}, "not_in_channel"),
        ({"channel": "G2", "text": "hi"}, "channel_not_found"),
        ({"channel": "C3", "text": "hi"}, "is_archived"),
        ({"channel": "C1", "text": ""}, "no_text"),
        ({"channel": "C1", "text": _long_text()}, "msg_too_long"),
        ({"channel": "C1", "text": "t", "blocks": [{"text": "no type"}]}, "invalid_blocks"),
        ({"channel": "C1", "text": "t", "blocks": ["not an object"]}, "invalid_blocks"),
        ({"channel": "C1", "text": "t", "blocks": {"type": "section"}}, "invalid_blocks_format"),
    ],
)
def test_emulator_post_message_errors(
    emulator: SlackEmulator, client: WebClient, arguments: dict[str, Any], error: str
) -> None:
    assert _error(lambda: client.api_call("chat.postMessage", json=arguments)) == error
    assert emulator.messages("C1") == []
    assert emulator.calls[-1].error == error


def test_emulator_post_message_to_exactly_40000_chars_is_accepted(client: WebClient) -> None:
    assert client.chat_postMessage(channel="C1", text="x" * 40_000)["ok"] is True


def _section_with(text: Any) -> list[dict[str, Any]]:
    return [{"type": "section", "text": text}]


@pytest.mark.parametrize(
    ("blocks", "pointer"),
    [
        (_section_with({"type": "mrkdwn", "text": "x" * 3001}), "/blocks/0/text/text"),
        (_section_with({"type": "mrkdwn", "text": ""}), "/blocks/0/text/text"),
        (_section_with({"type": "markdown", "text": "x"}), "/blocks/0/text/type"),
        ([{"type": "section"}], "/blocks/0"),
        ([{"type": "header", "text": {"type": "mrkdwn", "text": "x"}}], "/blocks/0/text/type"),
        ([{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}], "/blocks/0/text"),
        ([{"type": "actions", "elements": []}], "/blocks/0/elements"),
        ([{"type": "actions", "elements": [_button("a", "1")] * 26}], "/blocks/0/elements"),
        ([{"type": "actions", "elements": [_button("a", "1"), _button("a", "2")]}], "action_id"),
        ([{"type": "actions", "elements": [_button("a", "1", "x" * 76)]}], "/elements/0/text"),
        ([{"type": "actions", "elements": [_button("a", "v" * 2001)]}], "/elements/0/value"),
        ([{"type": "actions", "elements": [{**_button("a", "1"), "style": "red"}]}], "/style"),
        ([{"type": "context", "elements": [{"type": "button"}]}], "/blocks/0/elements/0"),
        ([{"type": "fancy"}], "/blocks/0/type"),
        ([{**_section("a"), "block_id": "b"}, {**_section("c"), "block_id": "b"}], "block_id"),
        ([_section("x")] * 51, "/blocks]"),
    ],
)
def test_emulator_refuses_blocks_slack_refuses(
    client: WebClient, blocks: list[dict[str, Any]], pointer: str
) -> None:
    with pytest.raises(SlackApiError) as caught:
        client.chat_postMessage(channel="C1", text="t", blocks=blocks)
    answer = caught.value.response
    assert answer["error"] == "invalid_blocks"
    assert any(pointer in message for message in answer["response_metadata"]["messages"])


def test_emulator_accepts_the_usual_blocks(emulator: SlackEmulator, client: WebClient) -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Export R-1", "emoji": False}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "*Status:* pending"},
            "fields": [{"type": "mrkdwn", "text": "a"}, {"type": "plain_text", "text": "b"}],
            "accessory": _button("more", "R-1", "More"),
        },
        {"type": "divider"},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "ticket DSR-9"}]},
        {
            "type": "actions",
            "block_id": "decide",
            "elements": [
                {**_button("request.approve", "R-1"), "style": "primary"},
                {**_button("request.reject", "R-1", "Reject"), "style": "danger"},
            ],
        },
    ]
    blocks += [_section(str(n)) for n in range(45)]
    assert client.chat_postMessage(channel="C1", text="t", blocks=blocks)["ok"] is True
    assert emulator.messages("C1")[0].blocks[4]["block_id"] == "decide"


def test_emulator_post_message_to_a_user_id_opens_the_im(
    emulator: SlackEmulator, client: WebClient
) -> None:
    answer = client.chat_postMessage(channel="U3", text="your export is ready")
    assert answer["channel"] == "D3"
    assert [m.text for m in emulator.messages("D3")] == ["your export is ready"]
    channel = emulator.channel("D3")
    assert channel is not None and channel.is_im and channel.user == "U3"


def test_emulator_threads_replies_under_their_parent(
    emulator: SlackEmulator, client: WebClient
) -> None:
    parent = client.chat_postMessage(channel="C1", text="parent")["ts"]
    first = client.chat_postMessage(channel="C1", text="one", thread_ts=parent)
    client.chat_postMessage(channel="C1", text="two", thread_ts=parent, reply_broadcast=True)
    assert first["message"]["thread_ts"] == parent
    assert [m.text for m in emulator.messages("C1")] == ["parent", "two"]
    assert [m.text for m in emulator.messages("C1", parent)] == ["one", "two"]
    assert {m.thread_ts for m in emulator.messages("C1", parent)} == {parent}


def test_emulator_update_replaces_text_and_blocks_and_keeps_history(
    emulator: SlackEmulator, client: WebClient
) -> None:
    ts = client.chat_postMessage(channel="C1", text="v1", blocks=[_section("v1")])["ts"]
    answer = client.chat_update(channel="C1", ts=ts, text="v2", blocks=[_section("v2")])
    assert (answer["channel"], answer["ts"], answer["text"]) == ("C1", ts, "v2")
    client.chat_update(channel="C1", ts=ts, text="v3")  # no blocks: Slack keeps the old ones
    message = emulator.message("C1", ts)
    assert message is not None
    assert (message.text, message.updates) == ("v3", 2)
    assert message.blocks[0]["text"]["text"] == "v2"
    assert [(v.text, v.blocks[0]["text"]["text"]) for v in message.history] == [
        ("v1", "v1"),
        ("v2", "v2"),
    ]
    client.chat_update(channel="C1", ts=ts, text="v4", blocks=[])
    message = emulator.message("C1", ts)
    assert message is not None and message.blocks == []


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"channel": "C1", "ts": "1.000001", "text": "x"}, "message_not_found"),
        ({"channel": "C404", "ts": "1.000001", "text": "x"}, "channel_not_found"),
        ({"channel": "C1", "ts": "PARENT"}, "no_text"),
        ({"channel": "C1", "ts": "PARENT", "text": "x", "blocks": [{}]}, "invalid_blocks"),
    ],
)
def test_emulator_update_errors(
    emulator: SlackEmulator, client: WebClient, arguments: dict[str, Any], error: str
) -> None:
    ts = client.chat_postMessage(channel="C1", text="original")["ts"]
    if arguments["ts"] == "PARENT":
        arguments = {**arguments, "ts": ts}
    assert _error(lambda: client.api_call("chat.update", json=arguments)) == error
    assert [(m.text, m.updates) for m in emulator.messages("C1")] == [("original", 0)]


def test_emulator_ephemeral_messages_cannot_be_updated(
    emulator: SlackEmulator, client: WebClient
) -> None:
    ts = client.chat_postEphemeral(channel="C1", user="U1", text="only you")["message_ts"]
    assert _error(lambda: client.chat_update(channel="C1", ts=ts, text="x")) == "message_not_found"


def test_emulator_post_ephemeral_records_for_the_user(
    emulator: SlackEmulator, client: WebClient
) -> None:
    answer = client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert set(answer.data) == {"ok", "message_ts"}
    (shown,) = emulator.ephemerals("C1", "U1")
    assert (shown.ts, shown.text, shown.user, shown.via) == (
        answer["message_ts"],
        "only you",
        "U1",
        "chat.postEphemeral",
    )
    assert emulator.ephemerals(user_id="U2") == []
    assert emulator.messages("C1") == []


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"channel": "C1", "text": "x"}, "invalid_arguments"),
        ({"channel": "C1", "user": "U404", "text": "x"}, "user_not_found"),
        ({"channel": "C4", "user": "U2", "text": "x"}, "user_not_in_channel"),
        ({"channel": "D1", "user": "U2", "text": "x"}, "user_not_in_channel"),
        ({"user": "U1", "text": "x"}, "channel_not_found"),
        ({"channel": "C2", "user": "U1", "text": "x"}, "not_in_channel"),
        ({"channel": "C1", "user": "U1", "text": ""}, "no_text"),
    ],
)
def test_emulator_post_ephemeral_errors(
    emulator: SlackEmulator, client: WebClient, arguments: dict[str, Any], error: str
) -> None:
    assert _error(lambda: client.api_call("chat.postEphemeral", json=arguments)) == error
    assert emulator.ephemerals() == []


def test_emulator_get_permalink(emulator: SlackEmulator, client: WebClient) -> None:
    ts = client.chat_postMessage(channel="C1", text="x")["ts"]
    reply = client.chat_postMessage(channel="C1", text="y", thread_ts=ts)["ts"]
    link = client.chat_getPermalink(channel="C1", message_ts=ts)
    assert link["permalink"] == f"https://emulator.slack.com/archives/C1/p{ts.replace('.', '')}"
    threaded = client.chat_getPermalink(channel="C1", message_ts=reply)["permalink"]
    assert threaded.endswith(f"?thread_ts={ts}&cid=C1")
    assert _error(lambda: client.chat_getPermalink(channel="C1", message_ts="1.2")) == (
        "message_not_found"
    )


# -- files -------------------------------------------------------------------------------------


def test_emulator_files_upload_v2_end_to_end(emulator: SlackEmulator, client: WebClient) -> None:
    parent = client.chat_postMessage(channel="C1", text="Export R-7")["ts"]
    content = bytes(range(256)) * 40 + os.urandom(1000)
    answer = client.files_upload_v2(
        content=content,
        filename="export-R-7.part1.zip",
        title="Export R-7 (part 1)",
        channel="C1",
        thread_ts=parent,
        initial_comment="Part 1 of 1",
    )
    file_id = answer["file"]["id"]
    assert answer["files"] == [{"id": file_id, "title": "Export R-7 (part 1)"}]
    (uploaded,) = emulator.files("C1")
    assert uploaded.data == content
    assert (uploaded.id, uploaded.name, uploaded.title) == (
        file_id,
        "export-R-7.part1.zip",
        "Export R-7 (part 1)",
    )
    assert (uploaded.channel, uploaded.thread_ts, uploaded.initial_comment) == (
        "C1",
        parent,
        "Part 1 of 1",
    )
    assert (uploaded.length, uploaded.uploaded, uploaded.completed) == (len(content), True, True)
    # Sharing the file posts a reply in the thread, carrying the comment and the file.
    (reply,) = emulator.messages("C1", parent)
    assert (reply.text, reply.files, reply.via) == (
        "Part 1 of 1",
        [file_id],
        "files.completeUploadExternal",
    )
    assert [m.ts for m in emulator.messages("C1")] == [parent]
    get_url, upload, complete = emulator.calls[1:]
    assert (get_url.method, get_url.params) == (
        "files.getUploadURLExternal",
        {"filename": "export-R-7.part1.zip", "length": str(len(content))},
    )
    assert (upload.method, upload.token, upload.params["bytes"]) == ("upload", None, len(content))
    assert complete.params["channel_id"] == "C1"
    assert json.loads(complete.params["files"]) == [{"id": file_id, "title": "Export R-7 (part 1)"}]


def test_emulator_upload_of_a_file_from_disk_with_requests(
    emulator: SlackEmulator, client: WebClient, tmp_path: Any
) -> None:
    path = tmp_path / "part.zip"
    path.write_bytes(os.urandom(70_000))
    ticket = client.files_getUploadURLExternal(filename="part.zip", length=70_000)
    with path.open("rb") as stream:
        sent = requests.post(ticket["upload_url"], data=stream, timeout=10)
    assert (sent.status_code, sent.text) == (200, "OK - 70000")
    client.files_completeUploadExternal(files=[{"id": ticket["file_id"]}], channel_id="G1")
    (uploaded,) = emulator.files("G1")
    assert uploaded.data == path.read_bytes()
    assert uploaded.title == "part.zip"


def test_emulator_upload_with_wrong_length_is_refused_and_cannot_complete(
    emulator: SlackEmulator, client: WebClient
) -> None:
    ticket = client.files_getUploadURLExternal(filename="a.txt", length=5)
    sent = requests.post(ticket["upload_url"], data=b"abc", timeout=10)
    assert sent.status_code == 400
    assert emulator.calls_to("upload")[0].error == "length mismatch: announced 5, received 3"
    error = _error(
        lambda: client.files_completeUploadExternal(
            files=[{"id": ticket["file_id"]}], channel_id="C1"
        )
    )
    assert error == "file_not_found"
    assert emulator.files("C1") == []
    assert emulator.messages("C1") == []


def test_emulator_upload_url_takes_no_auth_but_must_be_issued(emulator: SlackEmulator) -> None:
    sent = requests.post(emulator.base_url + "/upload/v1/made-up", data=b"abc", timeout=10)
    assert sent.status_code == 404


def test_emulator_upload_fault_fails_files_upload_v2(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.inject_error("upload", "upload_failed")
    # slack-sdk posts the bytes with urlopen, which raises on any non-200 answer.
    with pytest.raises(urllib.error.HTTPError) as caught:
        client.files_upload_v2(content=b"abc", filename="a.txt", channel="C1")
    caught.value.close()
    assert caught.value.code == 500
    assert emulator.files("C1") == []
    assert [c.status for c in emulator.calls_to("upload")] == [500]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"files": json.dumps([{"id": "F404"}]), "channel_id": "C1"}, "file_not_found"),
        ({"files": "not json", "channel_id": "C1"}, "invalid_arguments"),
        ({"files": "[]", "channel_id": "C1"}, "invalid_arguments"),
        ({"files": "FIFTEEN", "channel_id": "C1"}, "invalid_arguments"),
        ({"files": "UPLOADED", "channel_id": "C404"}, "channel_not_found"),
        ({"files": "UPLOADED", "channel_id": "C2"}, "not_in_channel"),
    ],
)
def test_emulator_complete_upload_errors(
    emulator: SlackEmulator, client: WebClient, arguments: dict[str, str], error: str
) -> None:
    ids = []
    for n in range(15):
        ticket = client.files_getUploadURLExternal(filename=f"{n}.txt", length=1)
        requests.post(ticket["upload_url"], data=b"x", timeout=10).raise_for_status()
        ids.append(ticket["file_id"])
    if arguments["files"] == "FIFTEEN":
        arguments = {**arguments, "files": json.dumps([{"id": i} for i in ids])}
    if arguments["files"] == "UPLOADED":
        arguments = {**arguments, "files": json.dumps([{"id": ids[0]}])}
    assert _error(lambda: client.api_call("files.completeUploadExternal", params=arguments)) == (
        error
    )
    assert emulator.messages("C1") == []


def test_emulator_complete_upload_takes_fourteen_files(
    emulator: SlackEmulator, client: WebClient
) -> None:
    uploads = [{"content": f"file {n}", "filename": f"{n}.txt"} for n in range(14)]
    answer = client.files_upload_v2(file_uploads=uploads, channel="C1")
    assert len(answer["files"]) == 14
    assert sorted(f.data for f in emulator.files("C1")) == sorted(
        f"file {n}".encode() for n in range(14)
    )
    (message,) = emulator.messages("C1")
    assert len(message.files) == 14


def test_emulator_files_info_needs_files_read(emulator: SlackEmulator, client: WebClient) -> None:
    file_id = client.files_upload_v2(content=b"x", filename="x.txt", channel="C1")["file"]["id"]
    with pytest.raises(SlackApiError) as caught:
        client.files_info(file=file_id)
    assert caught.value.response["error"] == "missing_scope"
    assert caught.value.response["needed"] == "files:read"


def test_emulator_files_info_lists_shares_with_files_read() -> None:
    with SlackEmulator(scopes=[*DEFAULT_SCOPES, "files:read"]) as emulator:
        _workspace(emulator)
        client = WebClient(token=TOKEN, base_url=emulator.api_url)
        parent = client.chat_postMessage(channel="G1", text="p")["ts"]
        file_id = client.files_upload_v2(
            content=b"x", filename="x.txt", channel="G1", thread_ts=parent
        )["file"]["id"]
        info = client.files_info(file=file_id)["file"]
    assert info["groups"] == ["G1"]
    assert info["channels"] == []
    (share,) = info["shares"]["private"]["G1"]
    assert share["thread_ts"] == parent


# -- users, usergroups, conversations -----------------------------------------------------------


def test_emulator_users_info(emulator: SlackEmulator, client: WebClient) -> None:
    user = client.users_info(user="U2")["user"]
    assert {k: user[k] for k in ("id", "name", "is_admin", "is_bot", "deleted", "team_id")} == {
        "id": "U2",
        "name": "bob",
        "is_admin": True,
        "is_bot": False,
        "deleted": False,
        "team_id": "T0EMULATOR",
    }
    assert client.users_info(user="U0BOT")["user"]["is_bot"] is True
    assert _error(lambda: client.users_info(user="U404")) == "user_not_found"


def test_emulator_usergroups_users_list(emulator: SlackEmulator, client: WebClient) -> None:
    assert client.usergroups_users_list(usergroup="S1")["users"] == ["U1", "U2"]
    assert _error(lambda: client.usergroups_users_list(usergroup="S404")) == "no_such_subteam"
    emulator.free_plan = True
    assert _error(lambda: client.usergroups_users_list(usergroup="S1")) == ("plan_upgrade_required")


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("C1", {"is_member": True, "is_private": False, "is_channel": True, "is_im": False}),
        ("C2", {"is_member": False, "is_private": False, "is_channel": True, "is_im": False}),
        ("G1", {"is_member": True, "is_private": True, "is_group": True, "is_im": False}),
        ("C3", {"is_archived": True, "name": "old"}),
    ],
)
def test_emulator_conversations_info(
    client: WebClient, channel: str, expected: dict[str, Any]
) -> None:
    info = client.conversations_info(channel=channel)["channel"]
    assert info["id"] == channel
    assert {k: info[k] for k in expected} == expected


@pytest.mark.parametrize("channel", ["C404", "G2"])
def test_emulator_conversations_info_hides_what_the_bot_cannot_see(
    client: WebClient, channel: str
) -> None:
    assert _error(lambda: client.conversations_info(channel=channel)) == "channel_not_found"


def test_emulator_conversations_info_on_an_im_needs_im_read(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as caught:
        client.conversations_info(channel="D1")
    assert (caught.value.response["error"], caught.value.response["needed"]) == (
        "missing_scope",
        "im:read",
    )


def test_emulator_conversations_info_on_an_im_with_im_read() -> None:
    with SlackEmulator(scopes=[*DEFAULT_SCOPES, "im:read"]) as emulator:
        emulator.add_channel("D1", "U1", is_im=True, user="U1")
        client = WebClient(token=TOKEN, base_url=emulator.api_url)
        info = client.conversations_info(channel="D1")["channel"]
    assert (info["is_im"], info["user"]) == (True, "U1")


@pytest.mark.parametrize(
    ("method", "arguments", "scope"),
    [
        ("chat.postMessage", {"channel": "C1", "text": "x"}, "chat:write"),
        ("users.info", {"user": "U1"}, "users:read"),
        ("usergroups.users.list", {"usergroup": "S1"}, "usergroups:read"),
        ("conversations.info", {"channel": "G1"}, "groups:read"),
        ("files.getUploadURLExternal", {"filename": "a", "length": "1"}, "files:write"),
    ],
)
def test_emulator_methods_check_scopes(method: str, arguments: dict[str, str], scope: str) -> None:
    with SlackEmulator(scopes=[s for s in DEFAULT_SCOPES if s != scope]) as emulator:
        _workspace(emulator)
        client = WebClient(token=TOKEN, base_url=emulator.api_url)
        with pytest.raises(SlackApiError) as caught:
            client.api_call(method, params=arguments)
    assert (caught.value.response["error"], caught.value.response["needed"]) == (
        "missing_scope",
        scope,
    )


# -- views.open --------------------------------------------------------------------------------


def dialog(callback_id: str = "reject") -> dict[str, Any]:
    """Return the bot's rejection dialog in shape: one required text input."""
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": "R-1|C1",
        "title": {"type": "plain_text", "text": "Reject R-1"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {"type": "plain_text_input", "action_id": "text"},
            }
        ],
    }


def test_emulator_views_open_uses_a_trigger_once(
    emulator: SlackEmulator, client: WebClient
) -> None:
    trigger = emulator.new_trigger_id("U1")
    view = client.views_open(trigger_id=trigger, view=dialog())["view"]
    assert view["id"].startswith("V")
    assert (view["callback_id"], view["private_metadata"], view["state"]) == (
        "reject",
        "R-1|C1",
        {"values": {}},
    )
    (opened,) = emulator.views("U1")
    assert (opened.id, opened.trigger_id, opened.user, opened.callback_id) == (
        view["id"],
        trigger,
        "U1",
        "reject",
    )
    assert opened.view == view
    again = _error(lambda: client.views_open(trigger_id=trigger, view=dialog()))
    assert again == "exchanged_trigger_id"
    assert len(emulator.views()) == 1


def test_emulator_views_open_refuses_an_expired_trigger() -> None:
    clock = FakeTime()
    with SlackEmulator(clock=clock) as emulator:
        client = WebClient(token=TOKEN, base_url=emulator.api_url)
        trigger = emulator.new_trigger_id("U1")
        clock.now += 3.5
        assert _error(lambda: client.views_open(trigger_id=trigger, view=dialog())) == (
            "expired_trigger_id"
        )
        fresh = emulator.new_trigger_id("U1")
        clock.now += 2.9
        assert client.views_open(trigger_id=fresh, view=dialog())["ok"] is True


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"view": dialog()}, "invalid_arguments"),
        ({"trigger_id": "1.2.3", "view": dialog()}, "invalid_trigger_id"),
        ({"trigger_id": "TRIGGER"}, "invalid_arguments"),
        (
            {"trigger_id": "TRIGGER", "view": {**dialog(), "type": "home"}},
            "invalid_arguments",
        ),
        (
            {"trigger_id": "TRIGGER", "view": {**dialog(), "submit": None}},
            "invalid_arguments",
        ),
        (
            {
                "trigger_id": "TRIGGER",
                "view": {**dialog(), "title": {"type": "plain_text", "text": "x" * 25}},
            },
            "invalid_arguments",
        ),
    ],
)
def test_emulator_views_open_errors(
    emulator: SlackEmulator, client: WebClient, arguments: dict[str, Any], error: str
) -> None:
    if arguments.get("trigger_id") == "TRIGGER":
        arguments = {**arguments, "trigger_id": emulator.new_trigger_id("U1")}
    assert _error(lambda: client.api_call("views.open", json=arguments)) == error
    assert emulator.views() == []


# -- response_url ------------------------------------------------------------------------------


def _hook(url: str) -> WebhookClient:
    return WebhookClient(url, timeout=10)


def test_emulator_response_url_posts_ephemeral_or_in_channel(emulator: SlackEmulator) -> None:
    url = emulator.response_url("C2", "U1")
    assert url.startswith(emulator.base_url + "/commands/T0EMULATOR/")
    assert _hook(url).send(text="only you").status_code == 200
    assert _hook(url).send(text="everyone", response_type="in_channel").status_code == 200
    (shown,) = emulator.ephemerals("C2", "U1")
    assert (shown.text, shown.via) == ("only you", "response_url")
    # The response_url works where the bot is no member (C2): Slack posts as the app.
    (posted,) = emulator.messages("C2")
    assert (posted.text, posted.via, posted.user) == ("everyone", "response_url", "U0BOT")
    assert [c.params.get("text") for c in emulator.calls_to("response_url")] == [
        "only you",
        "everyone",
    ]


def test_emulator_response_url_replaces_and_deletes_the_clicked_message(
    emulator: SlackEmulator, client: WebClient
) -> None:
    ts = client.chat_postMessage(channel="C1", text="pending", blocks=[_section("pending")])["ts"]
    url = emulator.response_url("C1", "U2", message_ts=ts)
    assert url.startswith(emulator.base_url + "/actions/")
    sent = _hook(url).send(text="approved", blocks=[_section("approved")], replace_original=True)
    assert sent.status_code == 200
    message = emulator.message("C1", ts)
    assert message is not None
    assert (message.text, message.updates, message.blocks[0]["text"]["text"]) == (
        "approved",
        1,
        "approved",
    )
    assert _hook(url).send(text="", delete_original=True).status_code == 200
    assert emulator.messages("C1") == []
    deleted = emulator.message("C1", ts)
    assert deleted is not None and deleted.deleted


def test_emulator_response_url_replaces_an_ephemeral_original(
    emulator: SlackEmulator, client: WebClient
) -> None:
    ts = client.chat_postEphemeral(channel="C1", user="U1", text="confirm?")["message_ts"]
    url = emulator.response_url("C1", "U1", message_ts=ts, ephemeral=True)
    assert _hook(url).send(text="done", replace_original=True).status_code == 200
    (shown,) = emulator.ephemerals("C1", "U1")
    assert (shown.ts, shown.text, shown.updates) == (ts, "done", 1)


def test_emulator_response_url_allows_five_uses(emulator: SlackEmulator) -> None:
    url = emulator.response_url("C1", "U1")
    statuses = [_hook(url).send(text=str(n)).status_code for n in range(6)]
    assert statuses == [200, 200, 200, 200, 200, 404]
    refused = _hook(url).send(text="again")
    assert (refused.status_code, json.loads(refused.body)) == (
        404,
        {"ok": False, "error": "used_url"},
    )
    assert len(emulator.ephemerals("C1", "U1")) == 5


def test_emulator_response_url_expires_after_thirty_minutes() -> None:
    clock = FakeTime()
    with SlackEmulator(clock=clock) as emulator:
        url = emulator.response_url("C1", "U1")
        clock.now += 29 * 60
        assert _hook(url).send(text="in time").status_code == 200
        clock.now += 2 * 60
        late = _hook(url).send(text="late")
    assert (late.status_code, json.loads(late.body)["error"]) == (404, "expired_url")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"text": ""}, 400, "no_text"),
        ({"text": "x", "blocks": [{"no": "type"}]}, 400, "invalid_blocks"),
        ({"text": "", "delete_original": True}, 404, "message_not_found"),
    ],
)
def test_emulator_response_url_errors(
    emulator: SlackEmulator, body: dict[str, Any], status: int, error: str
) -> None:
    answer = _hook(emulator.response_url("C1", "U1")).send_dict(body)
    # Block Kit refusals come back as webhooks answer them: the bare code as plain text.
    shown = answer.body if error == "invalid_blocks" else json.loads(answer.body)["error"]
    assert (answer.status_code, shown) == (status, error)
    assert emulator.ephemerals() == []


def test_emulator_unknown_response_url_is_404(emulator: SlackEmulator) -> None:
    answer = _hook(emulator.base_url + "/commands/T0EMULATOR/1/nope").send(text="x")
    assert answer.status_code == 404


# -- faults ------------------------------------------------------------------------------------


def test_emulator_ratelimit_answers_429_with_retry_after(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.inject_ratelimit("chat.postMessage", times=1, retry_after=7)
    with pytest.raises(SlackApiError) as caught:
        client.chat_postMessage(channel="C1", text="x")
    response = caught.value.response
    assert (response.status_code, response["error"], response.headers["Retry-After"]) == (
        429,
        "ratelimited",
        "7",
    )
    assert client.chat_postMessage(channel="C1", text="y")["ok"] is True
    assert [(c.status, c.error) for c in emulator.calls] == [(429, "ratelimited"), (200, None)]
    assert [m.text for m in emulator.messages("C1")] == ["y"]


def test_emulator_ratelimit_is_retried_by_rate_limit_retry_handler(
    emulator: SlackEmulator,
) -> None:
    client = WebClient(
        token=TOKEN,
        base_url=emulator.api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    emulator.inject_ratelimit("usergroups.users.list", times=1, retry_after=0)
    assert client.usergroups_users_list(usergroup="S1")["users"] == ["U1", "U2"]
    assert [c.status for c in emulator.calls_to("usergroups.users.list")] == [429, 200]


def test_emulator_injected_errors_apply_times_then_stop(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.inject_error("chat.postMessage", "fatal_error", times=2)
    errors = [_error(lambda: client.chat_postMessage(channel="C1", text="x")) for _ in range(2)]
    assert errors == ["fatal_error", "fatal_error"]
    assert client.chat_postMessage(channel="C1", text="x")["ok"] is True
    assert len(emulator.messages("C1")) == 1


def test_emulator_wildcard_fault_hits_any_method(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.inject_error("*", "service_unavailable")
    assert _error(lambda: client.users_info(user="U1")) == "service_unavailable"
    assert client.users_info(user="U1")["ok"] is True


def test_emulator_response_url_ratelimit(emulator: SlackEmulator) -> None:
    url = emulator.response_url("C1", "U1")
    emulator.inject_ratelimit("response_url", retry_after=3)
    answer = _hook(url).send(text="x")
    assert (answer.status_code, answer.headers["Retry-After"]) == (429, "3")
    assert _hook(url).send(text="x").status_code == 200


# -- misc --------------------------------------------------------------------------------------


def test_emulator_command_ack_shows_like_slack(emulator: SlackEmulator) -> None:
    emulator.record_command_ack("C1", "U1", b"")
    emulator.record_command_ack("C1", "U1", b'{"text": "queued R-1"}')
    emulator.record_command_ack("C1", "U1", b'{"text": "R-1 done", "response_type": "in_channel"}')
    emulator.record_command_ack("C1", "U1", b"plain words")
    assert [(e.text, e.via) for e in emulator.ephemerals("C1", "U1")] == [
        ("queued R-1", "ack"),
        ("plain words", "ack"),
    ]
    assert [(m.text, m.via) for m in emulator.messages("C1")] == [("R-1 done", "ack")]


def test_emulator_wait_for_sees_a_later_change(emulator: SlackEmulator, client: WebClient) -> None:
    timer = threading.Timer(0.05, lambda: client.chat_postMessage(channel="C1", text="late"))
    timer.start()
    try:
        assert emulator.wait_for(lambda: len(emulator.messages("C1")) == 1, timeout=10)
    finally:
        timer.join()
    assert emulator.wait_for(lambda: False, timeout=0.05) is False


def test_emulator_snapshots_are_copies(emulator: SlackEmulator, client: WebClient) -> None:
    client.chat_postMessage(channel="C1", text="x", blocks=[_section("x")])
    snapshot = emulator.messages("C1")[0]
    snapshot.blocks[0]["text"]["text"] = "changed"
    emulator.calls[0].params["channel"] = "changed"
    assert emulator.messages("C1")[0].blocks[0]["text"]["text"] == "x"
    assert emulator.calls[0].params["channel"] == "C1"


def test_emulator_serves_concurrent_clients(emulator: SlackEmulator, client: WebClient) -> None:
    def post(n: int) -> None:
        for k in range(5):
            client.chat_postMessage(channel="C1", text=f"{n}-{k}")

    threads = [threading.Thread(target=post, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages = emulator.messages("C1")
    assert len(messages) == 40
    assert len({m.ts for m in messages}) == 40


def test_emulator_stop_closes_the_port() -> None:
    emulator = SlackEmulator().start()
    url = emulator.api_url
    emulator.stop()
    with pytest.raises(requests.ConnectionError):
        requests.post(url + "auth.test", timeout=2)


# -- slow and failing Slack, channel kinds, Enterprise Grid (issue 13) -----------------------


def test_emulator_latency_applies_per_call_count(emulator: SlackEmulator) -> None:
    # slack-sdk annotates `timeout` as int, yet hands it to urllib, which takes float seconds.
    impatient = WebClient(
        token=TOKEN,
        base_url=emulator.api_url,
        timeout=0.3,  # type: ignore[arg-type]
        retry_handlers=[],
    )
    emulator.inject_latency("usergroups.users.list", 1.5, times=1, skip=1)
    assert impatient.usergroups_users_list(usergroup="S1")["ok"] is True  # let through
    with pytest.raises(OSError):  # urllib's timeout: the answer came too late
        impatient.usergroups_users_list(usergroup="S1")
    assert impatient.usergroups_users_list(usergroup="S1")["ok"] is True  # times=1: over
    assert impatient.users_info(user="U1")["ok"] is True  # other methods are not slowed


def test_emulator_server_errors_are_retried_by_slack_sdk(emulator: SlackEmulator) -> None:
    from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
    from slack_sdk.http_retry.builtin_interval_calculators import (
        FixedValueRetryIntervalCalculator,
    )

    client = WebClient(
        token=TOKEN,
        base_url=emulator.api_url,
        retry_handlers=[
            ServerErrorRetryHandler(2, interval_calculator=FixedValueRetryIntervalCalculator(0))
        ],
    )
    emulator.inject_server_error("usergroups.users.list", 503, times=2)
    assert client.usergroups_users_list(usergroup="S1")["users"] == ["U1", "U2"]
    assert [c.status for c in emulator.calls_to("usergroups.users.list")] == [503, 503, 200]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            {"is_ext_shared": True},
            {"is_ext_shared": True, "is_shared": True, "is_org_shared": False},
        ),
        ({"is_org_shared": True}, {"is_org_shared": True, "is_shared": True}),
        ({"is_pending_ext_shared": True}, {"is_pending_ext_shared": True, "is_shared": False}),
        ({}, {"is_ext_shared": False, "is_shared": False, "is_org_shared": False}),
    ],
)
def test_emulator_conversations_info_tells_shared_channels(
    emulator: SlackEmulator, client: WebClient, kind: Sharing, expected: dict[str, Any]
) -> None:
    emulator.add_channel("C9", "partners", **kind)
    info = client.conversations_info(channel="C9")["channel"]
    assert {k: info[k] for k in expected} == expected


def test_emulator_group_dm_needs_mpim_read() -> None:
    with SlackEmulator(scopes=[*DEFAULT_SCOPES, "mpim:read"]) as emulator:
        emulator.add_channel("G9", "mpdm-alice--bob--carol-1", is_mpim=True)
        info = WebClient(token=TOKEN, base_url=emulator.api_url).conversations_info(channel="G9")
        assert (info["channel"]["is_mpim"], info["channel"]["is_private"]) == (True, True)
    with SlackEmulator(scopes=[s for s in DEFAULT_SCOPES if s != "mpim:read"]) as emulator:
        emulator.add_channel("G9", "mpdm-alice--bob--carol-1", is_mpim=True)
        client = WebClient(token=TOKEN, base_url=emulator.api_url)
        with pytest.raises(SlackApiError) as caught:
            client.conversations_info(channel="G9")
        assert caught.value.response["needed"] == "mpim:read"


def test_emulator_enterprise_grid_payloads(emulator: SlackEmulator) -> None:
    from emulators.slack.driver import SlackDriver

    emulator.enterprise_id = "E0GRID"
    emulator.add_user("W0DAVE", "dave")
    driver = SlackDriver("http://127.0.0.1:9/unused", "secret", emulator)
    form = driver.command_form("W0DAVE", "C1", "help")
    assert (form["user_id"], form["enterprise_id"], form["team_id"]) == (
        "W0DAVE",
        "E0GRID",
        emulator.team_id,
    )
    client = WebClient(token=TOKEN, base_url=emulator.api_url)
    ts = client.chat_postMessage(channel="C1", text="x")["ts"]
    payload = driver.block_actions_payload("W0DAVE", "C1", ts, "a", "v")
    assert payload["enterprise"] == {"id": "E0GRID", "name": emulator.enterprise_name}
    assert payload["team"]["enterprise_id"] == "E0GRID"
    assert client.auth_test()["enterprise_id"] == "E0GRID"


def test_emulator_drop_rate_closes_connections_unanswered_and_does_nothing(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.drop_rate = 1.0
    with pytest.raises(OSError):
        client.chat_postMessage(channel="C1", text="lost")
    emulator.drop_rate = 0.0
    assert emulator.dropped >= 1  # the client retried a connection error, if set to
    assert not [m for m in emulator.messages("C1") if m.text == "lost"]
    assert client.chat_postMessage(channel="C1", text="kept")["ok"] is True
