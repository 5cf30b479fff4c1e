"""End to end over signed HTTP: what people see when they type commands, good and bad."""

from __future__ import annotations

import time

import pytest

from emulators.stack import (
    CHANNEL,
    OUTSIDE_CHANNEL,
    PUBLIC_CHANNEL,
    REQUESTER,
    STRANGER,
    Stack,
)


def training_calls(stack: Stack) -> int:
    return len(stack.cv.calls)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("exprot projects", "did you mean 'export'"),
        ("export project", "needs &lt;project-id&gt;"),
        ("export project not-a-guid", "not-a-guid"),
        ("export images 3f0b2c4e-8a55-4d8e-9a55-0b3e6c1d2f00 --tagged --untagged", "--tagged"),
        ("export projects --colour red", "--colour"),
        ("delete images 3f0b2c4e-8a55-4d8e-9a55-0b3e6c1d2f00", "--ids"),
    ],
)
def test_e2e_bad_grammar_answers_ephemerally_and_calls_nothing(
    stack: Stack, text: str, problem: str
) -> None:
    before = training_calls(stack)
    response = stack.command(REQUESTER, text)
    assert response.status_code == 200
    body = response.json()
    assert body["response_type"] == "ephemeral"
    assert problem in body["text"]
    assert "Usage: `/cv " in body["text"]
    assert "Traceback" not in body["text"]
    time.sleep(0.2)
    assert training_calls(stack) == before
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []


def test_e2e_help_lists_every_verb(stack: Stack) -> None:
    body = stack.command(REQUESTER, "help").json()
    for word in ("export", "delete", "status", "cancel", "retry", "audit"):
        assert word in body["text"]


def test_e2e_forged_and_stale_signatures_get_401_and_change_nothing(stack: Stack) -> None:
    assert stack.driver is not None
    form = stack.driver.command_form(REQUESTER.user_id, CHANNEL, "export projects")
    from urllib.parse import urlencode

    body = urlencode(form).encode()
    forged = stack.driver.post(body, signature="v0=" + "0" * 64)
    stale = stack.driver.post(body, timestamp=int(time.time()) - 301)
    unsigned = stack.driver.post(body, signature="")
    assert [forged.status_code, stale.status_code, unsigned.status_code] == [401, 401, 401]
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []


def test_e2e_not_in_channel_explains_how_to_invite(stack: Stack) -> None:
    body = stack.command(REQUESTER, "export projects", channel=OUTSIDE_CHANNEL).json()
    assert body["response_type"] == "ephemeral"
    assert "I am not in this channel" in body["text"]
    assert "/invite" in body["text"]
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []


def test_e2e_personal_exports_refused_in_public_channel_project_list_allowed(
    stack: Stack,
) -> None:
    project = stack.cv.data.project_ids()[0]
    for text in (f"export project {project}", f"export project {project} --no-images"):
        refused = stack.command(REQUESTER, text, channel=PUBLIC_CHANNEL).json()
        assert "public channel" in refused["text"]
        assert "BOT_ALLOW_PUBLIC_EXPORTS=true" in refused["text"]
    accepted = stack.command(REQUESTER, "export projects", channel=PUBLIC_CHANNEL)
    rid = stack.request_id(accepted)
    assert stack.wait_status(rid, "done", "failed") == "done"


def test_e2e_requesters_allow_list_refuses_strangers(stack: Stack) -> None:
    # The default stack lets anyone request; restrict it through the rules the bot uses.
    from dataclasses import replace

    service = stack.bot.service
    service.rules = replace(service.rules, requesters=frozenset({REQUESTER.user_id}))
    body = stack.command(STRANGER, "export projects").json()
    assert "BOT_REQUESTERS" in body["text"]
    from bot import audit

    refusals = [e for e in audit.events(stack.bot.db.conn) if e.action == "command.refused"]
    assert [e.actor for e in refusals] == [STRANGER.user_id]


def test_e2e_request_is_stored_before_the_ack_and_announced(stack: Stack) -> None:
    response = stack.command(REQUESTER, "export projects --ticket DSR-7 --reason 'Art. 15 access'")
    rid = stack.request_id(response)
    record = stack.bot.store.get(rid)  # stored by the time the ack came back
    assert record.requester == REQUESTER.user_id
    assert record.command["meta"] == {"ticket": "DSR-7", "reason": "Art. 15 access"}
    stack.wait_status(rid, "done")
    stack.wait_delivered()
    announcement = stack.announcement(rid)
    assert rid in announcement.text
    assert f"<@{REQUESTER.user_id}>" in announcement.text
    thread = stack.slack.messages(CHANNEL, thread_ts=announcement.ts)
    assert any(rid in m.text for m in thread)


def test_e2e_status_lists_open_requests_and_unknown_ids(stack: Stack) -> None:
    assert "no open requests" in stack.command(REQUESTER, "status").json()["text"]
    body = stack.command(REQUESTER, "status R-99999").json()
    assert body["text"] == "There is no request R-99999."


def test_e2e_the_word_payload_in_a_command_is_not_misread(stack: Stack) -> None:
    # Bolt alone parses any form body containing "payload" as an interactive payload.
    response = stack.command(REQUESTER, "export projects --reason 'payload of the request'")
    assert response.status_code == 200
    rid = stack.request_id(response)
    assert stack.bot.store.get(rid).command["meta"]["reason"] == "payload of the request"
