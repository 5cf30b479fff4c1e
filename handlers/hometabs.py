"""Publishing people's App Home tabs (views.publish): when one opens it, and again when a
request it shows changes state.

Slack never asks the app for a Home tab again: it shows the view last published until the app
publishes another (api.slack.com/surfaces/app-home, "app_home_opened" is only sent when the
person opens the tab). So after each change of a request's state (its announcement, which
every change re-renders, was delivered) the tabs of the people it concerns are published
again: its requester's, and those of the people whose last view showed the approvers' lists
(every request waiting for an approval or due soon). Only people who opened their tab since the
bot started are republished; the others get a fresh view when they open it.

Coalesced: a person waiting to be republished is queued once, and the view is read when their
turn comes, so it shows the latest state; a person is republished at most every `gap`
seconds, so a burst of changes costs one publish. Paced: views.publish is Tier 4 ("100+ per
minute" per app per workspace, api.slack.com/methods/views.publish); the publishes spend the
outbox's Tier 4 budget (`handlers.outbox.Pacer`) and a 429 pauses them for its Retry-After.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.service import Service
from handlers import home
from handlers.outbox import TIER4_BUDGET, Pacer

log = logging.getLogger(__name__)

HOME_PROBLEM = (
    "Something went wrong on my side while reading the requests for this tab (it is logged),"
    " so it shows none of them"
)
# A person's tab is published again at most this often (seconds): the changes meanwhile are
# coalesced into the next publish.
PERSON_GAP = 2.0
BUDGET = "views.publish"


class HomeTabs:
    """Publishes Home tabs: at once when opened, paced and coalesced when requests change."""

    def __init__(
        self,
        client: WebClient,
        service: Service,
        *,
        workspace: Callable[[], home.Workspace] = home.Workspace,
        command: str = "/cv",
        gap: float = PERSON_GAP,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.service = service
        self.workspace = workspace
        self.command = command
        self.gap = gap
        self.pacer = Pacer(lambda _: TIER4_BUDGET, monotonic=monotonic)
        self._lock = threading.Lock()
        self._viewers: dict[str, bool] = {}  # who opened their tab -> shown the approvers' lists
        self._last: dict[str, float] = {}  # user -> monotonic time of their last publish
        self._due: dict[str, float] = {}  # users waiting to be republished -> not before
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start republishing in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="home-tabs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop republishing (a tab waiting keeps its last view)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def opened(self, user: str) -> None:
        """Publish `user`'s tab now: they are looking at it (app_home_opened)."""
        self._publish(user)

    def changed(self, requester: str) -> None:
        """Queue the tabs a change of one of `requester`'s requests concerns."""
        now = self.pacer.monotonic()
        with self._lock:
            concerned = [u for u, approver in self._viewers.items() if approver or u == requester]
            for user in concerned:
                due = max(now, self._last.get(user, 0.0) + self.gap)
                self._due[user] = min(self._due.get(user, due), due)
        if concerned:
            self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            now = self.pacer.monotonic()
            with self._lock:
                ready = sorted((at, u) for u, at in self._due.items() if at <= now)
                soonest = min(self._due.values(), default=None)
            for _, user in ready:
                if self._stopping.is_set():
                    break
                if self.pacer.wait(BUDGET) > 0:
                    break  # the budget is spent: the rest wait for the next round
                self._publish(user)
            pause = 0.5 if soonest is None else min(0.5, max(0.02, soonest - now))
            if ready:
                pause = min(pause, max(0.02, self.pacer.wait(BUDGET)))
            self._wake.wait(pause)
            self._wake.clear()

    def _publish(self, user: str) -> None:
        """Read `user`'s dashboard and publish it (a problem view when it cannot be read)."""
        with self._lock:
            self._due.pop(user, None)  # what this view reads covers the changes queued so far
        approver = False
        try:
            dashboard = self.service.dashboard(user)
            approver = dashboard.approver
            view = home.home_view(dashboard, self.workspace(), command=self.command)
        except Exception:
            # The person sees the tab, not the log: say that this view is not the answer.
            log.exception("could not read the App Home dashboard of %s", user)
            view = home.problem_view(HOME_PROBLEM, self.service.clock.now(), command=self.command)
        self.pacer.spend(BUDGET)
        with self._lock:
            self._viewers[user] = approver
            self._last[user] = self.pacer.monotonic()
        try:
            self.client.views_publish(user_id=user, view=view)
        except SlackApiError as exc:
            error = exc.response.get("error") or "error"
            if exc.response.status_code == 429 or error == "ratelimited":
                retry_after = float(exc.response.headers.get("Retry-After", "1") or 1)
                self.pacer.pause(BUDGET, retry_after)
                with self._lock:  # published again once Slack takes calls again
                    self._due[user] = self.pacer.monotonic() + retry_after
                return
            # Nobody to tell: the tab shows its previous view; reopening it tries again.
            log.warning("views.publish for %s failed: %s", user, error)
