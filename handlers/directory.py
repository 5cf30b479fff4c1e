"""Slack lookups behind the service's `Directory`: user groups and channels, cached briefly."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.service import ChannelInfo

log = logging.getLogger(__name__)


class SlackDirectory:
    """Caches usergroups.users.list (Tier 2) and conversations.info; refreshes on a miss."""

    def __init__(
        self,
        client: WebClient,
        *,
        ttl: float = 300.0,
        miss_refresh_after: float = 10.0,
        channel_ttl: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.miss_refresh_after = miss_refresh_after
        self.channel_ttl = channel_ttl
        self.monotonic = monotonic
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._channels: dict[str, tuple[float, ChannelInfo]] = {}
        self._lock = threading.Lock()

    def _members(self, group_id: str, *, fresh_after: float) -> frozenset[str]:
        now = self.monotonic()
        with self._lock:
            cached = self._groups.get(group_id)
        if cached is not None and now - cached[0] < fresh_after:
            return cached[1]
        try:
            response = self.client.usergroups_users_list(usergroup=group_id)
            members = frozenset(response.get("users") or ())
        except SlackApiError as exc:
            log.warning("usergroups.users.list %s failed: %s", group_id, exc.response.get("error"))
            return cached[1] if cached else frozenset()
        with self._lock:
            self._groups[group_id] = (now, members)
        return members

    def groups_of(self, user_id: str, groups: frozenset[str]) -> frozenset[str]:
        """Return the groups among `groups` that contain `user_id` (re-read once on a miss)."""
        found = set()
        for group in sorted(groups):
            if user_id in self._members(group, fresh_after=self.ttl) or user_id in self._members(
                group, fresh_after=self.miss_refresh_after
            ):
                found.add(group)
        return frozenset(found)

    def channel(self, channel_id: str) -> ChannelInfo:
        """Return what conversations.info says of a channel (not found: exists=False)."""
        now = self.monotonic()
        with self._lock:
            cached = self._channels.get(channel_id)
        if cached is not None and now - cached[0] < self.channel_ttl:
            return cached[1]
        try:
            data = self.client.conversations_info(channel=channel_id)["channel"]
        except SlackApiError as exc:
            log.info("conversations.info %s: %s", channel_id, exc.response.get("error"))
            return ChannelInfo(exists=False)
        info = ChannelInfo(
            exists=True,
            is_member=bool(data.get("is_member")) or bool(data.get("is_im")),
            is_private=bool(data.get("is_private")) or bool(data.get("is_group")),
            is_im=bool(data.get("is_im")) or bool(data.get("is_mpim")),
            name=str(data.get("name") or ""),
        )
        with self._lock:
            self._channels[channel_id] = (now, info)
        return info
