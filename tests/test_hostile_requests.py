"""Hostile and broken requests, end to end over signed HTTP into the running bot.

What reaches the bot's HTTP endpoint is untrusted until its signature checks out, and even then
its shape is. Every case here goes through the real surfaces (waitress, the WSGI app, Bolt, the
listeners, the service, SQLite) and checks both the answer and that nothing changed: no stored
request, approval, job, audit event or outbox item, and no call to Slack or Custom Vision.

The second half is the authorisation table (bot/policy.py) driven end to end: each row is a
person doing something to a request in some state, through a command or a click, and every
refusal must be explained to that person and appear in the audit log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import audit
from bot.clock import iso
from emulators.customvision import Seed
from emulators.slack.driver import SlackDriver, signature
from emulators.stack import (
    APPROVER,
    AUDIT_CHANNEL,
    CHANNEL,
    GROUP_APPROVER,
    PUBLIC_CHANNEL,
    REQUESTER,
    SIGNING_SECRET,
    STRANGER,
    Person,
    Stack,
    start_stack,
)
from handlers import blocks
from tests.conftest import request_pending

SEED = Seed(projects=1, iterations=1, tags=2, images=60, predictions=2, image_bytes=128)
ANALYST = Person("U0DAVE", "dave")  # a requester through the S0ANALYSTS user group
ANALYSTS = "S0ANALYSTS"
MISSING_PROJECT = "0badc0de-0000-4000-8000-000000000000"


class ErrorLog(logging.Handler):
    """Collects ERROR records of the whole process (the bot runs in this process)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "BOT_REQUESTERS": f"{REQUESTER.user_id},{APPROVER.user_id},{ANALYSTS}",
        "BOT_ALLOWED_CHANNELS": f"{CHANNEL},{PUBLIC_CHANNEL}",
    }
    running = start_stack(tmp_path_factory.mktemp("hostile"), seed=SEED, env=env)
    # Before the first command, so the first lookup of the group already sees its member.
    running.slack.add_user(ANALYST.user_id, ANALYST.name)
    running.slack.add_usergroup(ANALYSTS, "analysts", [ANALYST.user_id])
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.fixture
def quiet(stack: Stack, errors: ErrorLog) -> Iterator[Stack]:
    """The module's stack with no work in flight, and no ERROR logged while the test ran."""
    settle(stack)
    errors.records.clear()
    yield stack
    shown = [f"{r.name}: {r.getMessage()}" for r in errors.records]
    errors.records.clear()
    assert shown == []


def settle(stack: Stack) -> None:
    """Wait until no job runs and nothing waits to be sent to Slack."""
    stack.slack.wait_for(lambda: stack.bot.store.unfinished_jobs() == 0, timeout=30)
    stack.wait_delivered()


def driver(stack: Stack) -> SlackDriver:
    assert stack.driver is not None
    return stack.driver


def footprint(stack: Stack) -> dict[str, Any]:
    """Everything a request could change: stored rows and calls made to either service."""
    conn = stack.bot.db.conn
    tables = ("requests", "approvals", "jobs", "deletion_items", "outbox", "audit_events")
    counted = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    return {**counted, "slack_calls": len(stack.slack.calls), "cv_calls": len(stack.cv.calls)}


def last_seq(stack: Stack) -> int:
    row = stack.bot.db.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()
    return int(row[0])


def events_after(stack: Stack, seq: int) -> list[audit.Event]:
    return [e for e in audit.events(stack.bot.db.conn) if e.seq > seq]


def form(stack: Stack, text: str, person: Person = REQUESTER) -> bytes:
    fields = driver(stack).command_form(person.user_id, CHANNEL, text)
    return urlencode(fields).encode("ascii")


def interactive(payload: Any) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode("ascii")


# --- signatures -------------------------------------------------------------------------------


def _headers(timestamp: str | None, signature: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if timestamp is not None:
        headers["X-Slack-Request-Timestamp"] = timestamp
    if signature is not None:
        headers["X-Slack-Signature"] = signature
    return headers


def _now(shift: int = 0) -> str:
    return str(int(time.time()) + shift)


def _signed_at(d: SlackDriver, body: bytes, timestamp: str) -> tuple[bytes, dict[str, str]]:
    return body, _headers(timestamp, d.sign(body, timestamp))


Build = Callable[[SlackDriver, bytes], tuple[bytes, dict[str, str]]]
BAD_SIGNATURES: list[tuple[str, Build]] = [
    ("no signature", lambda d, b: (b, _headers(_now(), None))),
    ("empty signature", lambda d, b: (b, _headers(_now(), ""))),
    ("no timestamp", lambda d, b: (b, _headers(None, d.sign(b, _now())))),
    ("no headers at all", lambda d, b: (b, _headers(None, None))),
    ("forged", lambda d, b: (b, _headers(_now(), "v0=" + "0" * 64))),
    ("stale by 301 s", lambda d, b: _signed_at(d, b, _now(-301))),
    ("from the future by 301 s", lambda d, b: _signed_at(d, b, _now(301))),
    ("timestamp not a number", lambda d, b: _signed_at(d, b, "yesterday")),
    ("timestamp in other digits", lambda d, b: (b, _headers("\u00b2", "v0=" + "0" * 64))),
    ("version v1", lambda d, b: (b, _headers(_now(), "v1=" + d.sign(b, _now())[3:]))),
    ("signature of another body", lambda d, b: (b, _headers(_now(), d.sign(b + b"x", _now())))),
    ("replayed with a new timestamp", lambda d, b: (b, _headers(_now(), d.sign(b, "1")))),
    ("signed with another secret", lambda d, b: (b, _headers(_now(), _other_secret(b)))),
    ("malformed and unsigned", lambda d, b: (b"payload=%7Bnot-json", _headers(_now(), None))),
    ("not UTF-8 and unsigned", lambda d, b: (b"\xff\xfe\x00text", _headers(_now(), None))),
    ("empty and unsigned", lambda d, b: (b"", _headers(_now(), None))),
]


def _other_secret(body: bytes) -> str:
    return signature("not-the-signing-secret", _now(), body)


@pytest.mark.parametrize(("case", "build"), BAD_SIGNATURES, ids=[c for c, _ in BAD_SIGNATURES])
def test_hostile_requests_bad_signature_gets_401_and_changes_nothing(
    quiet: Stack, case: str, build: Build
) -> None:
    stack = quiet
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    body, headers = build(driver(stack), form(stack, f"delete images {project} --ids {image}"))
    before = footprint(stack)
    response = requests.post(stack.bot_url, data=body, headers=headers, timeout=10)
    assert (response.status_code, response.json()) == (401, {"error": "invalid request"})
    assert footprint(stack) == before


def test_hostile_requests_forged_click_cannot_approve(quiet: Stack, pending: str) -> None:
    stack = quiet
    rid = pending
    d = driver(stack)
    ts = stack.bot.store.get(rid).message_ts
    payload = d.block_actions_payload(APPROVER.user_id, CHANNEL, ts, "request.approve", rid)
    body = interactive(payload)
    before = footprint(stack)
    forged = d.post(body, signature="v0=" + "f" * 64)
    stale = d.post(body, timestamp=int(time.time()) - 600)
    assert [forged.status_code, stale.status_code] == [401, 401]
    assert footprint(stack) == before
    assert stack.status(rid) == "pending"


# --- size and shape ---------------------------------------------------------------------------


def test_hostile_requests_oversized_body_gets_413_and_changes_nothing(quiet: Stack) -> None:
    stack = quiet
    d = driver(stack)
    fields = d.command_form(REQUESTER.user_id, CHANNEL, "export projects --reason " + "x" * 2**21)
    body = urlencode(fields).encode("ascii")
    before = footprint(stack)
    signed = d.post(body)
    chunked = requests.post(
        stack.bot_url,
        data=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": _now(),
            "X-Slack-Signature": d.sign(body, _now()),
        },
        timeout=10,
    )
    assert [signed.status_code, chunked.status_code] == [413, 413]
    assert footprint(stack) == before


def _block_actions(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": APPROVER.user_id},
        "channel": {"id": CHANNEL},
        "actions": [{"action_id": "request.approve", "value": "R-1001"}],
    }
    payload.update(changes)
    return payload


MALFORMED: list[tuple[str, bytes, str, str]] = [
    # (case, body, content type, what the 400 says)
    ("not UTF-8", b"text=\xff\xfe&command=/cv", "form", "not UTF-8"),
    ("empty body", b"", "form", "empty"),
    ("payload not JSON", b"payload=%7Bnot-json", "form", "not valid JSON"),
    ("payload empty", b"payload=", "form", "not valid JSON"),
    ("payload bytes not UTF-8", b"payload=%FF%FE", "form", "not valid JSON"),
    ("payload an array", interactive([1, 2]), "form", "not a JSON object"),
    ("payload a string", interactive("block_actions"), "form", "not a JSON object"),
    ("payload null", interactive(None), "form", "not a JSON object"),
    ("JSON body truncated", b'{"type": "block_actions", "act', "json", "not valid JSON"),
    ("JSON body an array", b"[]", "json", "not a JSON object"),
    ("no actions", interactive(_block_actions(actions=[])), "form", "without actions"),
    ("actions not a list", interactive(_block_actions(actions="x")), "form", "without actions"),
    ("action not an object", interactive(_block_actions(actions=[7])), "form", "action_id"),
    (
        "action without action_id",
        interactive(_block_actions(actions=[{"value": "R-1001"}])),
        "form",
        "action_id",
    ),
    ("user a number", interactive(_block_actions(user=5)), "form", "`user`"),
    ("channel a list", interactive(_block_actions(channel=[CHANNEL])), "form", "`channel`"),
    ("team a number", interactive(_block_actions(team=1)), "form", "`team`"),
    ("click without a user", interactive(_block_actions(user={"name": "x"})), "form", "user id"),
    (
        "slash command without a user",
        urlencode({"command": "/cv", "text": "export projects", "channel_id": CHANNEL}).encode(),
        "form",
        "without user_id",
    ),
    (
        "view submission without a view",
        interactive({"type": "view_submission", "user": {"id": APPROVER.user_id}}),
        "form",
        "callback_id",
    ),
    (
        "event not an object",
        json.dumps({"type": "event_callback", "event": "x", "event_id": "Ev1"}).encode(),
        "json",
        "`event` is not an object",
    ),
    (
        "event without a type",
        json.dumps({"type": "event_callback", "event": {"user": "U1"}, "event_id": "E"}).encode(),
        "json",
        "without an event type",
    ),
    (
        "event without an id",
        json.dumps({"type": "event_callback", "event": {"type": "app_home_opened"}}).encode(),
        "json",
        "without an event_id",
    ),
    (
        "authorizations not a list",
        json.dumps({"type": "event_callback", "authorizations": {"team_id": "T"}}).encode(),
        "json",
        "`authorizations` is not a list",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "kind", "problem"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_hostile_requests_malformed_signed_body_gets_400_and_changes_nothing(
    quiet: Stack, case: str, body: bytes, kind: str, problem: str
) -> None:
    stack = quiet
    content_type = "application/json" if kind == "json" else "application/x-www-form-urlencoded"
    before = footprint(stack)
    response = driver(stack).post(body, content_type=content_type)
    assert response.status_code == 400
    answer = response.json()["error"]
    assert answer.startswith("malformed request: ")
    assert problem in answer
    assert footprint(stack) == before


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = [
    "type", "actions", "user", "channel", "team", "enterprise", "container", "view", "message",
    "trigger_id", "api_app_id", "token", "state", "command", "text", "user_id", "channel_id",
    "is_enterprise_install", "callback_id", "private_metadata", "authorizations", "event",
    "submission", "action_id", "block_id", "value", "challenge", "ssl_check", "function_data",
    "event_id", "tab",
    "bot_access_token", "enterprise_id", "team_id", "is_ext_shared_channel",
]  # fmt: skip
TYPES = [
    "block_actions", "view_submission", "view_closed", "shortcut", "message_action",
    "interactive_message", "dialog_submission", "dialog_cancellation", "block_suggestion",
    "dialog_suggestion", "workflow_step_edit", "url_verification", "event_callback",
]  # fmt: skip


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)  # not even an object
    body: dict[str, Any] = draw(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6))
    if draw(st.booleans()):
        body["type"] = draw(st.sampled_from(TYPES))
    if draw(st.booleans()):
        action = draw(st.dictionaries(st.sampled_from(["action_id", "value", "type"]), JSON))
        if draw(st.booleans()):
            action["action_id"] = draw(st.sampled_from(["request.approve", "request.cancel", "x"]))
        body["actions"] = [action]
    if draw(st.booleans()):
        event = draw(st.dictionaries(st.sampled_from(["user", "tab", "channel", "view"]), JSON))
        event["type"] = draw(st.sampled_from(["app_home_opened", "message", "x"]))
        if draw(st.booleans()):
            event["tab"] = "home"
        body["event"] = event
    return body


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=payloads(), as_json=st.booleans())
def test_hostile_requests_any_signed_payload_shape_gets_an_answer_not_a_crash(
    quiet: Stack, payload: Any, as_json: bool
) -> None:
    stack = quiet
    if as_json:
        response = driver(stack).post(json.dumps(payload).encode(), content_type="application/json")
    else:
        response = driver(stack).post(interactive(payload))
    assert response.status_code in (200, 400, 404), response.text
    if response.status_code == 400:
        assert response.json()["error"].startswith("malformed request: ")


# --- clicks that name nothing the bot knows ---------------------------------------------------


def click_answer(
    stack: Stack, person: Person, ts: str, action_id: str, value: str, channel: str = CHANNEL
) -> str:
    """Click as `person` and return the ephemeral answer sent through the response_url."""
    d = driver(stack)
    seen = len(stack.slack.ephemerals(user_id=person.user_id))
    payload = d.block_actions_payload(person.user_id, CHANNEL, ts, action_id, value)
    if channel != CHANNEL:
        # The same message and button, as if they showed up in another channel.
        payload["channel"] = {"id": channel, "name": "elsewhere"}
        payload["container"]["channel_id"] = channel
        payload["response_url"] = stack.slack.response_url(channel, person.user_id)
    views = len(stack.slack.views(person.user_id))
    response = d.post(interactive(payload))
    assert response.status_code == 200, response.text
    assert stack.slack.wait_for(
        lambda: (
            len(stack.slack.ephemerals(user_id=person.user_id)) > seen
            or len(stack.slack.views(person.user_id)) > views
        )
    ), "no answer"
    if len(stack.slack.ephemerals(user_id=person.user_id)) == seen:
        return "(the rejection dialog opened)"
    return stack.slack.ephemerals(user_id=person.user_id)[-1].text


@pytest.fixture(scope="module")
def pending(stack: Stack) -> str:
    """A deletion left pending for the whole module: refusals must never move it."""
    return one_image_pending(stack)


def one_image_pending(stack: Stack, person: Person = REQUESTER, channel: str = CHANNEL) -> str:
    """Make a one-image deletion request (an image no earlier request named) and wait for its
    approval buttons."""
    project = stack.cv.data.project_ids()[0]
    used = {
        str(r.command.get("image_ids", [""])[0])
        for r in stack.bot.store.requests_of(person.user_id, open_only=False)
        if r.command.get("image_ids")
    }
    image = next(i for i in stack.cv.data.image_ids(project) if i not in used)
    return request_pending(stack, f"delete images {project} --ids {image}", person, channel)


def test_hostile_requests_unknown_action_id_answers_and_changes_nothing(
    quiet: Stack, pending: str
) -> None:
    stack = quiet
    rid = pending
    ts = stack.bot.store.get(rid).message_ts
    assert ts is not None
    before = {k: v for k, v in footprint(stack).items() if k != "slack_calls"}
    answer = click_answer(stack, APPROVER, ts, "request.delete_everything", rid)
    assert answer == (
        "That button is not one this bot knows (it may come from an older version of the "
        "bot). Nothing was done. `/cv status` shows your requests."
    )
    assert {k: v for k, v in footprint(stack).items() if k != "slack_calls"} == before
    assert stack.status(rid) == "pending"


def test_hostile_requests_dialog_that_slack_will_not_open_is_explained(
    quiet: Stack, pending: str
) -> None:
    stack = quiet
    ts = stack.bot.store.get(pending).message_ts
    assert ts is not None
    stack.slack.inject_error("views.open", "expired_trigger_id", times=1)
    answer = click_answer(stack, APPROVER, ts, "request.reject", pending)
    assert answer == f"Slack did not open the rejection dialog; click Reject on {pending} again."
    assert stack.status(pending) == "pending"


def test_hostile_requests_unknown_slash_command_is_answered(quiet: Stack) -> None:
    stack = quiet
    other = SlackDriver(stack.bot_url, SIGNING_SECRET, stack.slack, command="/cv-old")
    before = footprint(stack)
    response = other.command(REQUESTER.user_id, CHANNEL, "export projects")
    assert response.status_code == 200
    assert response.json() == {
        "text": "This bot answers `/cv`, not `/cv-old`: nothing was done. Ask an admin to "
        "align BOT_COMMAND with the app's manifest.",
        "response_type": "ephemeral",
    }
    assert {k: v for k, v in footprint(stack).items() if k != "slack_calls"} == {
        k: v for k, v in before.items() if k != "slack_calls"
    }


@pytest.mark.parametrize(
    ("value", "answer"),
    [
        ("R-999999", "There is no request R-999999."),
        ("", "'' is not a request id (they look like R-1042)."),
        ("<!channel>", "'&lt;!channel&gt;' is not a request id (they look like R-1042)."),
        ("R-1 OR 1=1", "'R-1 OR 1=1' is not a request id (they look like R-1042)."),
    ],
)
@pytest.mark.parametrize("action", ["approve", "reject", "cancel"])
def test_hostile_requests_click_on_unknown_request_id_answers_and_changes_nothing(
    quiet: Stack, pending: str, action: str, value: str, answer: str
) -> None:
    stack = quiet
    rid = pending
    ts = stack.bot.store.get(rid).message_ts
    assert ts is not None
    before = footprint(stack)
    assert click_answer(stack, APPROVER, ts, f"request.{action}", value) == answer
    after = footprint(stack)
    # Only the refusal's own audit event (and its mirror) may appear; nothing else changes.
    for key in ("requests", "approvals", "jobs", "deletion_items", "cv_calls"):
        assert after[key] == before[key], key
    assert stack.status(rid) == "pending"


def test_hostile_requests_click_on_unknown_request_id_is_audited(
    quiet: Stack, pending: str
) -> None:
    stack = quiet
    rid = pending
    ts = stack.bot.store.get(rid).message_ts
    assert ts is not None
    seq = last_seq(stack)
    click_answer(stack, STRANGER, ts, "request.approve", "R-999999")
    refused = [e for e in events_after(stack, seq) if e.outcome == "refused"]
    assert [(e.actor, e.action, e.details["reason"]) for e in refused] == [
        (STRANGER.user_id, "approval.refused", "There is no request R-999999.")
    ]


def test_hostile_requests_very_long_request_id_is_not_echoed_back(
    quiet: Stack, pending: str
) -> None:
    stack = quiet
    rid = pending
    ts = stack.bot.store.get(rid).message_ts
    assert ts is not None
    answer = click_answer(stack, APPROVER, ts, "request.approve", "R-" + "9" * 1900)
    assert "is not a request id" in answer or "There is no request" in answer
    assert len(answer) < 400, answer[:100]
    assert stack.status(rid) == "pending"


@pytest.mark.parametrize(
    ("person", "action"),
    [
        (APPROVER, "approve"),
        (GROUP_APPROVER, "approve"),
        (APPROVER, "reject"),
        (REQUESTER, "cancel"),
    ],
)
def test_hostile_requests_click_from_another_channel_does_not_act(
    quiet: Stack, person: Person, action: str
) -> None:
    stack = quiet
    rid = one_image_pending(stack)
    ts = stack.bot.store.get(rid).message_ts
    assert ts is not None
    seq = last_seq(stack)
    answer = click_answer(stack, person, ts, f"request.{action}", rid, channel=PUBLIC_CHANNEL)
    assert answer == (
        f"{rid} was requested in another channel; it can only be decided from its own "
        "message there."
    )
    settle(stack)
    record = stack.bot.store.get(rid)
    assert (record.status, record.approvals) == ("pending", ())
    assert stack.slack.views(person.user_id) == [] or all(
        v.callback_id != "request.reject_reason" or rid not in json.dumps(v.view)
        for v in stack.slack.views(person.user_id)
    )
    refused = [e for e in events_after(stack, seq) if e.outcome == "refused"]
    assert [(e.actor, e.request_id) for e in refused] == [(person.user_id, rid)]


# --- any command text -------------------------------------------------------------------------


def slack_typed(text: str) -> str:
    """What Slack sends for typed text (&, < and > escaped)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    text=st.text(st.characters(exclude_categories=["Cs"]), max_size=4000)
    | st.lists(
        st.sampled_from(
            [
                "export", "delete", "images", "project", "--reason", "--ticket", '"', "'",
                "\u201c", "\\", "<!channel>", "&lt;", "\x00", "\n", "\u202e", "R-1", "status",
                "cancel", "retry", "audit", "--ids", ",", "=", "--help",
            ]
        ),
        max_size=30,
    ).map(" ".join),
    typed=st.booleans(),
)  # fmt: skip
def test_hostile_requests_any_command_text_gets_a_plain_answer(
    quiet: Stack, text: str, typed: bool
) -> None:
    stack = quiet
    response = driver(stack).command(
        STRANGER.user_id, CHANNEL, slack_typed(text) if typed else text
    )
    assert response.status_code == 200
    body = response.json()
    assert body["response_type"] == "ephemeral"
    assert body["text"].strip()
    assert "Traceback" not in body["text"]
    assert "<!" not in body["text"] and "<http" not in body["text"]


# --- the authorisation table, end to end ------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One cell of the matrix: `person` does `verb` to a request in `state`."""

    state: str  # none | pending | own-pending | expired | rejected | cancelled | done | failed |
    # export-done
    person: Person
    verb: str  # request | request-elsewhere | approve | reject | cancel | retry | status |
    # audit | audit-request | audit-verify
    answer: str  # a part of the answer, or "" for allowed
    refused: str | None  # the audit action of the refusal, None when allowed

    @property
    def id(self) -> str:
        outcome = "refused" if self.refused else "allowed"
        return f"{self.verb}-{self.state}-{self.person.name}-{outcome}"


MATRIX = [
    # who may request, where
    Row("none", REQUESTER, "request", "", None),
    Row("none", ANALYST, "request", "", None),  # through the S0ANALYSTS group
    Row("none", STRANGER, "request", "BOT_REQUESTERS", "command.refused"),
    Row("none", GROUP_APPROVER, "request", "BOT_REQUESTERS", "command.refused"),
    Row("none", REQUESTER, "request-elsewhere", "BOT_ALLOWED_CHANNELS", "command.refused"),
    # who may approve a pending deletion
    Row("pending", APPROVER, "approve", "", None),
    Row("pending", GROUP_APPROVER, "approve", "", None),  # through the S0PRIVACY group
    Row("pending", REQUESTER, "approve", "cannot approve your own request", "approval.refused"),
    Row("own-pending", APPROVER, "approve", "cannot approve your own", "approval.refused"),
    Row("pending", STRANGER, "approve", "Only approvers", "approval.refused"),
    Row("pending", ANALYST, "approve", "Only approvers", "approval.refused"),
    # who may reject it
    Row("pending", GROUP_APPROVER, "reject", "", None),
    Row("pending", REQUESTER, "reject", "use Cancel instead", "rejection.refused"),
    Row("own-pending", APPROVER, "reject", "use Cancel instead", "rejection.refused"),
    Row("pending", STRANGER, "reject", "Only approvers", "rejection.refused"),
    # who may cancel it
    Row("pending", REQUESTER, "cancel", "", None),
    Row("pending", APPROVER, "cancel", "Only the requester may cancel", "cancel.refused"),
    # decisions on requests that can no longer be decided
    *[
        Row(state, APPROVER, "approve", "can no longer be decided", "approval.refused")
        for state in ("expired", "rejected", "cancelled", "done")
    ],
    *[
        Row(state, GROUP_APPROVER, "reject", "can no longer be decided", "rejection.refused")
        for state in ("expired", "done")
    ],
    Row("done", REQUESTER, "cancel", "cannot be cancelled", "cancel.refused"),
    Row("export-done", APPROVER, "approve", "is not a deletion", "approval.refused"),
    # retry
    Row("failed", REQUESTER, "retry", "", None),
    Row("failed", STRANGER, "retry", "Only the requester or an approver", "retry.refused"),
    Row("done", REQUESTER, "retry", "only failed requests can be retried", "retry.refused"),
    # reading the audit
    Row("none", APPROVER, "audit", "", None),
    Row("none", STRANGER, "audit", "Only approvers may read the whole audit log", "audit.refused"),
    Row("none", STRANGER, "audit-verify", "Only approvers", "audit.refused"),
    Row("done", REQUESTER, "audit-request", "", None),
    Row("done", ANALYST, "audit-request", "Only approvers", "audit.refused"),
]
STATUS_ROWS = [
    Row("pending", STRANGER, "status", "is not yours", "status.refused"),
]


def arrange(stack: Stack, state: str) -> str | None:
    """Return the id of a fresh request in `state` (None for `none`)."""
    if state == "none":
        return None
    if state == "export-done":
        rid = stack.request_id(stack.command(REQUESTER, "export projects"))
        assert stack.wait_status(rid, "done", "failed") == "done"
        return rid
    if state == "failed":
        rid = stack.request_id(
            stack.command(REQUESTER, f"export project {MISSING_PROJECT} --no-images")
        )
        assert stack.wait_status(rid, "failed", "done") == "failed"
        return rid
    rid = one_image_pending(stack, APPROVER if state == "own-pending" else REQUESTER)
    if state == "expired":
        with stack.bot.store.write() as conn:
            number = stack.bot.store.get(rid).number
            stack.bot.store.update_fields(
                conn, number, expires_at=iso(datetime(2020, 1, 1, tzinfo=UTC))
            )
        stack.bot.service.expire_due()  # what the housekeeping thread does every second
    elif state == "rejected":
        stack.bot.service.reject(APPROVER.user_id, rid, "not this subject")
    elif state == "cancelled":
        stack.bot.service.cancel(REQUESTER.user_id, rid)
    elif state == "done":
        stack.bot.service.approve(GROUP_APPROVER.user_id, rid)
        assert stack.wait_status(rid, "done", "failed") == "done"
    if state in ("expired", "rejected", "cancelled", "done"):
        assert stack.status(rid) == state
    stack.wait_delivered()
    return rid


def act(stack: Stack, row: Row, rid: str | None) -> str:
    """Do what the row says through the bot's surfaces; return what the person was told."""
    person = row.person
    if row.verb in ("approve", "reject", "cancel"):
        assert rid is not None
        ts = stack.bot.store.get(rid).message_ts
        assert ts is not None
        if row.verb == "reject" and not row.refused:
            views = len(stack.slack.views(person.user_id))
            response = stack.click(person, rid, "reject")
            assert response.status_code == 200
            assert stack.slack.wait_for(lambda: len(stack.slack.views(person.user_id)) > views)
            return ""
        return click_answer(stack, person, ts, f"request.{row.verb}", rid)
    text = {
        "request": "export projects",
        "request-elsewhere": "export projects",
        "retry": f"retry {rid}",
        "status": f"status {rid}",
        "audit": "audit",
        "audit-verify": "audit verify",
        "audit-request": f"audit --request {rid}",
    }[row.verb]
    channel = AUDIT_CHANNEL if row.verb == "request-elsewhere" else CHANNEL
    response = driver(stack).command(person.user_id, channel, text)
    assert response.status_code == 200
    return str(response.json()["text"])


def check_row(stack: Stack, row: Row) -> None:
    rid = arrange(stack, row.state)
    settle(stack)
    before = stack.status(rid) if rid else None
    seq = last_seq(stack)
    answer = act(stack, row, rid)
    assert row.answer in answer
    events = events_after(stack, seq)
    refusals = [e for e in events if e.outcome == "refused"]
    if row.refused is None:
        assert refusals == [], answer
        return
    assert [(e.actor, e.action) for e in refusals] == [(row.person.user_id, row.refused)]
    assert answer == blocks.bot_text(str(refusals[0].details["reason"]))
    if rid is not None:
        assert stack.status(rid) == before  # a refusal changes nothing
        assert refusals[0].request_id == rid or row.verb.startswith("audit")


@pytest.mark.parametrize("row", MATRIX, ids=[r.id for r in MATRIX])
def test_hostile_requests_authorisation_matrix(quiet: Stack, row: Row) -> None:
    check_row(quiet, row)


@pytest.mark.parametrize("row", STATUS_ROWS, ids=[r.id for r in STATUS_ROWS])
def test_hostile_requests_authorisation_matrix_status(quiet: Stack, row: Row) -> None:
    check_row(quiet, row)


def test_hostile_requests_every_refusal_in_the_log_was_told_to_someone(stack: Stack) -> None:
    # Runs after the matrix (same module stack): every refusal carries its reason and actor.
    refusals = [e for e in audit.events(stack.bot.db.conn) if e.outcome == "refused"]
    assert refusals
    for event in refusals:
        assert event.action.endswith(".refused")
        assert event.actor
        assert str(event.details.get("reason") or "").strip()
    assert audit.verify(stack.bot.db.conn).ok


def test_hostile_requests_healthz_and_other_paths(quiet: Stack) -> None:
    stack = quiet
    base = stack.bot_url.rsplit("/slack/events", 1)[0]
    assert requests.get(base + "/healthz", timeout=10).json()["ok"] is True
    assert requests.get(stack.bot_url, timeout=10).status_code == 404
    assert requests.post(base + "/slack/other", data=b"x", timeout=10).status_code == 404
    assert requests.get(base + "/../../etc/passwd", timeout=10).status_code == 404
