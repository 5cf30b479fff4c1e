"""The App Home's pure parts: the dashboard's Block Kit (handlers.home) within Slack's limits,
the thread links, who sees the approvers' lists (bot.policy), and the event ids taken once
(handlers.events)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from bot.dashboard import Dashboard, Listing
from bot.deadline import deadline_of
from bot.policy import Actor, Rules, may_see_queue
from bot.reminders import Tracked
from emulators.slack.blockkit import MAX_BLOCKS_TEXT, home_view_problems
from handlers import limits
from handlers.events import SeenEvents
from handlers.home import MAX_HOME_BLOCKS, Workspace, home_view, item_text, thread_link

AT = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
TODAY = AT.date()
SLACK = Workspace("https://acme.slack.com/", "T0ACME")


def tracked(n: int, received: str = "2026-11-04", **changes: object) -> Tracked:
    fields: dict[str, object] = {
        "request_id": f"R-{n}",
        "summary": f"delete 2 images of project {n:08d}…",
        "requester": "U0ALICE",
        "channel": "C0DSR",
        "status": "pending",
        "deadline": deadline_of(date.fromisoformat(received)),
        "message_ts": f"1796216771.{n:06d}",
    }
    fields.update(changes)
    return Tracked(**fields)  # type: ignore[arg-type]


def listing(*items: Tracked, total: int | None = None) -> Listing:
    return Listing(items, len(items) if total is None else total)


def texts(view: dict[str, object]) -> list[str]:
    blocks = view["blocks"]
    assert isinstance(blocks, list)
    out = []
    for block in blocks:
        if block["type"] in ("header", "section"):
            out.append(block["text"]["text"])
        elif block["type"] == "context":
            out.append(block["elements"][0]["text"])
    return out


def test_home_thread_link_is_the_permalink_or_the_channel() -> None:
    assert thread_link(SLACK, "C0DSR", "1796216771.000100") == (
        "https://acme.slack.com/archives/C0DSR/p1796216771000100"
    )
    # announcement not posted yet, or the workspace URL not known yet: the channel
    assert thread_link(SLACK, "C0DSR", None) == (
        "https://slack.com/app_redirect?channel=C0DSR&team=T0ACME"
    )
    assert thread_link(Workspace(), "C0DSR", "1.2") == (
        "https://slack.com/app_redirect?channel=C0DSR"
    )


@pytest.mark.parametrize(
    ("changes", "today", "expected"),
    [
        (
            {},
            "2026-12-02",
            ":large_orange_circle: *R-7* · delete 2 images of project 00000007…\n"
            ":calendar: received 2026-11-04 · due 2026-12-04 (in 2 days)\n"
            "*Waiting for approval* · in <#C0DSR>",
        ),
        (
            {},
            "2026-11-20",  # due in 14 days: no mark
            "*R-7* · delete 2 images of project 00000007…\n"
            ":calendar: received 2026-11-04 · due 2026-12-04 (in 14 days)\n"
            "*Waiting for approval* · in <#C0DSR>",
        ),
        (
            {"status": "failed"},
            "2026-12-07",
            ":red_circle: *R-7* · delete 2 images of project 00000007…\n"
            ":calendar: received 2026-11-04 · due 2026-12-04 (overdue by 3 days)\n"
            "*Failed* · `/cv retry R-7` resumes it · in <#C0DSR>",
        ),
        (
            {"status": "running", "held": True},
            "2026-12-02",
            ":large_orange_circle: *R-7* · delete 2 images of project 00000007…\n"
            ":calendar: received 2026-11-04 · due 2026-12-04 (in 2 days)\n"
            "*Running* · delivery held: `/cv resend R-7` posts it again · in <#C0DSR>",
        ),
        (
            {"deadline": deadline_of(date(2026, 11, 4), 2), "status": "queued"},
            "2026-12-02",
            "*R-7* · delete 2 images of project 00000007…\n"
            ":calendar: received 2026-11-04 · due 2027-01-04, extended by 1 month (in 33 days)\n"
            "*Queued* · in <#C0DSR>",
        ),
        (
            {"deadline": None, "summary": "<!channel> & <https://x|y>"},
            "2026-12-02",
            "*R-7* · &lt;!channel&gt; &amp; &lt;https://x|y&gt;\n"
            ":calendar: no due date recorded (requested before the statutory clock)\n"
            "*Waiting for approval* · in <#C0DSR>",
        ),
    ],
    ids=["due-soon", "not-yet", "failed-overdue", "held", "extended", "no-clock-escaped"],
)
def test_home_item_text(changes: dict[str, object], today: str, expected: str) -> None:
    item = replace(tracked(7), **changes)  # type: ignore[arg-type]
    assert item_text(item, date.fromisoformat(today), command="/cv", whose=False) == expected


def test_home_item_text_for_approvers_names_the_requester() -> None:
    text = item_text(tracked(7), TODAY, command="/dsr", whose=True)
    assert text.endswith("*Waiting for approval* · <@U0ALICE> in <#C0DSR>")


def test_home_requester_sees_only_their_list() -> None:
    view = home_view(Dashboard("U0ALICE", AT, listing(tracked(1))), SLACK)
    assert view["type"] == "home"
    assert texts(view)[2] == "Your open requests (1)"
    assert len(texts(view)) == 4
    assert home_view_problems(view) == []


def test_home_approver_sees_three_lists_and_what_is_empty() -> None:
    dashboard = Dashboard(
        "U0BOB",
        AT,
        listing(),
        awaiting_approval=listing(tracked(1)),
        due_soon=listing(),
        note="Slack did not say in time whether you are in an approvers' user group.",
    )
    view = home_view(dashboard, SLACK, command="/dsr")
    assert texts(view)[2:] == [
        ":warning: Slack did not say in time whether you are in an approvers' user group.",
        "Your open requests (0)",
        "You have no open requests. `/dsr help` shows what I can do.",
        "Waiting for an approval (1)",
        texts(view)[6],
        "Due within 7 days or overdue (0)",
        "Nothing is due within 7 days, and nothing is overdue.",
    ]
    assert texts(view)[6].startswith(":large_orange_circle: *R-1* ·")


def test_home_many_requests_fit_100_blocks_and_slacks_text_limits() -> None:
    # More than any list is read with, each line as long as a summary gets, emoji included.
    long = "delete images of project 🙂 " + "x" * 300
    many = [tracked(n, summary=long, held=n % 2 == 0) for n in range(200)]
    dashboard = Dashboard(
        "U0BOB",
        AT,
        listing(*many[:120], total=500),
        awaiting_approval=listing(*many[:120], total=300),
        due_soon=listing(*many[:120], total=120),
    )
    view = home_view(dashboard, SLACK)
    blocks = view["blocks"]
    assert isinstance(blocks, list)
    assert len(blocks) <= MAX_HOME_BLOCKS
    assert limits.blocks_text_units(blocks) <= limits.MAX_BLOCKS_TEXT < MAX_BLOCKS_TEXT
    assert home_view_problems(view) == []  # what the emulator (strict variant) accepts
    for key, total in (("mine", 500), ("approval", 300), ("due", 120)):
        ids = [str(b.get("block_id", "")) for b in blocks]
        shown = [i for i in ids if i.startswith(f"{key}:R-")]
        assert shown == [f"{key}:R-{n}" for n in range(len(shown))]  # a prefix: most urgent
        assert len(shown) >= 5  # every list gets its share, in turn
        more = next(b for b in blocks if b.get("block_id") == f"{key}:more")
        assert more["elements"][0]["text"].startswith(f"Showing {len(shown)} of {total},")


def test_home_100_blocks_hold_where_slack_counts_no_total_text() -> None:
    short = [replace(tracked(n), summary="x", channel="C") for n in range(60)]
    dashboard = Dashboard(
        "U0BOB",
        AT,
        listing(*short),
        awaiting_approval=listing(*short),
        due_soon=listing(*short),
    )
    view = home_view(dashboard, Workspace(), text_budget=10**6)
    assert len(view["blocks"]) == MAX_HOME_BLOCKS
    assert home_view_problems(view, max_text=None) == []


@pytest.mark.parametrize(
    ("user", "groups", "allowed"),
    [("U0BOB", (), True), ("U0CAROL", ("S0PRIVACY",), True), ("U0ALICE", (), False)],
)
def test_policy_only_approvers_see_every_open_request(
    user: str, groups: tuple[str, ...], allowed: bool
) -> None:
    rules = Rules(approvers=frozenset({"U0BOB", "S0PRIVACY"}))
    assert bool(may_see_queue(rules, Actor(user, frozenset(groups)))) is allowed


def test_events_each_event_id_is_taken_once_for_an_hour() -> None:
    now = [0.0]
    seen = SeenEvents(ttl=3600.0, most=3, monotonic=lambda: now[0])
    assert (seen.first("Ev1"), seen.first("Ev1"), seen.first("Ev2")) == (True, False, True)
    now[0] = 3599.0
    assert seen.first("Ev1") is False  # Slack's last retry comes about 6 minutes in
    now[0] = 3601.0
    assert seen.first("Ev1") is True  # forgotten after an hour
    for n in range(3, 7):
        seen.first(f"Ev{n}")
    assert seen.first("Ev3") is True  # bounded: the oldest went first
