"""Property tests: whatever the stored state, every Block Kit builder's output fits Slack.

Each generated message goes through the unmodified slack-sdk client into the Slack emulator,
which refuses what Slack refuses (lengths in UTF-16 units, msg_blocks_too_long, confirmation
dialogs, modal limits); text replies are held to Slack's 4,000-character guideline.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.lifecycle import RequestKind, RequestRecord, Status
from bot.wording import count
from emulators.slack.webapi import SlackEmulator
from handlers import blocks, limits

TOKEN = "xoxb-limits"

# Text that is long in UTF-16 units: emoji (2 units each), accents, markup Slack would parse.
_alphabet = st.sampled_from(
    ["a", "é", "🙂", "\U0001d518", "&", "<", ">", "@channel", "\n", " ", "`", "*"]
)
text = st.lists(_alphabet, max_size=1200).map("".join)
# Random text rarely reaches the limits, so half the time one character repeated up to 4,000.
long_text = st.one_of(
    st.lists(_alphabet, max_size=4000).map("".join),
    st.builds(lambda char, n: char * n, _alphabet, st.integers(0, 4000)),
)


@pytest.fixture(scope="module")
def slack() -> Iterator[tuple[SlackEmulator, WebClient]]:
    emulator = SlackEmulator(bot_token=TOKEN).start()
    emulator.max_text = limits.MAX_REPLY_TEXT
    emulator.add_channel("C1", "limits", is_private=True)
    emulator.add_user("U1", "alice")
    yield emulator, WebClient(token=TOKEN, base_url=emulator.api_url)
    emulator.stop()


_statuses = st.sampled_from(sorted(Status))
_guid = st.uuids().map(str)


@st.composite
def previews(draw: st.DrawFn) -> dict[str, Any]:
    iterations = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "id": _guid,
                    "name": text,
                    "images": st.integers(0, 10**6),
                    "published": st.booleans(),
                    "publish_name": text,
                    "removed": st.booleans(),
                }
            ),
            max_size=40,
        )
    )
    tags = draw(
        st.lists(
            st.fixed_dictionaries({"id": _guid, "name": text, "images": st.integers(0, 10**6)}),
            max_size=600,
        )
    )
    return {
        "kind": "project",
        "project": {"id": draw(_guid), "name": draw(text)},
        "workspace_images": draw(st.integers(0, 10**6)),
        "iterations": iterations,
        "images_targeted": draw(st.integers(0, 10**6)),
        "images_not_found": draw(st.lists(_guid, max_size=50)),
        "tags": tags,
        "predictions": draw(st.integers(0, 10**6)),
        "predictions_not_found": draw(st.lists(_guid, max_size=20)),
        "unpublish": [
            {"iteration_id": i["id"], "publish_name": i["publish_name"]}
            for i in iterations
            if i["published"]
        ],
        "summary": draw(long_text),
    }


@st.composite
def records(draw: st.DrawFn) -> RequestRecord:
    now = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    kind = draw(st.sampled_from(RequestKind))
    return RequestRecord(
        number=draw(st.integers(1, 10**9)),
        kind=kind,
        # Not a valid stored command: the announcement falls back to the typed text.
        command={"meta": {"ticket": draw(text)[:100], "reason": draw(long_text)[:1000]}},
        text=draw(long_text),
        requester="U1",
        channel="C1",
        status=draw(_statuses),
        created_at=now,
        updated_at=now,
        expires_at=now,
        message_ts=None,
        preview=draw(st.one_of(st.none(), previews())) if kind == "delete" else None,
        progress=draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {"phase": text, "done": st.integers(0, 10**6), "total": st.integers(1, 10**6)}
                ),
            )
        ),
        result=None,
        error=draw(st.one_of(st.none(), long_text)),
        decided_by=draw(st.one_of(st.none(), st.just("U2"))),
        decision_reason=draw(st.one_of(st.none(), long_text)),
        approvals=tuple(draw(st.lists(st.sampled_from(["U2", "U3", "W4"]), max_size=3))),
    )


_files = st.one_of(
    st.none(),
    st.builds(
        blocks.PreviewFile, st.just("R-1-preview.txt"), st.sampled_from([None, "sent", "failed"])
    ),
)

_settings = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_settings
@given(record=records(), preview_file=_files, required=st.integers(1, 5))
def test_announcement_always_fits_slack(
    slack: tuple[SlackEmulator, WebClient],
    record: RequestRecord,
    preview_file: blocks.PreviewFile | None,
    required: int,
) -> None:
    _, client = slack
    fallback, body = blocks.announcement(record, required, preview_file)
    assert limits.units(fallback) <= limits.MAX_REPLY_TEXT
    assert limits.blocks_text_units(body) <= limits.MAX_BLOCKS_TEXT
    try:
        client.chat_postMessage(channel="C1", text=fallback, blocks=body)
    except SlackApiError as exc:  # pragma: no cover - the failure message is the point
        raise AssertionError(exc.response.data) from None


@_settings
@given(preview=previews())
def test_preview_keeps_every_warning(preview: dict[str, Any]) -> None:
    fits = blocks.preview_fits(preview)
    shown = blocks.preview_blocks(preview, None if fits else blocks.PreviewFile("f.txt", "sent"))
    text = "\n".join(b["text"]["text"] for b in shown)
    if preview["predictions"]:
        assert f"Stored predictions: {preview['predictions']}" in text
    if preview["images_not_found"]:
        missing = count(len(preview["images_not_found"]), "id")
        assert f"Not found (not targeted): {missing}" in text
    if preview["predictions_not_found"]:
        assert f"not found (not targeted): {len(preview['predictions_not_found'])}" in text
    if preview["unpublish"]:
        assert "Warning: these prediction endpoints will stop working" in text
    if not fits:
        assert "f.txt" in text


@_settings
@given(reply=long_text)
def test_any_reply_text_fits_one_message(
    slack: tuple[SlackEmulator, WebClient], reply: str
) -> None:
    _, client = slack
    shown = blocks.message_text(reply * 3)
    assert limits.units(shown) <= limits.MAX_REPLY_TEXT
    client.chat_postEphemeral(channel="C1", user="U1", text=shown if shown.strip() else "-")


@_settings
@given(request_id=st.text(max_size=40).filter(str.strip), channel=st.text(max_size=20))
def test_buttons_and_reject_modal_fit(
    slack: tuple[SlackEmulator, WebClient], request_id: str, channel: str
) -> None:
    emulator, client = slack
    client.chat_postMessage(channel="C1", text="x", blocks=[blocks.approval_buttons(request_id)])
    client.views_open(
        trigger_id=emulator.new_trigger_id("U1"), view=blocks.reject_modal(request_id, channel)
    )


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("abc", 3, "abc"),
        ("abcd", 3, "ab…"),
        ("🙂🙂", 4, "🙂🙂"),
        ("🙂🙂🙂", 4, "🙂…"),  # never half an emoji: 2 + 1 units
        ("a🙂", 2, "a…"),
    ],
)
def test_cut_counts_utf16_units(text: str, limit: int, expected: str) -> None:
    assert limits.cut(text, limit) == expected
    assert limits.units(limits.cut(text, limit)) <= limit


def test_fit_lines_names_what_it_left_out() -> None:
    lines = [f"line {n:02d}" for n in range(10)]  # 7 units each
    assert (
        limits.fit_lines(lines, 40, lambda n: f"+{n} more")
        == "line 00\nline 01\nline 02\nline 03\n+6 more"
    )
    assert limits.fit_lines(lines[:2], 40, lambda n: f"+{n} more") == "line 00\nline 01"
