"""Delivers the outbox to Slack: announcements, thread posts, progress, files, audit mirror.

Jobs and decisions never call Slack themselves: they queue deliveries in SQLite in the same
transaction as the change they report. This thread sends them in order per request,
re-rendering each announcement from the request's current state, and retries what Slack
refuses for a while (429 with Retry-After, 5xx, connection errors) without ever blocking a job.

Slack's rate tiers are budgets of the whole app (NOTES-slack.md): posts about 1 a second per
channel, `chat.update` about 50 a minute. `Pacer` spends each budget evenly, a 429 pauses the
budget it hit, and an item whose budget is spent waits without holding up others. Progress
edits coalesce (an item per request whose payload is replaced: only the latest state goes)
and the audit mirror sends many lines per message from its own lane, so a backlog of mirror
lines never delays a request's thread.

A delivery Slack refuses for good (the bot was removed from the channel, the channel was
archived, uploads are disabled, ...) is held at once: it keeps its files, the request's later
messages go on, the requester is told where the bot still can post (the request's thread,
else a DM) and `resend` puts it back in the queue once the cause is fixed.

A channel's audience can widen after a request was made (an admin makes it public, or shares
it with another organisation). So just before a delivery that may carry personal data (a
file, or a message of a request whose results hold personal data: `carries_personal_data`)
goes into a channel, conversations.info is asked again (`policy.audience_problem`, the rule
the request passed). A widened channel holds the delivery like a refusal, and the requester
is told by DM (not in the channel) how to resume; a lookup that fails is retried like the
delivery itself, never taken as "private". A file is checked just before it is shared, every
time; for messages (many, and conversations.info is Tier 3) a confirmed audience is
remembered for `audience_ttl` seconds, a refused one never.

Uploads use the three steps of files_upload_v2 by hand, recording the file id after the bytes
are sent, so a restart between the steps completes the same file instead of posting it twice.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import deletion
from bot.commands import request_from_dict
from bot.digest import sha256_file
from bot.ids import format_request_id
from bot.lifecycle import RequestKind, RequestRecord, Status
from bot.logs import request_context
from bot.policy import (
    Rules,
    audience_problem,
    personal_results,
    preview_digest,
    widened,
    withheld_error,
)
from bot.runner import REPORT_KEY
from bot.store import (
    OutboxItem,
    Store,
    announcement_key,
    preview_file_key,
    what_of,
)
from handlers import blocks, limits
from handlers.directory import channel_info_of

log = logging.getLogger(__name__)

# Errors that retrying will not cure (NOTES-slack.md): the delivery is held until `resend`.
PERMANENT = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "missing_scope",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "file_uploads_disabled",
        "file_upload_size_restricted",
        "invalid_arguments",
        "msg_too_long",
        "msg_blocks_too_long",
        "invalid_blocks",
        "no_text",
        "restricted_action",
        "file_not_found",
    }
)

# Slack's documented "try again" errors (answered with HTTP 200 or 5xx).
TRANSIENT = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})

# An unknown error is retried this many times before the delivery is held (it may be a bug).
GIVE_UP_AFTER = 50

# What each error asks of the people who can fix it (the requester is told this).
_CURES = {
    "not_in_channel": "the bot is no longer in <#{channel}>: invite it back (`/invite @{bot}`)",
    "channel_not_found": "the bot cannot see <#{channel}> any more: invite it back or"
    " unarchive the channel",
    "is_archived": "<#{channel}> is archived: unarchive it",
    "missing_scope": "the Slack app lacks a permission: an admin must reinstall it with the"
    " scopes of its manifest",
    "file_uploads_disabled": "file uploads are disabled in this workspace: an admin must allow"
    " them",
    "file_upload_size_restricted": "the file is over this workspace's upload size limit: an"
    " admin must raise it",
}


# How long a channel's audience, once Slack confirmed personal data may go there, is trusted
# for the messages of requests (seconds; files always ask). A refusal is never remembered: a
# `resend` after the channel was made private again asks at once.
AUDIENCE_TTL = 10.0


def is_permanent(error: str) -> bool:
    """Return True for Slack errors that retrying will not cure (`restricted_action*` too)."""
    return error in PERMANENT or error.startswith("restricted_action")


class Deferred(Exception):
    """The item cannot go yet (its thread's parent or its files are not posted)."""


class Withheld(Exception):
    """The channel's audience widened since the request: personal data may not go there."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error  # policy.withheld_error: channel_public, channel_ext_shared, ...


class Held(Exception):
    """The item cannot go until something else held is resent (no new notice)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


# What a delivery ends with: its result, and what to record in the same transaction.
Delivered = tuple[Mapping[str, Any], Callable[[sqlite3.Connection], None] | None]


@dataclass(frozen=True)
class Budget:
    """One of Slack's rate limits: `per_minute` calls, at most `burst` at once."""

    per_minute: float
    burst: int


# Slack's tiers (NOTES-slack.md; api.slack.com/docs/rate-limits), spent under the limit with
# smaller bursts than Slack allows: Slack counts a call when it arrives, and calls spent a
# moment apart can arrive closer together. Posts (chat.postMessage and the message
# files.completeUploadExternal posts, inferred) share one budget per channel.
POST_BUDGET = Budget(per_minute=50, burst=2)  # "about 1 a second per channel"
UPDATE_BUDGET = Budget(per_minute=45, burst=3)  # chat.update, Tier 3 (50+ a minute)
TIER4_BUDGET = Budget(per_minute=90, burst=5)  # files.*, chat.postEphemeral (100+ a minute)
# The audit mirror sends up to this many lines per message, well under Slack's 4,000
# characters (a line is about 80).
MIRROR_LINES = 40
MIRROR_CHARS = 3_500
# After a round that sent nothing, the outbox looks again no sooner than this (seconds).
IDLE_GAP = 0.05
# Held mirror lines have no request and no requester to resend them: they are tried again
# this often (one call), so re-inviting the bot to the audit channel is all it takes.
MIRROR_PROBE_INTERVAL = 600.0


class Pacer:
    """Token buckets, one per budget name (`post:C123`, `update`, ...); pure but for `now`."""

    def __init__(
        self,
        budgets: Callable[[str], Budget],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budgets = budgets
        self.monotonic = monotonic
        self._tokens: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._paused: dict[str, float] = {}  # name -> until

    @classmethod
    def unlimited(cls) -> Pacer:
        """Return a pacer that never waits (for a Slack without rate limits: the emulator's
        default)."""
        return cls(lambda name: Budget(per_minute=1e12, burst=1_000_000))

    def _level(self, name: str, now: float) -> float:
        budget = self.budgets(name)
        tokens, at = self._tokens.get(name, (float(budget.burst), now))
        return min(float(budget.burst), tokens + max(0.0, now - at) * budget.per_minute / 60.0)

    def wait(self, name: str) -> float:
        """Return how long until a call may be spent on `name` (0: now)."""
        now = self.monotonic()
        paused = self._paused.get(name, 0.0) - now
        level = self._level(name, now)
        ready = 0.0 if level >= 1.0 else (1.0 - level) * 60.0 / self.budgets(name).per_minute
        return max(paused, ready, 0.0)

    def spend(self, name: str) -> None:
        """Record one call on `name`."""
        now = self.monotonic()
        self._tokens[name] = (self._level(name, now) - 1.0, now)

    def pause(self, name: str, seconds: float) -> None:
        """Spend nothing on `name` for `seconds` (Slack answered 429 with Retry-After)."""
        now = self.monotonic()
        until = max(self._paused.get(name, 0.0), now + seconds)
        self._paused[name] = until
        self._tokens[name] = (1.0, until)  # one call when the pause ends, then the rate


def slack_budget(name: str) -> Budget:
    """Return the budget a name is spent from (see `budgets_of`)."""
    kind = name.split(":", 1)[0]
    return {"post": POST_BUDGET, "update": UPDATE_BUDGET}.get(kind, TIER4_BUDGET)


def budgets_of(item: OutboxItem) -> tuple[str, ...]:
    """Return the budgets one delivery of `item` spends (a little more than it may)."""
    post = f"post:{item.channel}"
    if item.kind == "upload":
        return ("tier4:files", post)
    if item.kind in {"announce", "progress"} and (item.result or {}).get("ts"):
        return ("update",)
    if item.kind == "notice":
        return (post, "post:dm")
    return (post,)


class Deliverer:
    """A thread that sends pending outbox items to Slack."""

    def __init__(
        self,
        store: Store,
        client: WebClient,
        *,
        rules: Rules,
        required_approvals: int,
        poll_interval: float = 0.1,
        upload_timeout: float = 300.0,
        on_delivered: Callable[[OutboxItem], None] | None = None,
        work_dir: Path | None = None,
        command: str = "/cv",
        pacer: Pacer | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.rules = rules  # who may read what: the personal-data rule of each delivery
        self.audience_ttl = AUDIENCE_TTL
        self._confirmed: dict[str, float] = {}  # channel -> monotonic time it was confirmed
        self.required_approvals = required_approvals
        self.poll_interval = poll_interval
        self.upload_timeout = upload_timeout
        self.on_delivered = on_delivered
        self.work_dir = work_dir
        self.command = command
        self.pacer = pacer or Pacer(slack_budget)
        self.mirror_held_at: float | None = None  # monotonic time the mirror was last held
        self.mirror_probe_interval = MIRROR_PROBE_INTERVAL
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = requests.Session()

    def start(self) -> None:
        """Start delivering in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="slack-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the item in flight."""
        self.stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._http.close()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sent = self.deliver_pending()
            except Exception:
                log.exception("outbox round failed")
                sent = 0
            if not sent:
                # Every audit event wakes the outbox; while each budget is spent, a round sends
                # nothing, and re-reading the queue on each of a burst's wake-ups took the CPU
                # the acknowledgements need. So a fruitless round waits IDLE_GAP first.
                self.stopping.wait(min(IDLE_GAP, self.poll_interval))
                self.wake.wait(max(0.0, self.poll_interval - IDLE_GAP))
                self.wake.clear()

    def deliver_pending(self) -> int:
        """Send one round of due items (each request's in order, within Slack's budgets) and
        one batch of audit mirror lines; return how many Slack calls were made."""
        sent = 0
        blocked: set[int] = set()
        # Enough items that a channel waiting for its budget does not hide the others.
        for item in self.store.pending_outbox(limit=200):
            if self.stopping.is_set():
                break
            if item.request_number is not None and item.request_number in blocked:
                continue  # keep each request's messages in order
            if any(self.pacer.wait(name) > 0 for name in budgets_of(item)):
                if item.kind != "progress":  # a progress edit may go after later messages
                    self._block(blocked, item)
                continue
            outcome = self._attempt(item)
            if outcome == "sent":
                sent += 1
            elif outcome == "waiting":
                self._block(blocked, item)
        if not self.stopping.is_set():
            sent += self._mirror_batch()
        return sent

    @staticmethod
    def _block(blocked: set[int], item: OutboxItem) -> None:
        if item.request_number is not None:
            blocked.add(item.request_number)

    def _attempt(self, item: OutboxItem) -> str:
        """Try to deliver one item; return sent, waiting (still pending) or held/failed."""
        try:
            self._deliver(item)
        except Deferred:
            announcement = self._announcement_held(item)
            if announcement is not None:
                self._hold(item, announcement, notice=False)
                return "held"
            delay = timedelta(seconds=min(2.0, 0.2 * 2 ** min(item.attempts, 4)))
            self.store.outbox_retry(item.id, delay)
            return "waiting"
        except Held as exc:
            self._hold(item, exc.error, notice=False)
            return "held"
        except Withheld as exc:
            self._hold(item, exc.error, notice=True)
            return "held"
        except SlackApiError as exc:
            return self._slack_failure(item, exc)
        except FileNotFoundError as exc:
            log.error("outbox item %s (%s): %s is gone", item.id, item.kind, exc.filename)
            self.store.outbox_failed(item.id, "file_missing", also=self._refused(item))
            return "failed"
        except (requests.RequestException, OSError) as exc:
            # The network or Slack is down: keep trying, never drop the message.
            log.warning("outbox item %s (%s): %s; will retry", item.id, item.kind, exc)
            self.store.outbox_retry(item.id, _backoff(item.attempts))
            return "waiting"
        if self.on_delivered is not None:
            self.on_delivered(item)
        return "sent"

    def _announcement_held(self, item: OutboxItem) -> str | None:
        assert item.request_number is not None  # only thread items wait for a parent
        key = announcement_key(item.request_number)
        if self.store.delivery_status(key) == "held":
            return "announcement_held"
        return None

    def _slack_failure(self, item: OutboxItem, exc: SlackApiError) -> str:
        error = _error_of(exc)
        if _rate_limited(exc):
            retry_after = _retry_after(exc)
            log.info("Slack rate limit on %s; retrying in %ss", item.kind, retry_after)
            for name in budgets_of(item):
                self.pacer.pause(name, retry_after)
            self.store.outbox_retry(item.id, timedelta(seconds=retry_after))
            return "waiting"
        # Slack being down is no reason to drop a message; an unknown error may be a bug,
        # retried a while before it is held.
        down = exc.response.status_code >= 500 or error in TRANSIENT
        if is_permanent(error) or (not down and item.attempts + 1 >= GIVE_UP_AFTER):
            self._hold(item, error or "unknown", notice=True)
            return "held"
        log.warning("outbox item %s (%s): %s; will retry", item.id, item.kind, error)
        self.store.outbox_retry(item.id, _backoff(item.attempts))
        return "waiting"

    def _hold(self, item: OutboxItem, error: str, *, notice: bool) -> None:
        """Hold the item (its files stay), audit it, and tell the requester once per episode."""
        log.error("outbox item %s (%s) held: Slack answered %s", item.id, item.kind, error)
        name = what_of(item.kind, item.payload)
        number = item.request_number
        with self.store.write() as conn:
            first = not self.store.has_held(conn, number, besides=item.id)
            if not self.store.hold(conn, item.id, error):
                return
            self.store.audit(
                conn,
                "bot",
                "delivery.held",
                request=number,
                targets=(item.key or item.kind,),
                outcome="held",
                details={"kind": item.kind, "error": error, "channel": item.channel, "name": name},
            )
            refused = self._refused(item)
            if refused is not None:
                refused(conn)
            if not notice or item.kind == "notice" or not first:
                return
            if number is None:
                # A file asked for by a command (audit, status --all, report): no request to
                # resend, so its asker is told to run it again.
                told = widened(error, item.channel)
                if told is not None and item.payload.get("user"):
                    user = str(item.payload["user"])
                    why, cure = told
                    text = (
                        f"<@{user}> I did not post {name} in <#{item.channel}>: it holds "
                        f"personal data, and {why}. Nothing was posted. Run the command again "
                        f"in a private channel, or {cure}."
                    )
                    self.store.enqueue(
                        conn,
                        kind="notice",
                        channel=item.channel,
                        payload={"user": user, "text": text, "dm": True},
                        request=None,
                    )
                return
            record = self.store.get(number, conn)
            payload: dict[str, Any] = {
                "user": record.requester,
                "text": self._notice(record, name, error),
            }
            if widened(error, item.channel):
                payload["dm"] = True  # not into the channel that became too wide
            self.store.enqueue(
                conn, kind="notice", channel=item.channel, payload=payload, request=number
            )

    def _hold_mirror(self, batch: list[OutboxItem], error: str) -> None:
        """Hold mirror lines; audit only the first of an episode (its own line is held too)."""
        log.error("audit mirror held: Slack answered %s", error)
        self.mirror_held_at = self.pacer.monotonic()
        with self.store.write() as conn:
            first = not self.store.has_held(conn, None, besides=batch[0].id)
            for item in batch:
                self.store.hold(conn, item.id, error)
            if first:
                self.store.audit(
                    conn,
                    "bot",
                    "delivery.held",
                    targets=("mirror",),
                    outcome="held",
                    details={"kind": "mirror", "error": error, "channel": batch[0].channel},
                )

    def _notice(self, record: RequestRecord, name: str, error: str) -> str:
        if told := widened(error, record.channel):
            why, cure = told
            return (
                f"<@{record.requester}> {record.id}: I did not post {name} in "
                f"<#{record.channel}>: it holds personal data, and {why}. Nothing is lost: the "
                f"bot keeps it, and `{self.command} status {record.id}` lists what is held. To "
                f"have it posted, {cure}; then run `{self.command} resend {record.id}`."
            )
        cure = _CURES.get(error, f"Slack answered `{error}`").format(
            channel=record.channel, bot="cv-dsr-bot"
        )
        return (
            f"<@{record.requester}> {record.id}: Slack refused to post {name} ({cure}). Nothing "
            f"is lost: the bot keeps it, and `{self.command} status {record.id}` lists what is "
            f"held. Once that is fixed, run `{self.command} resend {record.id}`."
        )

    # -- who reads the channel -------------------------------------------------------------

    def carries_personal_data(self, item: OutboxItem) -> bool:
        """Return whether `item` may carry personal data into its channel: every file (a
        package, receipt, preview, audit trail or audit file) but the package of an export
        that holds none, and the messages of a request whose results hold personal data (a
        deletion's preview and receipt lines name the person's images and tags)."""
        if item.kind in {"progress", "notice", "mirror"}:
            return False  # counts only; a notice goes where the requester reads it
        if item.request_number is None:
            return item.kind == "upload"
        if item.kind == "upload" and (item.key or "").startswith(f"{REPORT_KEY}:"):
            return True  # the audit trail names the people and the reason
        try:
            command = request_from_dict(self._request(item).command)
        except ValueError:
            return True  # not understood: counted as personal
        return personal_results(command) is not None

    def _check_audience(self, item: OutboxItem, *, fresh: bool = False) -> None:
        """Raise Withheld when personal data in `item` may no longer go to its channel
        (`fresh`: ask Slack even if the channel was confirmed a moment ago).

        A conversations.info that fails raises as any Slack call here does: the item is
        retried (or held, for an error retrying will not cure), never delivered unchecked.
        """
        channel = item.channel
        if channel.startswith("D") or not self.carries_personal_data(item):
            return  # a DM's id says who reads it: the bot and the person
        now = self.pacer.monotonic()
        confirmed = self._confirmed.get(channel)
        if not fresh and confirmed is not None and now - confirmed < self.audience_ttl:
            return
        data = self.client.conversations_info(channel=channel)["channel"]
        problem = audience_problem(self.rules, channel_info_of(data).audience)
        if problem is not None:
            self._confirmed.pop(channel, None)
            raise Withheld(withheld_error(problem))
        self._confirmed[channel] = now

    # -- the audit mirror --------------------------------------------------------------------

    def _mirror_batch(self) -> int:
        """Send the oldest mirror lines that fit one message; return 1 when a call was made."""
        items = self.store.pending_outbox(limit=MIRROR_LINES, mirror=True)
        if not items:
            held_at = self.mirror_held_at
            probe = self.mirror_probe_interval
            if held_at is not None and self.pacer.monotonic() - held_at >= probe:
                self.mirror_held_at = None
                with self.store.write() as conn:
                    self.store.resend(conn, None)
            return 0
        channel = items[0].channel
        name = f"post:{channel}"
        if self.pacer.wait(name) > 0:
            return 0
        batch: list[OutboxItem] = []
        size = 0
        for item in items:
            text = blocks.bot_text(str(item.payload["text"]))
            if item.channel != channel or (batch and size + len(text) + 1 > MIRROR_CHARS):
                break
            batch.append(item)
            size += len(text) + 1
        ids = [item.id for item in batch]
        text = "\n".join(blocks.bot_text(str(item.payload["text"])) for item in batch)
        self.pacer.spend(name)
        try:
            self.client.chat_postMessage(channel=channel, text=text)
        except SlackApiError as exc:
            error = _error_of(exc)
            if _rate_limited(exc):
                self.pacer.pause(name, _retry_after(exc))
                self.store.outbox_retry(ids, timedelta(seconds=_retry_after(exc)))
            elif is_permanent(error):
                self._hold_mirror(batch, error)
            else:
                log.warning("audit mirror: %s; will retry", error)
                self.store.outbox_retry(ids, _backoff(batch[0].attempts))
            return 1
        except (requests.RequestException, OSError) as exc:
            log.warning("audit mirror: %s; will retry", exc)
            self.store.outbox_retry(ids, _backoff(batch[0].attempts))
            return 1
        self.store.outbox_sent(ids)
        return 1

    # -- one item --------------------------------------------------------------------------------

    def _deliver(self, item: OutboxItem) -> None:
        rid = None if item.request_number is None else format_request_id(item.request_number)
        with request_context(rid):
            self._deliver_item(item)

    def _deliver_item(self, item: OutboxItem) -> None:
        handler: dict[str, Callable[[OutboxItem], Delivered]] = {
            "announce": self._announce,
            "progress": self._progress,
            "post": self._post,
            "upload": self._upload,
            "mirror": self._mirror,
            "notice": self._notify,
        }
        for name in budgets_of(item):
            self.pacer.spend(name)
        result, also = handler[item.kind](item)
        self.store.outbox_done(
            item.id, result, payload=item.payload, revision=item.revision, also=also
        )

    def _request(self, item: OutboxItem) -> RequestRecord:
        assert item.request_number is not None
        return self.store.get(item.request_number)

    def _thread_ts(self, item: OutboxItem) -> str | None:
        if item.request_number is None:
            return None
        record = self._request(item)
        if record.message_ts is None:
            raise Deferred
        return record.message_ts

    def _announce(self, item: OutboxItem) -> Delivered:
        self._check_audience(item)
        record = self._request(item)
        preview_file, queue_file = self._preview_file(record)
        text, body = blocks.announcement(record, self.required_approvals, preview_file)
        previous = dict(item.result or {})
        # The request keeps the ts from the moment it is known: a crash before this item was
        # marked sent must update that message, not post a second announcement.
        ts = previous.get("ts") or record.message_ts
        if ts:
            try:
                self.client.chat_update(channel=item.channel, ts=ts, text=text, blocks=body)
            except SlackApiError as exc:
                if exc.response.get("error") != "message_not_found":
                    raise
                ts = None
        if not ts:
            response = self.client.chat_postMessage(channel=item.channel, text=text, blocks=body)
            ts = str(response["ts"])
            with self.store.write() as conn:
                self.store.update_fields(conn, record.number, message_ts=ts)
        shown = blocks.approvable(preview_file)
        digest = preview_digest(record.preview)
        if (
            record.status == Status.PENDING
            and shown
            and self.store.shown_preview(record.id) != digest
        ):
            # The stored fact an approval needs (policy.preview_shown): this plan's preview
            # is in front of the approvers, with the Approve button.
            details = {
                "channel": item.channel,
                "ts": ts,
                "expires_at": str(record.expires_at),
                "preview": digest,
            }

            def posted(conn: sqlite3.Connection) -> None:
                self.store.audit(
                    conn, "bot", "approval.posted", request=record.number, details=details
                )

            return {**previous, "ts": ts, "approval_posted": True}, posted
        return {**previous, "ts": ts}, queue_file

    def _refused(self, item: OutboxItem) -> Callable[[sqlite3.Connection], None] | None:
        """Return what a refused delivery changes: a preview file re-renders its announcement.

        In the failure's transaction, so the announcement never waits on a stale "being
        attached" while nothing is pending.
        """
        number = item.request_number
        if not item.payload.get("announce") or number is None:
            return None
        return lambda conn: self.store.announce(conn, number, item.channel)

    # -- a deletion preview too long for its message -----------------------------------------------

    def _preview_file(
        self, record: RequestRecord
    ) -> tuple[blocks.PreviewFile | None, Callable[[sqlite3.Connection], None] | None]:
        """Return the state of the request's preview file, and how to queue it when it is due.

        The file is queued behind the announcement (its thread's parent) only once that is
        posted; its upload re-renders the announcement, which shows Approve only then.
        """
        if (
            record.kind != RequestKind.DELETE
            or not record.preview
            or blocks.preview_fits(record.preview)
        ):
            return None, None
        content = blocks.preview_file_text(record)
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]
        key = preview_file_key(record.number, digest)
        name = blocks.preview_file_name(record)
        state = blocks.PreviewFile(name, self.store.delivery_status(key))
        if state.status is not None or record.status != Status.PENDING or self.work_dir is None:
            return state, None
        path = self.work_dir / record.id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        payload = {
            "path": str(path),
            "filename": name,
            "title": f"{record.id} deletion preview (full)",
            "comment": f"Full preview of {record.id}: every iteration and tag it deletes.",
            "announce": True,
        }

        def queue(conn: sqlite3.Connection) -> None:
            self.store.enqueue_once(
                conn,
                kind="upload",
                channel=record.channel,
                payload=payload,
                request=record.number,
                key=key,
            )

        return state, queue

    def _progress(self, item: OutboxItem) -> Delivered:
        thread_ts = self._thread_ts(item)
        text = limits.cut(
            f"{self._request(item).id}: {blocks.progress_text(item.payload)}",
            limits.MAX_REPLY_TEXT,
        )
        ts = (item.result or {}).get("ts")
        if ts:
            self.client.chat_update(channel=item.channel, ts=ts, text=text)
            return {"ts": ts}, None
        response = self.client.chat_postMessage(
            channel=item.channel, thread_ts=thread_ts, text=text
        )
        return {"ts": str(response["ts"])}, None

    def _post(self, item: OutboxItem) -> Delivered:
        thread_ts = self._thread_ts(item)
        waits_for = {self.store.delivery_status(key) for key in item.payload.get("after") or ()}
        if waits_for & {"held", "failed"}:
            raise Held("waits_for_held_file")  # it would announce a file Slack does not have
        if waits_for - {"sent", None}:
            raise Deferred
        self._check_audience(item)
        response = self.client.chat_postMessage(
            channel=item.channel,
            thread_ts=thread_ts,
            text=blocks.message_text(str(item.payload["text"])),
        )
        return {"ts": str(response["ts"])}, None

    def _mirror(self, item: OutboxItem) -> Delivered:
        response = self.client.chat_postMessage(
            channel=item.channel, text=blocks.message_text(str(item.payload["text"]))
        )
        return {"ts": str(response["ts"])}, None

    def _notify(self, item: OutboxItem) -> Delivered:
        """Tell the requester in the request's thread, else in a DM (chat:write opens it)."""
        text = blocks.bot_text(str(item.payload["text"]))
        if item.payload.get("dm") or item.request_number is None:
            response = self.client.chat_postMessage(channel=str(item.payload["user"]), text=text)
            return {"ts": str(response["ts"]), "where": "dm"}, None
        record = self._request(item)
        if record.message_ts and self._announcement_held(item) is None:
            try:
                response = self.client.chat_postMessage(
                    channel=item.channel, thread_ts=record.message_ts, text=text
                )
                return {"ts": str(response["ts"]), "where": "thread"}, None
            except SlackApiError as exc:
                if not is_permanent(_error_of(exc)):
                    raise
        response = self.client.chat_postMessage(channel=str(item.payload["user"]), text=text)
        return {"ts": str(response["ts"]), "where": "dm"}, None

    def _upload(self, item: OutboxItem) -> Delivered:
        thread_ts = self._thread_ts(item)
        payload = item.payload
        path = Path(str(payload["path"]))
        state = dict(item.result or {})
        if state.get("file_id") and self._already_shared(str(state["file_id"]), item.channel):
            # Shared before a crash. The file.posted event commits with the item marked sent,
            # so it is missing unless the result says the sharing was recorded.
            done = {**state, "completed": True}
            return done, None if state.get("completed") else self._file_posted(item, state)
        if not state.get("file_id"):
            if isinstance(payload.get("render"), dict) and not path.exists():
                # Its job could not write it (full work directory): write it now. ENOSPC again
                # is an OSError, retried below like a network error.
                path.parent.mkdir(parents=True, exist_ok=True)
                deletion.render_receipt(payload["render"]["receipt"], path)
            size = path.stat().st_size
            ticket = self.client.files_getUploadURLExternal(
                filename=str(payload["filename"]), length=size
            )
            with path.open("rb") as fp:
                response = self._http.post(
                    str(ticket["upload_url"]), data=fp, timeout=self.upload_timeout
                )
            if response.status_code != 200:
                raise requests.HTTPError(f"upload answered {response.status_code}")
            state = {"file_id": str(ticket["file_id"]), "size": size, "sha256": sha256_file(path)}
            self.store.outbox_progress(item.id, state)
        arguments: dict[str, Any] = {
            "files": [{"id": state["file_id"], "title": str(payload.get("title") or "")}],
            "channel_id": item.channel,
        }
        if thread_ts:
            arguments["thread_ts"] = thread_ts
        if payload.get("comment"):
            arguments["initial_comment"] = blocks.message_text(str(payload["comment"]))
        self._check_audience(item, fresh=True)  # just before sharing; the bytes show nobody
        self.client.files_completeUploadExternal(**arguments)
        return {**state, "completed": True}, self._file_posted(item, state)

    def _file_posted(
        self, item: OutboxItem, state: Mapping[str, Any]
    ) -> Callable[[sqlite3.Connection], None]:
        details = {
            "name": item.payload["filename"],
            "size": state["size"],
            "sha256": state["sha256"],
            "channel": item.channel,
        }

        def record(conn: sqlite3.Connection) -> None:
            if item.payload.get("announce") and item.request_number is not None:
                # A preview file: the announcement may show Approve now that the file is there.
                self.store.announce(conn, item.request_number, item.channel)
            self.store.audit(
                conn,
                "bot",
                "file.posted",
                request=item.request_number,
                targets=(str(state["file_id"]),),
                details=details,
            )

        return record

    def _already_shared(self, file_id: str, channel: str) -> bool:
        try:
            data = self.client.files_info(file=file_id)["file"]
        except SlackApiError as exc:
            if exc.response.get("error") == "file_not_found":
                return False
            raise  # 429, 5xx: unknown; retried later rather than risking a second share
        shares = data.get("shares") or {}
        channels = set(data.get("channels") or []) | set(data.get("groups") or [])
        for scope in ("public", "private"):
            channels |= set((shares.get(scope) or {}).keys())
        return channel in channels


def _error_of(exc: SlackApiError) -> str:
    return str(exc.response.get("error") or "")


def _rate_limited(exc: SlackApiError) -> bool:
    return exc.response.status_code == 429 or _error_of(exc) == "ratelimited"


def _retry_after(exc: SlackApiError) -> float:
    try:
        return max(1.0, float(exc.response.headers.get("Retry-After", "1") or 1))
    except ValueError:
        return 1.0


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(60.0, 0.5 * 2 ** min(attempts, 7)))
