"""Slack lookups behind the service's `Directory`: user groups and channels, cached briefly.

A decision waits for these lookups only until its deadline (`LOOKUP_DEADLINE`, set by the
listener from the moment Slack's request arrived; `budget` seconds from the call otherwise).
The calls themselves run on the directory's own small pool with slack-sdk's usual timeout and
retries: a lookup that misses the deadline keeps running and fills the cache for the next try,
while the decision refuses at once with `SlackLookupError` ("Slack is slow; try again") before
it has written anything. One call per group or channel is in flight at a time (usergroups.users.list
is Tier 2), however many decisions wait for it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.errors import SlackLookupError
from bot.policy import ChannelInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

LOOKUP_BUDGET = 1.5  # seconds; Slack wants the acknowledgement within 3
# The monotonic time by which the current decision's lookups must have answered (None: none
# set, `budget` from each call). Set by handlers.listeners around each decision.
LOOKUP_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "LOOKUP_DEADLINE", default=None
)
# Answers that say something about the group itself: it has no members this bot can see.
_GROUP_ANSWERS = frozenset({"no_such_subteam", "plan_upgrade_required", "missing_scope"})


def channel_info_of(data: Mapping[str, Any]) -> ChannelInfo:
    """Return what the rules need of the `channel` object conversations.info answered."""
    return ChannelInfo(
        exists=True,
        is_member=bool(data.get("is_member")) or bool(data.get("is_im")),
        is_private=bool(data.get("is_private")) or bool(data.get("is_group")),
        is_im=bool(data.get("is_im")),
        is_mpim=bool(data.get("is_mpim")),
        external=bool(data.get("is_ext_shared")) or bool(data.get("is_pending_ext_shared")),
        org_wide=bool(data.get("is_org_shared")),
    )


class SlackDirectory:
    """Caches usergroups.users.list (Tier 2) and conversations.info; refreshes on a miss."""

    def __init__(
        self,
        client: WebClient,
        *,
        ttl: float = 300.0,
        miss_refresh_after: float = 10.0,
        channel_ttl: float = 30.0,
        budget: float = LOOKUP_BUDGET,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.miss_refresh_after = miss_refresh_after
        self.channel_ttl = channel_ttl
        self.budget = budget
        self.monotonic = monotonic
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._channels: dict[str, tuple[float, ChannelInfo]] = {}
        self._inflight: dict[tuple[str, str], Future[Any]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="slack-lookup")

    def close(self) -> None:
        """Stop taking lookups (those in flight finish in the background)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- lookups with a deadline -------------------------------------------------------------

    def _fetch(self, method: str, key: str, call: Callable[[], T]) -> Future[T]:
        """Return the future of `call`, shared with any identical lookup already in flight."""
        with self._lock:
            running = self._inflight.get((method, key))
            if running is not None:
                return running

            def run() -> T:
                try:
                    return call()
                finally:
                    with self._lock:
                        self._inflight.pop((method, key), None)

            future = self._pool.submit(run)
            self._inflight[(method, key)] = future
            return future

    def _await(self, method: str, futures: dict[str, Future[T]]) -> dict[str, T]:
        """Return each lookup's result by the deadline; raise SlackLookupError otherwise."""
        deadline = LOOKUP_DEADLINE.get()
        now = self.monotonic()
        if deadline is None:
            deadline = now + self.budget
        _, late = wait(list(futures.values()), timeout=max(0.0, deadline - now))
        if late:
            log.warning("%s did not answer within the decision's time budget", method)
            raise SlackLookupError(
                f"Slack is slow to answer right now ({method} did not answer in time), so I "
                "could not check this and nothing was recorded. Please try again in a moment."
            )
        results: dict[str, T] = {}
        for key, future in futures.items():
            try:
                results[key] = future.result()
            except SlackApiError as exc:
                error = str(exc.response.get("error") or f"HTTP {exc.response.status_code}")
                raise SlackLookupError(
                    f"Slack did not answer {method} ({error}), so I could not check this and "
                    "nothing was recorded. Please try again in a moment."
                ) from None
            except OSError as exc:  # urllib's URLError, timeouts, refused connections
                raise SlackLookupError(
                    f"Slack could not be reached for {method} ({type(exc).__name__}), so I "
                    "could not check this and nothing was recorded. Please try again in a moment."
                ) from None
        return results

    # -- user groups -------------------------------------------------------------------------

    def _group_members(self, group_id: str) -> tuple[float, frozenset[str]]:
        started = self.monotonic()
        try:
            response = self.client.usergroups_users_list(usergroup=group_id)
            members = frozenset(response.get("users") or ())
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error not in _GROUP_ANSWERS:
                raise
            log.warning("usergroups.users.list %s: %s (counted as no members)", group_id, error)
            members = frozenset()
        with self._lock:
            self._groups[group_id] = (started, members)
        return started, members

    def groups_of(
        self, user_id: str, groups: frozenset[str], *, max_age: float | None = None
    ) -> frozenset[str]:
        """Return the groups among `groups` that contain `user_id`.

        A cached member list answers "yes" while younger than `max_age` (default: the TTL) and
        "no" while younger than the miss refresh; otherwise Slack is asked, within the deadline.
        Raises SlackLookupError when Slack does not answer in time.
        """
        yes_age = self.ttl if max_age is None else max_age
        no_age = min(self.miss_refresh_after, yes_age)
        now = self.monotonic()
        found: set[str] = set()
        pending: dict[str, Future[tuple[float, frozenset[str]]]] = {}
        for group in sorted(groups):
            with self._lock:
                cached = self._groups.get(group)
            if cached is not None:
                age, members = now - cached[0], cached[1]
                if user_id in members and age < yes_age:
                    found.add(group)
                    continue
                if user_id not in members and age < no_age:
                    continue
            pending[group] = self._fetch(
                "usergroups.users.list", group, functools.partial(self._group_members, group)
            )
        for group, (_, members) in self._await("usergroups.users.list", pending).items():
            if user_id in members:
                found.add(group)
        return frozenset(found)

    # -- channels ----------------------------------------------------------------------------

    def _channel_info(self, channel_id: str) -> ChannelInfo:
        started = self.monotonic()
        try:
            data = self.client.conversations_info(channel=channel_id)["channel"]
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error == "missing_scope":
                # Not "invite me": no invitation helps. In a group DM this is mpim:read.
                needed = str(exc.response.get("needed") or "a conversations scope")
                raise SlackLookupError(
                    f"Slack will not tell me what kind of conversation this is: the app lacks "
                    f"the `{needed}` scope, so nothing was recorded. An admin can add it by "
                    "reinstalling the app from its manifest; requests belong in a channel."
                ) from None
            if error != "channel_not_found":
                raise
            log.info("conversations.info %s: %s", channel_id, error)
            return ChannelInfo(exists=False)
        info = channel_info_of(data)
        with self._lock:
            self._channels[channel_id] = (started, info)
        return info

    def channel(self, channel_id: str, *, max_age: float | None = None) -> ChannelInfo:
        """Return what conversations.info says of a channel (not found: exists=False), from a
        cached answer younger than `max_age` (None: the channel TTL).

        Raises SlackLookupError when Slack does not answer in time or answers an error.
        """
        now = self.monotonic()
        with self._lock:
            cached = self._channels.get(channel_id)
        ttl = self.channel_ttl if max_age is None else max_age
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        future = self._fetch(
            "conversations.info", channel_id, functools.partial(self._channel_info, channel_id)
        )
        return self._await("conversations.info", {channel_id: future})[channel_id]
