"""The App Home tab: a person's dashboard (`bot.dashboard.Dashboard`) as a Block Kit `home`
view for views.publish. Pure.

Each request is one section: its id and what it asks, its statutory clock (received, due, the
days left or overdue, an extension), its status (`bot.lifecycle` labels) and what it waits on,
with a link button to its thread. The thread's permalink is built from the workspace's URL
(auth.test's `url`) and the announcement's channel and ts, in the form chat.getPermalink
answers (`https://acme.slack.com/archives/C123/p1700000000000100`): no Web API call per
request. A request whose announcement is not posted yet, or a workspace URL not known yet,
links to the channel instead (Slack's documented `https://slack.com/app_redirect?channel=`).

Limits (handlers/limits.py): at most 100 blocks in a Home tab, 3,000 units per section, and all
block text within MAX_BLOCKS_TEXT (Slack documents no total for views; the messages' one is
kept, so a view Slack might measure like a message still fits). Requests are added to the
lists in turn while both budgets allow; a list that shows fewer than it holds says "Showing N
of M" and where the rest are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

from bot.dashboard import Dashboard, Listing
from bot.deadline import DUE_SOON_DAYS, days_left
from bot.parser import slack_escape
from bot.reminders import Tracked
from handlers import limits
from handlers.blocks import mrkdwn, plain

Block = dict[str, Any]

MAX_HOME_BLOCKS = 100  # Slack's Block Kit reference: a Home tab holds up to 100 blocks
OPEN_THREAD = "home.open_thread"  # the link buttons' action_id (Slack still sends the click)
SUMMARY_UNITS = 150  # a request's one-line description, cut beyond this
# Room kept for a list's "Showing N of M ..." line, which is written once the items are known.
_MORE_UNITS = 200


@dataclass(frozen=True)
class Workspace:
    """Where thread links point: the workspace's URL and id, from auth.test (None: unknown)."""

    url: str | None = None  # "https://acme.slack.com/"
    team_id: str | None = None


def thread_link(workspace: Workspace, channel: str, message_ts: str | None) -> str:
    """Return the link to a request's thread (its announcement), or to its channel."""
    if message_ts and workspace.url:
        return f"{workspace.url.rstrip('/')}/archives/{channel}/p{message_ts.replace('.', '')}"
    query = {"channel": channel, **({"team": workspace.team_id} if workspace.team_id else {})}
    return f"https://slack.com/app_redirect?{urlencode(query)}"


def item_text(item: Tracked, today: date, *, command: str, whose: bool) -> str:
    """Return one request's text (mrkdwn): id, what, clock, status and what it waits on.

    Overdue: a red mark; due within DUE_SOON_DAYS: an orange one. `whose`: say who asked
    (the approvers' lists).
    """
    left = None if item.deadline is None else days_left(item.deadline.due, today)
    mark = ""
    if left is not None and left < 0:
        mark = ":red_circle: "
    elif left is not None and left <= DUE_SOON_DAYS:
        mark = ":large_orange_circle: "
    summary = slack_escape(limits.cut(item.summary, SUMMARY_UNITS))
    lines = [f"{mark}*{item.request_id}* · {summary}"]
    if item.deadline is None:
        lines.append(":calendar: no due date recorded (requested before the statutory clock)")
    else:
        lines.append(f":calendar: {item.deadline.describe(today)}")
    # The label says what it waits on (approval, running, failed); a held delivery it cannot.
    state = f"*{item.status_label}*"
    if item.held:
        state += f" · {item.waits_on}: `{command} resend {item.request_id}` posts it again"
    elif item.status == "failed":
        state += f" · `{command} retry {item.request_id}` resumes it"
    if whose:
        state += f" · <@{item.requester}> in <#{item.channel}>"
    else:
        state += f" · in <#{item.channel}>"
    lines.append(state)
    return "\n".join(lines)


def item_block(
    key: str, item: Tracked, dashboard: Dashboard, workspace: Workspace, *, command: str
) -> Block:
    """Return one request's section, with the link button to its thread."""
    text = item_text(item, dashboard.today, command=command, whose=key != "mine")
    return {
        "type": "section",
        "block_id": f"{key}:{item.request_id}",
        "text": mrkdwn(text),
        "accessory": {
            "type": "button",
            "action_id": OPEN_THREAD,
            "text": plain("Open thread", limits.MAX_BUTTON_TEXT),
            "url": thread_link(workspace, item.channel, item.message_ts),
            "value": item.request_id,
        },
    }


@dataclass(frozen=True)
class _List:
    key: str
    title: str
    listing: Listing
    empty: str
    rest: str  # where the requests not shown are


def _lists(dashboard: Dashboard, command: str) -> list[_List]:
    lists = [
        _List(
            "mine",
            "Your open requests",
            dashboard.mine,
            f"You have no open requests. `{command} help` shows what I can do.",
            f"`{command} status --all` posts every one of yours as a file.",
        )
    ]
    if dashboard.awaiting_approval is not None:
        lists.append(
            _List(
                "approval",
                "Waiting for an approval",
                dashboard.awaiting_approval,
                "Nothing waits for an approval.",
                f"`{command} report` lists every request.",
            )
        )
    if dashboard.due_soon is not None:
        lists.append(
            _List(
                "due",
                f"Due within {DUE_SOON_DAYS} days or overdue",
                dashboard.due_soon,
                f"Nothing is due within {DUE_SOON_DAYS} days, and nothing is overdue.",
                f"`{command} report` lists every request.",
            )
        )
    return lists


def _fit(
    lists: Sequence[_List],
    dashboard: Dashboard,
    workspace: Workspace,
    command: str,
    *,
    blocks_left: int,
    units_left: int,
) -> list[list[Block]]:
    """Return each list's item blocks: added in turn (most urgent first) while they fit."""
    chosen: list[list[Block]] = [[] for _ in lists]
    full = [False] * len(lists)
    for index in range(max((len(x.listing.items) for x in lists), default=0)):
        for n, listed in enumerate(lists):
            if full[n] or index >= len(listed.listing.items):
                continue
            block = item_block(
                listed.key, listed.listing.items[index], dashboard, workspace, command=command
            )
            size = limits.blocks_text_units([block])
            if blocks_left < 1 or size > units_left:
                full[n] = True  # keep each list a prefix: never skip one to show a later one
                continue
            chosen[n].append(block)
            blocks_left -= 1
            units_left -= size
    return chosen


def problem_view(problem: str, at: datetime, *, command: str = "/cv") -> Block:
    """Return the `home` view that says why the dashboard could not be read at `at`."""
    stamp = at.strftime("%Y-%m-%d %H:%M UTC")
    return {
        "type": "home",
        "callback_id": "home",
        "blocks": [
            {"type": "header", "text": plain("Data-subject requests", limits.MAX_HEADER_TEXT)},
            {
                "type": "section",
                "block_id": "problem",
                "text": mrkdwn(
                    f":warning: {slack_escape(problem)} (at {stamp}). Reopen this tab in a"
                    f" moment; `{command} status` shows your requests meanwhile."
                ),
            },
        ],
    }


def home_view(
    dashboard: Dashboard,
    workspace: Workspace,
    *,
    command: str = "/cv",
    text_budget: int = limits.MAX_BLOCKS_TEXT,
) -> Block:
    """Return the `home` view of `dashboard`: within 100 blocks and Slack's text limits.

    `text_budget`: the most block text in all (UTF-16 units); the default keeps a view within
    what Slack takes in a message, in case it measures a view the same way.
    """
    at = dashboard.at.strftime("%Y-%m-%d %H:%M UTC")
    head: list[Block] = [
        {"type": "header", "text": plain("Data-subject requests", limits.MAX_HEADER_TEXT)},
        {
            "type": "context",
            "elements": [
                mrkdwn(
                    slack_escape(
                        f"As of {at}: what is open, when it is due (GDPR Art. 12(3): one month"
                        " from receipt, extendable by two) and what it waits on. Reopen this"
                        f" tab to refresh; `{command} status <request-id>` shows one request."
                    )
                )
            ],
        },
    ]
    if dashboard.note:
        head.append(
            {"type": "section", "text": mrkdwn(f":warning: {slack_escape(dashboard.note)}")}
        )
    lists = _lists(dashboard, command)
    # Per list: a divider, its header, its empty or "showing" line.
    fixed = len(head) + 3 * len(lists)
    fixed_units = (
        limits.blocks_text_units(head)
        + sum(limits.units(x.title) + 16 for x in lists)
        + _MORE_UNITS * len(lists)
    )
    chosen = _fit(
        lists,
        dashboard,
        workspace,
        command,
        blocks_left=MAX_HOME_BLOCKS - fixed,
        units_left=text_budget - fixed_units,
    )
    blocks = list(head)
    for listed, items in zip(lists, chosen, strict=True):
        total = listed.listing.total
        blocks.append({"type": "divider"})
        blocks.append(
            {
                "type": "header",
                "block_id": f"{listed.key}:header",
                "text": plain(f"{listed.title} ({total:,})", limits.MAX_HEADER_TEXT),
            }
        )
        blocks.extend(items)
        if total == 0:
            blocks.append(
                {"type": "section", "block_id": f"{listed.key}:empty", "text": mrkdwn(listed.empty)}
            )
        elif len(items) < total:
            blocks.append(
                {
                    "type": "context",
                    "block_id": f"{listed.key}:more",
                    "elements": [
                        mrkdwn(
                            f"Showing {len(items):,} of {total:,}, the soonest due first."
                            f" {listed.rest}"
                        )
                    ],
                }
            )
    return {"type": "home", "callback_id": "home", "blocks": blocks}
