"""Delivers the outbox to Slack: announcements, thread posts, progress, files, audit mirror.

Jobs and decisions never call Slack themselves: they queue deliveries in SQLite in the same
transaction as the change they report. This thread sends them in order, re-rendering each
announcement from the request's current state, and retries what Slack refuses for a while
(429 with Retry-After, 5xx, connection errors) without ever blocking a job. A delivery that can
never succeed (the bot was removed from the channel) is marked failed and logged.

Uploads use the three steps of files_upload_v2 by hand, recording the file id after the bytes
are sent, so a restart between the steps completes the same file instead of posting it twice.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.ids import format_request_id
from bot.logs import request_context
from bot.store import OutboxItem, RequestRecord, Store, announcement_key, preview_file_key
from handlers import blocks, limits

log = logging.getLogger(__name__)

PERMANENT = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "msg_too_long",
        "invalid_blocks",
        "no_text",
        "restricted_action",
        "file_not_found",
    }
)


# Slack's documented "try again" errors (answered with HTTP 200 or 5xx).
TRANSIENT = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})


class Deferred(Exception):
    """The item cannot go yet (its thread's parent is not posted); try again shortly."""


# What a delivery ends with: its result, and what to record in the same transaction.
Delivered = tuple[Mapping[str, Any], Callable[[sqlite3.Connection], None] | None]


class Deliverer:
    """A thread that sends pending outbox items to Slack."""

    def __init__(
        self,
        store: Store,
        client: WebClient,
        *,
        required_approvals: int,
        poll_interval: float = 0.1,
        upload_timeout: float = 300.0,
        on_delivered: Callable[[OutboxItem], None] | None = None,
        work_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.required_approvals = required_approvals
        self.poll_interval = poll_interval
        self.upload_timeout = upload_timeout
        self.on_delivered = on_delivered
        self.work_dir = work_dir
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
                self.wake.wait(self.poll_interval)
                self.wake.clear()

    def deliver_pending(self) -> int:
        """Send one round of due items in order; return how many were sent."""
        sent = 0
        blocked: set[int] = set()
        for item in self.store.pending_outbox(limit=50):
            if self.stopping.is_set():
                break
            if item.request_number is not None and item.request_number in blocked:
                continue  # keep each request's messages in order
            try:
                self._deliver(item)
                sent += 1
                if self.on_delivered is not None:
                    self.on_delivered(item)
            except Deferred:
                assert item.request_number is not None  # only thread items wait for a parent
                if self.store.delivery_status(announcement_key(item.request_number)) == "failed":
                    # The thread's parent can never be posted, so neither can this.
                    self.store.outbox_failed(item.id, "announcement_failed")
                else:
                    delay = timedelta(seconds=min(2.0, 0.2 * 2 ** min(item.attempts, 4)))
                    self.store.outbox_retry(item.id, delay, give_up_after=None)
                if item.request_number is not None:
                    blocked.add(item.request_number)
            except SlackApiError as exc:
                self._slack_failure(item, exc)
                if item.request_number is not None:
                    blocked.add(item.request_number)
            except FileNotFoundError as exc:
                log.error("outbox item %s (%s): %s is gone", item.id, item.kind, exc.filename)
                self.store.outbox_failed(item.id, "file_missing", also=self._refused(item))
            except (requests.RequestException, OSError) as exc:
                # The network or Slack is down: keep trying, never drop the message.
                log.warning("outbox item %s (%s): %s; will retry", item.id, item.kind, exc)
                self.store.outbox_retry(item.id, _backoff(item.attempts), give_up_after=None)
                if item.request_number is not None:
                    blocked.add(item.request_number)
        return sent

    def _slack_failure(self, item: OutboxItem, exc: SlackApiError) -> None:
        error = str(exc.response.get("error") or "")
        if exc.response.status_code == 429 or error == "ratelimited":
            retry_after = float(exc.response.headers.get("Retry-After", "1") or 1)
            log.info("Slack rate limit on %s; retrying in %ss", item.kind, retry_after)
            self.store.outbox_retry(item.id, timedelta(seconds=retry_after), give_up_after=None)
        elif error in PERMANENT:
            log.error("outbox item %s (%s) cannot be delivered: %s", item.id, item.kind, error)
            self.store.outbox_failed(item.id, error, also=self._refused(item))
        else:
            # Slack being down is no reason to drop a message; an unknown error may be a bug.
            down = exc.response.status_code >= 500 or error in TRANSIENT
            log.warning("outbox item %s (%s): %s; will retry", item.id, item.kind, error)
            self.store.outbox_retry(
                item.id, _backoff(item.attempts), give_up_after=None if down else 50
            )

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
        }
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
        shown = preview_file is None or preview_file.status == "sent"
        if record.status == "pending" and shown and not previous.get("approval_posted"):
            details = {"channel": item.channel, "ts": ts, "expires_at": str(record.expires_at)}

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
        if record.kind != "delete" or not record.preview or blocks.preview_fits(record.preview):
            return None, None
        content = blocks.preview_file_text(record)
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]
        key = preview_file_key(record.number, digest)
        name = blocks.preview_file_name(record)
        state = blocks.PreviewFile(name, self.store.delivery_status(key))
        if state.status is not None or record.status != "pending" or self.work_dir is None:
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
            state = {"file_id": str(ticket["file_id"]), "size": size, "sha256": _sha256(path)}
            self.store.outbox_progress(item.id, state)
        arguments: dict[str, Any] = {
            "files": [{"id": state["file_id"], "title": str(payload.get("title") or "")}],
            "channel_id": item.channel,
        }
        if thread_ts:
            arguments["thread_ts"] = thread_ts
        if payload.get("comment"):
            arguments["initial_comment"] = blocks.message_text(str(payload["comment"]))
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(60.0, 0.5 * 2 ** min(attempts, 7)))
