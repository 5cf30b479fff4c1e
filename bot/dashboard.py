"""What a person's App Home tab shows: the dashboard of open requests. Pure values.

Everyone sees their own open requests; approvers also see every request waiting for an
approval and every one due within `DUE_SOON_DAYS` days or overdue (`bot.policy.may_see_queue`).
Each list holds at most `DASHBOARD_SHOWN` requests, most urgent first (oldest due date), beside
how many there are, so the view can say "showing 20 of 134" and where the rest are. Built by
`bot.service.Service.dashboard`; rendered as Block Kit by `handlers.home`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from bot.reminders import Tracked

# At most this many requests per list: three lists fit a Home tab's 100 blocks with room to
# spare (the view may show fewer to stay within Slack's text limits, and says so).
DASHBOARD_SHOWN = 20


@dataclass(frozen=True)
class Listing:
    """Some requests of a list, most urgent first, and how many the list holds in all."""

    items: tuple[Tracked, ...]
    total: int


@dataclass(frozen=True)
class Dashboard:
    """One person's App Home: their requests and, for approvers, the approvers' lists."""

    user_id: str
    at: datetime  # when it was read (UTC)
    mine: Listing
    awaiting_approval: Listing | None = None  # None: not shown (not an approver)
    due_soon: Listing | None = None  # None: not shown (not an approver)
    note: str | None = None  # what could not be checked ("Slack did not say whether ...")

    @property
    def today(self) -> date:
        """Return the day the clocks count from (UTC)."""
        return self.at.date()

    @property
    def approver(self) -> bool:
        """True when the approvers' lists are shown."""
        return self.awaiting_approval is not None
