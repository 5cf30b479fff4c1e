"""Events API deliveries: each event taken once, whatever Slack's retries.

Slack sends an event again when it got no HTTP 2xx within 3 seconds (no ack within 3 seconds
over Socket Mode), up to 3 times over about 6 minutes, each time with the same `event_id` and
`X-Slack-Retry-Num` / `X-Slack-Retry-Reason` (docs.slack.dev/apis/events-api/; Bolt mirrors a
Socket Mode envelope's `retry_attempt` / `retry_reason` into the same headers). `SeenEvents`
remembers the event ids this process took for an hour, so a retry of one already taken is
answered 200 and does nothing more. A retry of an event this process never took (its first
delivery failed before reaching the bot, or reached a process since restarted) is taken: the
only event the bot handles publishes a Home tab, and views.publish replaces the whole view, so
at worst the same view is published twice.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

SEEN_FOR = 3600.0  # seconds: well past Slack's last retry (about 6 minutes after the first)
SEEN_MOST = 10_000  # event ids kept at most (the oldest are forgotten first)


class SeenEvents:
    """The event ids taken recently by this process; thread-safe."""

    def __init__(
        self,
        *,
        ttl: float = SEEN_FOR,
        most: int = SEEN_MOST,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.most = most
        self.monotonic = monotonic
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, event_id: str) -> bool:
        """Record `event_id` as taken; return True unless it was taken already (a retry)."""
        now = self.monotonic()
        with self._lock:
            while self._seen and (
                len(self._seen) >= self.most or next(iter(self._seen.values())) < now - self.ttl
            ):
                self._seen.popitem(last=False)
            if event_id in self._seen:
                return False
            self._seen[event_id] = now
            return True
