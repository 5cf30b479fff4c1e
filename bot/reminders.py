"""The daily digest of statutory deadlines, one message per channel. Pure.

Once a day, from `BOT_REMINDER_HOUR_UTC` on, each channel that has open requests due within
`DUE_SOON_DAYS` days, or overdue, gets one message listing them, overdue first, each with its
clock and what it waits on (approval, running, failed, delivery held) and, when extended, the
extension. A channel with nothing due gets nothing. `digest_day` says whether a day's digest is
due; the store records the day in the same transaction as it queues the posts, so a restart
neither repeats a day nor skips one (`bot.service.Service.send_digest`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from bot import parser, wording
from bot.deadline import DUE_SOON_DAYS, Deadline, days_left, due_soon, waiting_on
from bot.lifecycle import RequestRecord, Status

# A digest lists at most this many requests (Slack's 4,000 characters), then how many more.
DIGEST_SHOWN = 25


@dataclass(frozen=True)
class Tracked:
    """An open request as the digest and the dashboard show it."""

    request_id: str  # "R-1042"
    summary: str  # "export images of project 6c1f2a3b…"
    requester: str
    channel: str
    status: str
    deadline: Deadline | None  # None: stored before the clock existed
    held: bool = False  # a delivery of it that Slack refused waits for `resend`
    message_ts: str | None = None  # its announcement, the parent of its thread (once posted)

    @property
    def waits_on(self) -> str:
        """Return what it waits on: approval, running, failed or delivery held."""
        return waiting_on(self.status, held=self.held)

    @property
    def status_label(self) -> str:
        """Return its status as people read it ("Waiting for approval")."""
        return Status(self.status).label


def summary_of(record: RequestRecord) -> str:
    """Return the one-line description of a stored request ("export project 6c1f2a3b…")."""
    try:
        return parser.load_request(record.command).describe()
    except ValueError:
        return parser.slack_unescape(record.text)


def tracked_of(record: RequestRecord, *, held: bool = False) -> Tracked:
    """Return the digest's and dashboard's view of a stored request."""
    return Tracked(
        request_id=record.id,
        summary=summary_of(record),
        requester=record.requester,
        channel=record.channel,
        status=str(record.status),
        deadline=record.deadline,
        held=held,
        message_ts=record.message_ts,
    )


def digest_day(now: datetime, hour: int, last_sent: date | None) -> date | None:
    """Return the day whose digest is due at `now`, or None (before the hour, or sent)."""
    today = now.date()
    if now.hour < hour or (last_sent is not None and last_sent >= today):
        return None
    return today


def line(item: Tracked, today: date) -> str:
    """Return one request's digest line (mrkdwn; the summary holds only ids and words)."""
    clock = "no due date recorded" if item.deadline is None else item.deadline.describe(today)
    text = (
        f"• *{item.request_id}* {item.summary} · <@{item.requester}> · {clock}"
        f" · waits on: {item.waits_on}"
    )
    if item.deadline is not None and item.deadline.extended:
        text += f" (extended to {item.deadline.due.isoformat()})"
    return text


def digest_text(items: Iterable[Tracked], today: date, *, command: str = "/cv") -> str | None:
    """Return one channel's digest of `items` due soon or overdue on `today`; None if none."""
    due = sorted(
        (
            (item.deadline, item)
            for item in items
            if item.deadline is not None and due_soon(item.deadline, today)
        ),
        key=lambda pair: (pair[0].due, pair[1].request_id),
    )
    if not due:
        return None
    overdue = sum(1 for deadline, _ in due if days_left(deadline.due, today) < 0)
    parts = []
    if overdue:
        parts.append(f"{wording.count(overdue, 'request')} overdue")
    if len(due) > overdue:
        soon = len(due) - overdue
        parts.append(f"{wording.count(soon, 'request')} due within {DUE_SOON_DAYS} days")
    lines = [f":alarm_clock: *Statutory deadlines, {today.isoformat()}*: {' and '.join(parts)}."]
    lines += [line(item, today) for _, item in due[:DIGEST_SHOWN]]
    if len(due) > DIGEST_SHOWN:
        lines.append(
            f"…and {len(due) - DIGEST_SHOWN:,} more: `{command} report` lists every request."
        )
    lines.append(
        f"`{command} status <request-id>` shows one; an approver may extend one before its first"
        f' due date: `{command} extend <request-id> --months 1|2 --reason "..."`.'
    )
    return "\n".join(lines)


def digests(items: Sequence[Tracked], today: date, *, command: str = "/cv") -> Mapping[str, str]:
    """Return each channel's digest on `today` (channels with nothing due are left out)."""
    channels: dict[str, list[Tracked]] = {}
    for item in items:
        channels.setdefault(item.channel, []).append(item)
    texts = {
        channel: digest_text(listed, today, command=command)
        for channel, listed in sorted(channels.items())
    }
    return {channel: text for channel, text in texts.items() if text is not None}
