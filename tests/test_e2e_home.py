"""End to end: the App Home tab as the dashboard, on a fake clock.

A person opening the Home tab is an Events API event (`app_home_opened`), signed and POSTed
by the Slack emulator's driver into the running Bolt app; the bot answers 200 and publishes
the person's dashboard with views.publish, which the emulator validates as Slack does (type
home, at most 100 blocks, text limits) and records. A requester sees their own open requests;
an approver also sees everything waiting for an approval and everything due within 7 days or
overdue, each with a link to its thread. A retried delivery of an event already taken is
answered 200 without a second publish.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, date, datetime
from typing import Any

import pytest
from slack_sdk import WebClient

from bot.clock import FakeClock
from bot.deadline import deadline_of
from bot.lifecycle import RequestKind, Status
from emulators.customvision import Seed
from emulators.slack.driver import Delivery
from emulators.slack.records import PublishedView
from emulators.stack import (
    APPROVER,
    BOT_TOKEN,
    CHANNEL,
    GROUP_APPROVER,
    REQUESTER,
    STRANGER,
    Person,
    Stack,
)
from tests.conftest import StartStack, deletion_received
from tests.harness import walk

SEED = Seed(projects=2, iterations=1, tags=2, images=12, predictions=2, image_bytes=256)
# Wednesday 2 December 2026, 07:00 UTC
START = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
ENV = {"BOT_APPROVAL_TTL_HOURS": "720"}  # deletions wait for approval across the days tested


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def stack(stacks: StartStack, clock: FakeClock) -> Stack:
    return stacks(seed=SEED, env=ENV, clock=clock)


def published(stack: Stack, person: Person) -> list[PublishedView]:
    return stack.slack.published(person.user_id)


def wait_published(stack: Stack, person: Person, count: int) -> PublishedView:
    """Wait until `count` views were published for `person` (it follows the 200); the last."""
    assert stack.slack.wait_for(lambda: len(published(stack, person)) >= count)
    return published(stack, person)[-1]


def open_home(stack: Stack, person: Person) -> PublishedView:
    """`person` opens the Home tab; return the view the bot published for it."""
    before = len(published(stack, person))
    assert stack.driver is not None
    assert stack.driver.home_opened(person.user_id) == [Delivery(0, None, 200, "ok")]
    return wait_published(stack, person, before + 1)


def texts(view: PublishedView) -> list[str]:
    """Return the view's text, block by block, as the person reads it."""
    out = []
    for block in view.blocks:
        if block["type"] in ("header", "section"):
            out.append(block["text"]["text"])
        elif block["type"] == "context":
            out.append(" ".join(e["text"] for e in block["elements"]))
        else:
            out.append(f"({block['type']})")
    return out


def headers(view: PublishedView) -> list[str]:
    return [b["text"]["text"] for b in view.blocks if b["type"] == "header"]


def item(view: PublishedView, key: str, rid: str) -> dict[str, Any]:
    return next(b for b in view.blocks if b["block_id"] == f"{key}:{rid}")


def permalink(stack: Stack, rid: str) -> str:
    """Return what Slack's chat.getPermalink answers for a request's announcement."""
    web = WebClient(token=BOT_TOKEN, base_url=stack.slack.api_url)
    ts = stack.bot.store.get(rid).message_ts
    return str(web.chat_getPermalink(channel=CHANNEL, message_ts=ts)["permalink"])


def test_e2e_home_shows_a_requester_their_open_requests_with_the_clock(
    stack: Stack, clock: FakeClock
) -> None:
    soon = deletion_received(stack, "2026-11-04")  # due Friday 4 December
    later = deletion_received(stack, "2026-11-30", first=4)  # due Wednesday 30 December
    project = stack.cv.data.project_ids()[0][:8]

    view = open_home(stack, REQUESTER)
    assert view.view["type"] == "home"
    assert headers(view) == ["Data-subject requests", "Your open requests (2)"]  # no queue
    assert texts(view)[3:] == [
        "Your open requests (2)",
        f":large_orange_circle: *{soon}* · delete 2 images of project {project}…\n"
        ":calendar: received 2026-11-04 · due 2026-12-04 (in 2 days)\n"
        f"*Waiting for approval* · in <#{CHANNEL}>",
        f"*{later}* · delete 2 images of project {project}…\n"
        ":calendar: received 2026-11-30 · due 2026-12-30 (in 28 days)\n"
        f"*Waiting for approval* · in <#{CHANNEL}>",
    ]
    assert "As of 2026-12-02 07:00 UTC" in texts(view)[1]
    button = item(view, "mine", soon)["accessory"]
    assert (button["text"]["text"], button["value"]) == ("Open thread", soon)
    assert button["url"] == permalink(stack, soon)  # the thread, as Slack links it

    clock.advance(days=3)  # Saturday 5 December: one day overdue
    view = open_home(stack, REQUESTER)
    assert texts(view)[4].startswith(
        f":red_circle: *{soon}* · delete 2 images of project {project}…\n"
        ":calendar: received 2026-11-04 · due 2026-12-04 (overdue by 1 day)"
    )

    stranger = open_home(stack, STRANGER)
    assert texts(stranger)[2:] == [
        "(divider)",
        "Your open requests (0)",
        "You have no open requests. `/cv help` shows what I can do.",
    ]


@pytest.mark.parametrize("approver", [APPROVER, GROUP_APPROVER], ids=["listed", "in-group"])
def test_e2e_home_shows_an_approver_what_waits_and_what_is_due(
    stack: Stack, approver: Person
) -> None:
    soon = deletion_received(stack, "2026-11-04")  # due in 2 days
    later = deletion_received(stack, "2026-11-30", first=4)  # due in 28 days
    project = stack.cv.data.project_ids()[0][:8]

    view = open_home(stack, approver)
    assert headers(view) == [
        "Data-subject requests",
        "Your open requests (0)",
        "Waiting for an approval (2)",
        "Due within 7 days or overdue (1)",
    ]
    soon_text = (
        f":large_orange_circle: *{soon}* · delete 2 images of project {project}…\n"
        ":calendar: received 2026-11-04 · due 2026-12-04 (in 2 days)\n"
        f"*Waiting for approval* · <@{REQUESTER.user_id}> in <#{CHANNEL}>"
    )
    assert item(view, "approval", soon)["text"]["text"] == soon_text
    assert item(view, "approval", later)["text"]["text"].startswith(f"*{later}* ·")
    assert item(view, "due", soon)["text"]["text"] == soon_text
    assert not any(b["block_id"] == f"due:{later}" for b in view.blocks)
    for key, rid in (("approval", soon), ("approval", later), ("due", soon)):
        assert item(view, key, rid)["accessory"]["url"] == permalink(stack, rid)


def test_e2e_home_shows_an_extension_and_what_is_no_longer_due(stack: Stack) -> None:
    rid = deletion_received(stack, "2026-11-04")
    response = stack.command(APPROVER, f'extend {rid} --months 1 --reason "Many at once"')
    assert response.status_code == 200
    assert response.json()["text"].startswith(f"Extended {rid} by 1 month")

    view = open_home(stack, APPROVER)
    assert (
        ":calendar: received 2026-11-04 · due 2027-01-04, extended by 1 month (in 33 days)"
        in (item(view, "approval", rid)["text"]["text"])
    )
    assert texts(view)[-2:] == [
        "Due within 7 days or overdue (0)",
        "Nothing is due within 7 days, and nothing is overdue.",
    ]


def test_e2e_home_a_retried_event_is_answered_without_a_second_publish(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    assert stack.driver is not None
    rid = deletion_received(stack, "2026-11-04")
    body = stack.driver.home_opened_body(REQUESTER.user_id)
    assert stack.driver.post_event(body).status_code == 200
    first = wait_published(stack, REQUESTER, 1)
    assert f"*{rid}*" in texts(first)[4]

    # Slack did not see that answer in time: the same event again, twice (Slack's retries)
    caplog.set_level(logging.INFO, logger="handlers.listeners")
    for retry, reason in ((1, "http_timeout"), (2, "http_error")):
        answer = stack.driver.post_event(body, retry=retry, reason=reason)
        assert (answer.status_code, answer.text) == (200, "")
    # whatever the retries had queued would go before this new event's publish
    open_home(stack, REQUESTER)
    assert len(published(stack, REQUESTER)) == 2
    assert len(stack.slack.calls_to("views.publish")) == 2
    retried = [r.getMessage() for r in caplog.records if "delivered again" in r.getMessage()]
    assert retried == [
        f"event {body['event_id']} delivered again (retry 1, http_timeout): already taken",
        f"event {body['event_id']} delivered again (retry 2, http_error): already taken",
    ]

    # a retry of an event whose first delivery never reached the bot is taken
    lost = stack.driver.home_opened_body(REQUESTER.user_id)
    answer = stack.driver.post_event(lost, retry=1, reason="connection_failed")
    assert answer.status_code == 200
    wait_published(stack, REQUESTER, 3)


def test_e2e_home_the_messages_tab_and_other_bodies_publish_nothing(stack: Stack) -> None:
    assert stack.driver is not None
    driver = stack.driver
    assert driver.home_opened(REQUESTER.user_id, tab="messages") == [Delivery(0, None, 200, "ok")]

    # Slack checks the Request URL of the manifest's event subscription with a challenge.
    challenge = {
        "token": "x",
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY",
        "type": "url_verification",
    }
    raw = json.dumps(challenge).encode()
    answer = driver.post(raw, content_type="application/json")
    assert answer.status_code == 200
    assert answer.json() == {"challenge": challenge["challenge"]}

    # event callbacks Slack would never send: refused, not crashed on (and not published)
    broken = driver.home_opened_body(REQUESTER.user_id)
    for change in ({"event": "app_home_opened"}, {"event_id": None}, {"event": {"tab": "home"}}):
        raw = json.dumps({**broken, **change}).encode()
        assert driver.post(raw, content_type="application/json").status_code == 400
        assert driver.post(raw, content_type="application/json", signature="v0=0").status_code == (
            401
        )
    open_home(stack, REQUESTER)  # the one publish: the messages tab and the refusals made none
    assert len(stack.slack.calls_to("views.publish")) == 1


def test_e2e_home_link_button_click_is_acknowledged_quietly(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    assert stack.driver is not None
    rid = deletion_received(stack, "2026-11-04")
    view = open_home(stack, REQUESTER)
    block = item(view, "mine", rid)
    payload = {
        "type": "block_actions",
        "user": {"id": REQUESTER.user_id, "username": "alice", "team_id": stack.slack.team_id},
        "api_app_id": stack.slack.app_id,
        "token": "emulator-verification-token",
        "container": {"type": "view", "view_id": view.id},
        "trigger_id": stack.slack.new_trigger_id(REQUESTER.user_id),
        "team": {"id": stack.slack.team_id, "domain": stack.slack.team_domain},
        "is_enterprise_install": False,
        "view": view.view,
        "actions": [
            {
                "action_id": "home.open_thread",
                "block_id": block["block_id"],
                "text": block["accessory"]["text"],
                "value": rid,
                "type": "button",
                "action_ts": "1796216771.000100",
            }
        ],
    }
    caplog.set_level(logging.INFO)
    answer = stack.driver.post(stack.driver.interactive_body(payload))
    assert (answer.status_code, answer.text) == (200, "")
    assert not [r for r in caplog.records if "unknown action" in r.getMessage()]
    assert stack.slack.ephemerals(user_id=REQUESTER.user_id) == [] or all(
        "not one this bot knows" not in e.text for e in stack.slack.ephemerals()
    )


def _received(n: int) -> date:
    return date(2026, 11, 1 + n % 29)


def _many(stack: Stack, count: int) -> None:
    """Store `count` deletions waiting for approval, received over the past weeks."""
    store = stack.bot.store
    for n in range(count):
        with store.write() as conn:
            number = store.create_request(
                conn,
                kind=RequestKind.DELETE,
                command={"verb": "delete"},
                text=f"delete images project-{n} --tag t",
                requester=REQUESTER.user_id,
                channel=CHANNEL,
                status=Status.PREVIEWING,
            )
            store.start_clock(conn, number, deadline_of(_received(n)))
            walk(store, conn, number, Status.PENDING)


def test_e2e_home_with_many_requests_stays_within_100_blocks_and_says_so(stack: Stack) -> None:
    _many(stack, 70)
    due_soon = sum(1 for n in range(70) if deadline_of(_received(n)).due <= date(2026, 12, 9))
    assert due_soon == 27
    view = open_home(stack, APPROVER)  # the emulator refuses a view over Slack's limits
    assert len(view.blocks) <= 100
    assert headers(view)[2:] == [
        "Waiting for an approval (70)",
        f"Due within 7 days or overdue ({due_soon})",
    ]
    more = {b["block_id"]: b["elements"][0]["text"] for b in view.blocks if b["type"] == "context"}
    shown = sum(1 for b in view.blocks if b["block_id"].startswith("approval:R-"))
    assert more["approval:more"] == (
        f"Showing {shown} of 70, the soonest due first. `/cv report` lists every request."
    )
    assert 10 <= shown < 70
    due = sum(1 for b in view.blocks if b["block_id"].startswith("due:R-"))
    assert more["due:more"].startswith(f"Showing {due} of {due_soon}")

    mine = open_home(stack, REQUESTER)
    assert headers(mine)[1] == "Your open requests (70)"
    note = next(b for b in mine.blocks if b["block_id"] == "mine:more")["elements"][0]["text"]
    assert note.endswith("`/cv status --all` posts every one of yours as a file.")


def test_e2e_home_when_slack_does_not_say_who_is_an_approver_shows_their_own_with_a_note(
    stack: Stack,
) -> None:
    # carol is an approver through the user group only; Slack fails to list its members (the
    # first lookup of the group: nothing is cached yet).
    stack.slack.inject_error("usergroups.users.list", "fatal_error")
    view = open_home(stack, GROUP_APPROVER)
    assert texts(view)[2] == (
        ":warning: Slack did not say in time whether you are in an approvers' user group, so"
        " only your own requests are shown. Open this tab again in a moment."
    )
    assert headers(view) == ["Data-subject requests", "Your open requests (0)"]
    view = open_home(stack, GROUP_APPROVER)  # Slack answers again: the approvers' lists
    assert headers(view)[2:] == ["Waiting for an approval (0)", "Due within 7 days or overdue (0)"]
    assert not any(":warning:" in text for text in texts(view))


def test_e2e_home_a_refused_publish_is_logged_and_the_next_opening_publishes(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    assert stack.driver is not None
    caplog.set_level(logging.WARNING, logger="handlers.listeners")
    stack.slack.inject_error("views.publish", "fatal_error")
    assert stack.driver.home_opened(REQUESTER.user_id) == [Delivery(0, None, 200, "ok")]
    assert stack.slack.wait_for(
        lambda: any(c.error == "fatal_error" for c in stack.slack.calls_to("views.publish"))
    )
    assert stack.slack.wait_for(
        lambda: any("views.publish" in r.getMessage() for r in caplog.records)
    )
    assert [r.getMessage() for r in caplog.records if "views.publish" in r.getMessage()] == [
        f"views.publish for {REQUESTER.user_id} failed: fatal_error"
    ]
    assert stack.slack.home(REQUESTER.user_id) is None
    assert headers(open_home(stack, REQUESTER))[1] == "Your open requests (0)"


def test_e2e_home_when_the_requests_cannot_be_read_says_so_and_recovers(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    deletion_received(stack, "2026-11-04")
    # A fault the bot cannot read past: its deadlines table is gone (renamed behind its back).
    conn = sqlite3.connect(stack.config.database)
    try:
        conn.execute("ALTER TABLE deadlines RENAME TO deadlines_away")
        conn.commit()
        caplog.set_level(logging.ERROR, logger="handlers.listeners")
        view = open_home(stack, REQUESTER)
        assert texts(view) == [
            "Data-subject requests",
            ":warning: Something went wrong on my side while reading the requests for this tab"
            " (it is logged), so it shows none of them (at 2026-12-02 07:00 UTC). Reopen this"
            " tab in a moment; `/cv status` shows your requests meanwhile.",
        ]
        [logged] = [r for r in caplog.records if "App Home dashboard" in r.getMessage()]
        assert logged.exc_info is not None  # with its traceback
        conn.execute("ALTER TABLE deadlines_away RENAME TO deadlines")
        conn.commit()
    finally:
        conn.close()
    assert headers(open_home(stack, REQUESTER))[1] == "Your open requests (1)"
