"""The Slack Web API as the emulator serves it: a workspace with one bot installed, the methods
the bot calls, file uploads and response_urls.

The unmodified slack-sdk `WebClient(base_url=emulator.api_url)` and Bolt's `respond()` talk to
`SlackEmulator` exactly as they talk to Slack, so what it accepts, refuses and records is what
the bot's tests believe about Slack. Where Slack has a rule the bot can break, the emulator
enforces it (token, scopes, channel membership, Block Kit limits via blockkit.py, message
length, the 5 uses and 30 minutes of a response_url, the 3 s and single use of a trigger_id,
rate tiers) and answers with Slack's own error code. Faults (429, errors, latency, 5xx,
dropped connections) are switches on it.

Routes (all on one server, server.py, 127.0.0.1, port 0 by default):
- `/api/<method>`: Web API. POST with a JSON body (`application/json; charset=utf-8`) or a
  form body, or GET with a query string; the token comes from `Authorization: Bearer` or a
  `token` field. HTTP 200 with `{"ok": true, ...}` or `{"ok": false, "error": ...}`; 429 with
  `Retry-After` when rate limited.
- `/upload/v1/<secret>`: the `upload_url` of files.getUploadURLExternal; raw bytes, no auth.
- `/commands/...` and `/actions/...`: response_urls handed out by `response_url()`.
- App Home: `views.publish` replaces a person's Home tab (type home, at most 100 blocks, the
  block and text limits of blockkit.py; `hash_conflict` when a `hash` sent is not the current
  one); `homes`/`home()` read what each person sees. The events Slack sends the app (the
  `app_home_opened` of a person opening the tab) are the driver's (driver.py).
- `/socket/<ticket>`: Socket Mode (socket_mode.py), reached through `emulator.socket_mode`;
  apps.connections.open (app-level token `xapp-...`) hands out the single-use URL.

Not pure: a threaded HTTP server whose in-memory state is guarded by one lock. What tests read
(`messages()`, `calls`, ...) are the frozen snapshots of records.py, deep copies taken under
the lock.
"""

from __future__ import annotations

import copy
import json
import math
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from emulators.slack.blockkit import (
    MAX_BLOCKS_TEXT,
    MAX_MESSAGE_BLOCKS,
    MAX_TEXT,
    block_problems,
    blocks_text_units,
    home_view_problems,
    units,
    view_problems,
    with_block_ids,
)
from emulators.slack.records import (
    ApiCall,
    Channel,
    Ephemeral,
    JsonObject,
    Message,
    MessageVersion,
    OpenedView,
    PublishedView,
    UploadedFile,
    User,
)
from emulators.slack.server import Handler, Reply, Server, json_reply
from emulators.slack.socket_mode import SocketMode

__all__ = ["DEFAULT_SCOPES", "RATE_TIERS", "RateTier", "SlackEmulator"]

# The bot's manifest scopes (NOTES-slack.md). Methods check them as Slack does.
DEFAULT_SCOPES = (
    "commands",
    "chat:write",
    "files:write",
    "users:read",
    "usergroups:read",
    "channels:read",
    "groups:read",
    "mpim:read",
)
MAX_FILES_PER_COMPLETION = 14
RESPONSE_URL_USES = 5
RESPONSE_URL_TTL = 30 * 60.0
TRIGGER_TTL = 3.0


# ---------------------------------------------------------------------------------------------
# Rate tiers (w13-delivery)
#
# Slack limits each Web API method per app per workspace in tiers (api.slack.com/docs/
# rate-limits: Tier 2 "20+ per minute", Tier 3 "50+ per minute", Tier 4 "100+ per minute";
# NOTES-slack.md) and chat.postMessage to about 1 message a second per channel ("short bursts
# are allowed"). Over a limit Slack answers HTTP 429, `{"ok": false, "error": "ratelimited"}`
# and `Retry-After` in seconds. The tier of each method is from its documentation page; the
# burst sizes are not published (inferred: a small bucket that refills at the tier's rate).
# Off unless `enable_rate_tiers()`: most tests would only get slower, while the tests of the
# bot's pacing switch it on.


@dataclass(frozen=True)
class RateTier:
    """`per_minute` calls, at most `burst` at once; `per_channel`: one bucket per channel."""

    per_minute: float
    burst: int
    per_channel: bool = False


TIER2 = RateTier(20, 3)
TIER3 = RateTier(50, 5)
TIER4 = RateTier(100, 10)
POSTS_PER_CHANNEL = RateTier(60, 3, per_channel=True)  # "1 per second per channel"
RATE_TIERS: dict[str, RateTier] = {
    "chat.postMessage": POSTS_PER_CHANNEL,
    "chat.update": TIER3,
    "chat.postEphemeral": TIER4,
    "chat.getPermalink": TIER4,
    "files.getUploadURLExternal": TIER4,
    "files.completeUploadExternal": TIER4,
    "files.info": TIER4,
    "users.info": TIER4,
    "usergroups.users.list": TIER2,
    "conversations.info": TIER3,
    "views.open": TIER4,
    "views.publish": TIER4,
}
# files.completeUploadExternal posts a message in the channel: inferred to spend the channel's
# posting budget too.
POSTS_IN_CHANNEL = frozenset({"chat.postMessage", "files.completeUploadExternal"})


# ---------------------------------------------------------------------------------------------
# Internal state


class _ApiError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


@dataclass
class _Fault:
    kind: Literal["ratelimit", "error"]
    times: int
    retry_after: int = 1
    error: str = ""


@dataclass
class _Slowness:
    """Pending latency or server errors for one method (see "Slow and failing Slack")."""

    seconds: float
    times: int | None  # None: every call until cleared
    skip: int = 0  # calls let through untouched first
    status: int = 200  # 200: only late; 500/503: late, then a server error


@dataclass
class _File:
    id: str
    name: str
    length: int
    upload_secret: str
    title: str = ""
    data: bytes | None = None
    initial_comment: str | None = None
    shares: list[tuple[str, str | None, str]] = field(default_factory=list)  # channel, thread, ts
    created: int = 0
    completed: bool = False


@dataclass
class _ResponseUrl:
    channel: str
    user: str
    created: float
    uses: int = 0
    # the message replace_original/delete_original act on: ("message"|"ephemeral", ts)
    original: tuple[str, str] | None = None
    posted: list[tuple[str, str]] = field(default_factory=list)  # its new messages, oldest first


@dataclass
class _Trigger:
    user: str
    created: float
    used: bool = False


def _flag(value: Any) -> bool:
    """Return a boolean argument as Slack reads it (JSON true, or "true"/"1" in a form)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _json_field(value: Any, error: str) -> Any:
    """Return a structured argument: as sent in a JSON body, or decoded from a form string."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise _ApiError(error) from None
    return value


def _parse_blocks(value: Any, *, limit: int = MAX_MESSAGE_BLOCKS) -> list[JsonObject] | None:
    """Return the blocks argument as a list (None when absent); raise Slack's errors."""
    if value is None or value == "":
        return None
    blocks = _json_field(value, "invalid_blocks_format")
    if not isinstance(blocks, list):
        raise _ApiError("invalid_blocks_format")
    problems = block_problems(blocks, limit=limit)
    if problems:
        raise _ApiError("invalid_blocks", response_metadata={"messages": problems})
    return blocks


def _view_argument(params: JsonObject, *, required: str) -> JsonObject:
    """Return the `view` argument of views.open/views.publish (with `required`, the other
    argument they need); raise invalid_arguments when either is missing or not an object."""
    raw_view = params.get("view")
    if not required or raw_view is None or raw_view == "":
        raise _ApiError("invalid_arguments")
    view = _json_field(raw_view, "invalid_arguments")
    if not isinstance(view, dict):
        raise _ApiError("invalid_arguments")
    return view


def _parse_params(
    verb: str, content_type: str, query: str, body: bytes
) -> tuple[JsonObject, str | None, str | None]:
    """Return (fields, error, warning) for a Web API request, as Slack reads its arguments."""
    params: JsonObject = dict(parse_qsl(query, keep_blank_values=True))
    if verb == "GET" or not body:
        return params, None, None
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json":
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return params, "invalid_json", None
        if not isinstance(data, dict):
            return params, "json_not_object", None
        params.update(data)
        warning = None if "charset" in content_type.lower() else "missing_charset"
        return params, None, warning
    if media in ("application/x-www-form-urlencoded", ""):
        try:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return params, "invalid_form_data", None
        return params, None, None
    return params, "invalid_form_data", None


# ---------------------------------------------------------------------------------------------
# The emulator


class SlackEmulator:
    """A Slack workspace with one bot installed, served over HTTP on 127.0.0.1."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-emulator-bot-token",
        team_id: str = "T0EMULATOR",
        host: str = "127.0.0.1",
        port: int = 0,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        team_domain: str = "emulator",
        app_id: str = "A0EMULATOR",
        clock: Callable[[], float] = time.time,
        app_token: str | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token  # app-level token (xapp-...) for apps.connections.open
        self.team_id = team_id
        self.team_domain = team_domain
        self.app_id = app_id
        self.bot_user_id = "U0BOT"
        self.bot_id = "B0BOT"
        self.bot_name = "cv-dsr-bot"
        self.scopes = frozenset(scopes)
        self.free_plan = False  # True: usergroups.users.list answers plan_upgrade_required
        # Lengths (UTF-16 units). Real Slack cuts text at 40,000 and asks for under 4,000; a
        # stack may set max_text to 4,000 so that any longer reply fails its test.
        self.max_text = MAX_TEXT
        self.max_blocks_text = MAX_BLOCKS_TEXT
        # bolt-js issue 2867: respond() accepted blocks that chat.postMessage refused as
        # msg_blocks_too_long. Both variants are plausible; True is the stricter one.
        self.response_url_blocks_total = True
        # Slack documents no total of block text for a Home tab; True holds it to the
        # messages' total (the stricter variant), False lets any total through.
        self.home_blocks_total = True
        # Enterprise Grid: payloads then carry `enterprise` / `enterprise_id` (see the driver)
        self.enterprise_id: str | None = None
        self.enterprise_name = "Emulator Org"
        self._clock = clock
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._base = ""
        self._last_ts = 0
        self._counter = 0
        self._users: dict[str, User] = {}
        self._channels: dict[str, Channel] = {}
        self._usergroups: dict[str, tuple[str, list[str]]] = {}
        self._messages: dict[tuple[str, str], Message] = {}
        self._ephemerals: dict[str, Ephemeral] = {}
        self._files: dict[str, _File] = {}
        self._uploads: dict[str, str] = {}  # upload secret -> file id
        self._views: list[OpenedView] = []
        self._published: list[PublishedView] = []  # every views.publish accepted, in order
        self._homes: dict[str, PublishedView] = {}  # user -> the Home tab they see now
        self._triggers: dict[str, _Trigger] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._faults: dict[str, deque[_Fault]] = {}
        self._slowness: dict[str, deque[_Slowness]] = {}  # see "Slow and failing Slack"
        self.rate_tiers: dict[str, RateTier] = {}  # empty: no rate limits (enable_rate_tiers)
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, at)
        self._calls: list[ApiCall] = []
        self.internal_errors: list[str] = []  # tracebacks of emulator bugs (should stay empty)
        # Fraction of HTTP requests (Web API, uploads, response_urls) whose connection is closed
        # before anything is read or done: a network failure between the bot and Slack
        # (inferred; Slack documents none). Seeded, so a run meets the same drops.
        self.drop_rate = 0.0
        self.dropped = 0
        self._drop_random = random.Random(0)
        self.socket_mode = SocketMode(app_id)  # the app's WebSocket connections
        self._methods: dict[str, Callable[[JsonObject], JsonObject]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "files.info": self._files_info,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.info": self._conversations_info,
            "views.open": self._views_open,
            "views.publish": self._views_publish,
            "apps.connections.open": self._apps_connections_open,
        }
        self._users[self.bot_user_id] = User(
            self.bot_user_id, self.bot_name, real_name="CV DSR Bot", is_bot=True
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> SlackEmulator:
        """Start serving in a daemon thread; return self."""
        server = Server((self._host, self._port), Handler)
        server.emulator = self
        self._server = server
        host, port = server.server_address[:2]
        self._base = f"http://{host!s}:{port}"
        # A short poll interval: stop() waits for the serve loop to notice, once per test.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.02,), name="slack-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close Socket Mode connections, stop serving and close the listening socket."""
        self.socket_mode.close_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> SlackEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Return "http://127.0.0.1:PORT" (raises RuntimeError before start())."""
        if not self._base:
            raise RuntimeError("the Slack emulator is not started")
        return self._base

    @property
    def api_url(self) -> str:
        """Return the WebClient base_url: "http://127.0.0.1:PORT/api/"."""
        return f"{self.base_url}/api/"

    # -- workspace setup ---------------------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        name: str,
        *,
        is_admin: bool = False,
        is_owner: bool = False,
        real_name: str | None = None,
        deleted: bool = False,
        email: str | None = None,
    ) -> None:
        """Add (or replace) a workspace member."""
        user = User(
            user_id,
            name,
            real_name=real_name if real_name is not None else name.title(),
            is_admin=is_admin,
            is_owner=is_owner,
            deleted=deleted,
            email=email,
        )
        with self._lock:
            self._users[user_id] = user

    def add_channel(
        self,
        channel_id: str,
        name: str,
        *,
        is_private: bool = False,
        bot_member: bool = True,
        is_im: bool = False,
        is_mpim: bool = False,
        is_archived: bool = False,
        user: str | None = None,
        members: Iterable[str] | None = None,
        is_ext_shared: bool = False,
        is_org_shared: bool = False,
        is_pending_ext_shared: bool = False,
    ) -> None:
        """Add (or replace) a conversation; `members=None` makes every user a member."""
        channel = Channel(
            channel_id,
            name,
            is_private=is_private or is_mpim,
            is_im=is_im,
            is_mpim=is_mpim,
            is_archived=is_archived,
            bot_member=bot_member,
            user=user,
            members=frozenset(members) if members is not None else None,
            is_ext_shared=is_ext_shared,
            is_org_shared=is_org_shared,
            is_pending_ext_shared=is_pending_ext_shared,
        )
        with self._lock:
            self._channels[channel_id] = channel

    def set_bot_member(self, channel_id: str, member: bool) -> None:
        """Invite the bot to a channel or remove it (raises KeyError for an unknown channel)."""
        with self._lock:
            self._channels[channel_id] = replace(self._channels[channel_id], bot_member=member)

    def add_usergroup(self, group_id: str, handle: str, user_ids: Iterable[str]) -> None:
        """Add (or replace) a user group with these members."""
        with self._lock:
            self._usergroups[group_id] = (handle, list(user_ids))

    def response_url(
        self,
        channel_id: str,
        user_id: str,
        *,
        message_ts: str | None = None,
        ephemeral: bool = False,
    ) -> str:
        """Return a live response_url (5 uses, 30 minutes) for a command or a click.

        With `message_ts` (a click on that message; `ephemeral` if it is an ephemeral one),
        replace_original and delete_original act on that message.
        """
        with self._lock:
            self._counter += 1
            kind = "actions" if message_ts else "commands"
            path = f"/{kind}/{self.team_id}/{self._counter}/{secrets.token_urlsafe(18)}"
            original = None
            if message_ts:
                original = ("ephemeral" if ephemeral else "message", message_ts)
            self._response_urls[path] = _ResponseUrl(
                channel_id, user_id, self._clock(), original=original
            )
        return self.base_url + path

    def followups(self, response_url: str) -> list[str]:
        """Return the texts of the messages posted through a response_url, oldest first.

        Each as it reads now (a later replace_original shows); a deleted one is left out.
        """
        with self._lock:
            url = self._response_urls.get(urlsplit(response_url).path)
            if url is None:
                return []
            found = [
                self._messages.get((url.channel, ts))
                if kind == "message"
                else self._ephemerals.get(ts)
                for kind, ts in url.posted
            ]
            return [f.text for f in found if f is not None and not f.deleted]

    def new_trigger_id(self, user_id: str) -> str:
        """Return a trigger_id that views.open accepts once, within 3 seconds."""
        with self._lock:
            self._counter += 1
            trigger = f"{self._counter}.{int(self._clock())}.{secrets.token_hex(16)}"
            self._triggers[trigger] = _Trigger(user_id, self._clock())
        return trigger

    def record_command_ack(self, channel_id: str, user_id: str, body: bytes) -> None:
        """Show what a slash command's acknowledgement body would show (empty: nothing).

        A JSON body with text/blocks becomes an ephemeral message for the user, or a channel
        message with `"response_type": "in_channel"`; any other body is shown as plain text.
        """
        if not body.strip():
            return
        try:
            data = json.loads(body)
        except ValueError:
            data = {"text": body.decode("utf-8", "replace")}
        if not isinstance(data, dict):
            data = {"text": body.decode("utf-8", "replace")}
        with self._lock:
            try:
                # Held to the same rules as response_url posts (inferred: Slack documents an
                # acknowledgement body as "the same as a response_url message"); what Slack
                # refuses is not shown, and the refusal is recorded as a "command_ack" call.
                self._content(data, required=False, blocks_total=self.response_url_blocks_total)
            except _ApiError as exc:
                self._record("command_ack", data, 200, error=exc.error)
                return
            blocks = data.get("blocks") or []
            text = _text(data.get("text"))
            ts = self._next_ts()
            if data.get("response_type") == "in_channel":
                self._store_message(channel_id, ts, text, blocks, None, via="ack", attachments=[])
            else:
                self._ephemerals[ts] = Ephemeral(
                    ts, channel_id, user_id, text, copy.deepcopy(blocks), None, via="ack"
                )

    # -- fault injection -------------------------------------------------------------------

    def inject_ratelimit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next `times` calls of `method` with HTTP 429 and Retry-After.

        `method` is a Web API method, "upload", "response_url", or "*" for any of them.
        """
        with self._lock:
            self._faults.setdefault(method, deque()).append(
                _Fault("ratelimit", times, retry_after=retry_after)
            )

    def inject_error(self, method: str, error: str, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with `{"ok": false, "error": error}`.

        For "upload" and "response_url" the answer is an HTTP 500 carrying the error.
        """
        with self._lock:
            self._faults.setdefault(method, deque()).append(_Fault("error", times, error=error))

    def _drops(self) -> bool:
        """Roll for `drop_rate`; count the drop."""
        with self._lock:
            if self.drop_rate <= 0 or self._drop_random.random() >= self.drop_rate:
                return False
            self.dropped += 1
            return True

    def _take_fault(self, method: str) -> _Fault | None:
        for key in (method, "*"):
            queue = self._faults.get(key)
            if queue:
                fault = queue[0]
                fault.times -= 1
                if fault.times <= 0:
                    queue.popleft()
                return fault
        return None

    # -- slow and failing Slack ------------------------------------------------------------
    # Real Slack answers in 100 ms to several seconds, and now and then with a 5xx; slack-sdk's
    # ServerErrorRetryHandler then retries 500/503 with backoff (0.5 s, 1 s, ...), so one lookup
    # can take longer than Slack's 3 s for an acknowledgement (NOTES-slack.md, "the 3-second
    # trap"). Both are switches here, per method and per call count.

    def inject_latency(
        self, method: str, seconds: float, *, times: int | None = 1, skip: int = 0
    ) -> None:
        """Answer `method` `seconds` late: the next `times` calls (None: every call until
        `clear_latency`), after letting `skip` calls through on time.

        `method` is a Web API method, "upload", "response_url", or "*" for any of them. The
        delay is spent outside the emulator's lock, so other calls are answered meanwhile.
        """
        with self._lock:
            self._slowness.setdefault(method, deque()).append(_Slowness(seconds, times, skip))

    def inject_server_error(
        self, method: str, status: int = 503, *, times: int = 1, seconds: float = 0.0
    ) -> None:
        """Answer the next `times` calls of `method` with HTTP `status` (after `seconds`).

        Evidence: Slack answers 5xx during incidents (status.slack.com); slack-sdk retries
        500 and 503 (http_retry/builtin_handlers.py, ServerErrorRetryHandler).
        """
        with self._lock:
            self._slowness.setdefault(method, deque()).append(
                _Slowness(seconds, times, status=status)
            )

    def clear_latency(self, method: str | None = None) -> None:
        """Drop pending latency and server errors (of one method, or all)."""
        with self._lock:
            if method is None:
                self._slowness.clear()
            else:
                self._slowness.pop(method, None)

    def _take_slowness(self, method: str) -> _Slowness | None:
        for key in (method, "*"):
            queue = self._slowness.get(key)
            if not queue:
                continue
            found = queue[0]
            if found.skip > 0:
                found.skip -= 1
                return None
            if found.times is not None:
                found.times -= 1
                if found.times <= 0:
                    queue.popleft()
            return found
        return None

    def _slow_answer(self, method: str) -> Reply | None:
        """Sleep as injected for `method`; return the server error to answer, if one is due."""
        with self._lock:
            found = self._take_slowness(method)
        if found is None:
            return None
        if found.seconds > 0:
            time.sleep(found.seconds)
        if found.status == 200:
            return None
        with self._lock:
            self._record(method, {}, found.status, error=f"http_{found.status}")
        return Reply(found.status, b"Service Unavailable", content_type="text/html")

    # -- rate tiers (w13-delivery) ------------------------------------------------------------

    def enable_rate_tiers(self, tiers: Mapping[str, RateTier] | None = None) -> None:
        """Limit each method as Slack does (RATE_TIERS, or `tiers` for some methods)."""
        with self._lock:
            self.rate_tiers = {**RATE_TIERS, **dict(tiers or {})}
            self._buckets.clear()

    def _spend(self, bucket: tuple[str, str], tier: RateTier, now: float) -> float:
        """Take a token from `bucket`; return 0, or the seconds until one is there."""
        tokens, at = self._buckets.get(bucket, (float(tier.burst), now))
        tokens = min(float(tier.burst), tokens + (now - at) * tier.per_minute / 60.0)
        if tokens < 1.0:
            self._buckets[bucket] = (tokens, now)
            return (1.0 - tokens) * 60.0 / tier.per_minute
        self._buckets[bucket] = (tokens - 1.0, now)
        return 0.0

    def _rate_limit(self, method: str, params: JsonObject) -> int | None:
        """Return the Retry-After (whole seconds, at least 1) when `method` is over its tier."""
        tier = self.rate_tiers.get(method)
        if tier is None:
            return None
        now = self._clock()
        channel = _text(params.get("channel") or params.get("channel_id"))
        wait = self._spend((method, channel if tier.per_channel else ""), tier, now)
        if not wait and method in POSTS_IN_CHANNEL and channel:
            posts = self.rate_tiers.get("chat.postMessage", POSTS_PER_CHANNEL)
            if method != "chat.postMessage":
                wait = self._spend(("chat.postMessage", channel), posts, now)
        return None if not wait else max(1, math.ceil(wait))

    def set_archived(self, channel_id: str, archived: bool) -> None:
        """Archive or unarchive a channel (posting then answers is_archived)."""
        with self._lock:
            self._channels[channel_id] = replace(self._channels[channel_id], is_archived=archived)

    def set_audience(
        self,
        channel_id: str,
        *,
        is_private: bool | None = None,
        is_ext_shared: bool | None = None,
        is_org_shared: bool | None = None,
        is_pending_ext_shared: bool | None = None,
    ) -> None:
        """Change who can read a channel (None: unchanged); it keeps its id and its history.

        Real Slack changes a live channel's audience in place: a workspace admin makes a
        private channel public (the `channel_convert_to_public` message subtype, "This channel
        was made public. Any member in this workspace can see and join it", same channel id;
        docs.slack.dev/reference/events/message/channel_convert_to_public; the Admin API's
        admin.conversations.convertToPublic / convertToPrivate), and a channel "is converted
        into a shared channel" with another organisation or workspace (the `channel_shared`
        event, api.slack.com/events/channel_shared), after which conversations.info answers
        `is_ext_shared` (or `is_pending_ext_shared` while the invitation waits) for the same id.
        """
        with self._lock:
            channel = self._channels[channel_id]
            self._channels[channel_id] = replace(
                channel,
                is_private=channel.is_private if is_private is None else is_private,
                is_ext_shared=channel.is_ext_shared if is_ext_shared is None else is_ext_shared,
                is_org_shared=channel.is_org_shared if is_org_shared is None else is_org_shared,
                is_pending_ext_shared=(
                    channel.is_pending_ext_shared
                    if is_pending_ext_shared is None
                    else is_pending_ext_shared
                ),
            )

    def rate_limited(self, method: str | None = None) -> int:
        """Return how many calls (of `method`) were answered `ratelimited`."""
        return sum(
            1
            for call in self.calls
            if call.error == "ratelimited" and (method is None or call.method == method)
        )

    # -- snapshots -------------------------------------------------------------------------

    @property
    def calls(self) -> list[ApiCall]:
        """Return every request answered so far, oldest first."""
        with self._lock:
            return copy.deepcopy(self._calls)

    def calls_to(self, method: str) -> list[ApiCall]:
        """Return the requests to one method ("upload" and "response_url" included)."""
        with self._lock:
            return copy.deepcopy([call for call in self._calls if call.method == method])

    def messages(
        self,
        channel_id: str,
        thread_ts: str | None = None,
        *,
        include_deleted: bool = False,
    ) -> list[Message]:
        """Return a channel's top-level messages, or with `thread_ts` the replies in that thread.

        Oldest first, like conversations.history / conversations.replies (without the parent).
        """
        with self._lock:
            found = []
            for message in self._messages.values():
                if message.channel != channel_id or (message.deleted and not include_deleted):
                    continue
                if thread_ts is None:
                    top = message.thread_ts in (None, message.ts) or message.reply_broadcast
                    if top:
                        found.append(message)
                elif message.thread_ts == thread_ts and message.ts != thread_ts:
                    found.append(message)
            return copy.deepcopy(sorted(found, key=lambda m: _ts_key(m.ts)))

    def post_as(
        self, channel_id: str, user_id: str, text: str, *, bot_id: str = "", thread_ts: str = ""
    ) -> str:
        """Post a message as a person (or, with `bot_id`, as another app); return its ts."""
        with self._lock:
            ts = self._next_ts()
            self._messages[(channel_id, ts)] = Message(
                ts=ts,
                channel=channel_id,
                user=user_id,
                text=text,
                blocks=[],
                thread_ts=thread_ts or None,
                updates=0,
                files=[],
                via="client",
                bot_id=bot_id,
            )
        return ts

    def edit_as(self, channel_id: str, ts: str, user_id: str, text: str) -> None:
        """Change a message's text as `user_id` did in the client (it shows as edited)."""
        with self._lock:
            message = self._messages[(channel_id, ts)]
            edited = self._replace_content(message, text, None)
            self._messages[(channel_id, ts)] = replace(edited, edited=(user_id, self._next_ts()))

    def export_channel(self, channel_id: str) -> list[JsonObject]:
        """Return the channel's messages as a Slack data export holds them: every message,
        thread replies included, oldest first, each as Slack's message object."""
        with self._lock:
            found = [
                m for m in self._messages.values() if m.channel == channel_id and not m.deleted
            ]
            return [self._message_payload(m) for m in sorted(found, key=lambda m: _ts_key(m.ts))]

    def message(self, channel_id: str, ts: str) -> Message | None:
        """Return one message (deleted ones included), or None."""
        with self._lock:
            return copy.deepcopy(self._messages.get((channel_id, ts)))

    def ephemerals(
        self, channel_id: str | None = None, user_id: str | None = None
    ) -> list[Ephemeral]:
        """Return the ephemeral messages shown (not deleted), oldest first, optionally filtered."""
        with self._lock:
            return copy.deepcopy(
                [
                    e
                    for e in self._ephemerals.values()
                    if not e.deleted
                    and (channel_id is None or e.channel == channel_id)
                    and (user_id is None or e.user == user_id)
                ]
            )

    def ephemeral(self, ts: str) -> Ephemeral | None:
        """Return one ephemeral message by its ts, or None."""
        with self._lock:
            return copy.deepcopy(self._ephemerals.get(ts))

    def files(self, channel_id: str | None = None) -> list[UploadedFile]:
        """Return every announced file, or with `channel_id` those shared into that channel."""
        with self._lock:
            snaps = [self._file_snapshot(f) for f in self._files.values()]
        if channel_id is None:
            return snaps
        return [f for f in snaps if any(c == channel_id for c, _ in f.shares)]

    def views(self, user_id: str | None = None) -> list[OpenedView]:
        """Return the modals opened, oldest first, optionally only those for one user."""
        with self._lock:
            return copy.deepcopy([v for v in self._views if user_id in (None, v.user)])

    def published(self, user_id: str | None = None) -> list[PublishedView]:
        """Return every Home tab published (views.publish), oldest first, or one user's."""
        with self._lock:
            return copy.deepcopy([v for v in self._published if user_id in (None, v.user)])

    def app_dm(self, user_id: str) -> str:
        """Return the id of the app's DM with `user_id` (its Messages tab), made on first use."""
        with self._lock:
            return self._im_with(user_id).id

    def home(self, user_id: str) -> PublishedView | None:
        """Return the Home tab `user_id` sees now (None: none was published for them)."""
        with self._lock:
            return copy.deepcopy(self._homes.get(user_id))

    def channel(self, channel_id: str) -> Channel | None:
        """Return a conversation, or None."""
        with self._lock:
            return self._channels.get(channel_id)

    def user(self, user_id: str) -> User | None:
        """Return a member, or None."""
        with self._lock:
            return self._users.get(user_id)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Return True as soon as `predicate()` is true; False if it is still false at `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    # -- helpers ---------------------------------------------------------------------------

    def _next_ts(self) -> str:
        # Slack's ts is "seconds.micros", unique per channel and increasing; ours is global.
        now = int(self._clock() * 1_000_000)
        self._last_ts = max(now, self._last_ts + 1)
        return f"{self._last_ts // 1_000_000}.{self._last_ts % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}0EMU{self._counter:06d}"

    def _file_snapshot(self, f: _File) -> UploadedFile:
        first = f.shares[0] if f.shares else None
        return UploadedFile(
            id=f.id,
            name=f.name,
            title=f.title,
            data=f.data or b"",
            channel=first[0] if first else None,
            thread_ts=first[1] if first else None,
            initial_comment=f.initial_comment,
            length=f.length,
            uploaded=f.data is not None,
            completed=f.completed,
            shares=[(c, t) for c, t, _ in f.shares],
        )

    def _require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise _ApiError("missing_scope", needed=scope, provided=",".join(sorted(self.scopes)))

    def _channel_for(self, value: Any, *, post: bool) -> Channel:
        """Return the conversation an argument names, as the bot can see it; raise Slack's error.

        For posting, a user id means the bot's IM with that user (Slack opens it), and a
        public channel the bot has not joined answers not_in_channel.
        """
        key = _text(value).strip()
        channel = self._channels.get(key)
        if channel is None and post:
            if key in self._users and not self._users[key].is_bot:
                channel = self._im_with(key)
            else:
                name = key.removeprefix("#")
                channel = next((c for c in self._channels.values() if c.name == name), None)
        if channel is None:
            raise _ApiError("channel_not_found")
        if not channel.bot_member and (channel.is_private or channel.is_im):
            raise _ApiError("channel_not_found")
        if post:
            if channel.is_archived:
                raise _ApiError("is_archived")
            if not channel.bot_member and "chat:write.public" not in self.scopes:
                raise _ApiError("not_in_channel")
        return channel

    def _im_with(self, user_id: str) -> Channel:
        for channel in self._channels.values():
            if channel.is_im and channel.user == user_id and channel.bot_member:
                return channel
        channel_id = f"D{user_id[1:]}"
        while channel_id in self._channels:  # a user-to-user DM may already have that id
            channel_id += "B"
        channel = Channel(channel_id, user_id, is_im=True, user=user_id)
        self._channels[channel.id] = channel
        return channel

    def _message_payload(self, message: Message) -> JsonObject:
        # A bot user's message carries bot_id, app_id and bot_profile; a person's carries only
        # user (Slack's message object and export format, api.slack.com/events/message and
        # "How to read Slack data exports"; the other app's ids here are inferred).
        data: JsonObject = {"user": message.user, "type": "message", "ts": message.ts}
        if message.bot_id:
            app_id = self.app_id if message.bot_id == self.bot_id else f"A{message.bot_id[1:]}"
            name = self.bot_name if message.bot_id == self.bot_id else message.user.lower()
            data |= {"bot_id": message.bot_id, "app_id": app_id}
        data |= {"text": message.text, "team": self.team_id}
        if message.bot_id:
            data["bot_profile"] = {
                "id": message.bot_id,
                "app_id": data["app_id"],
                "name": name,
                "deleted": False,
                "team_id": self.team_id,
            }
        data["blocks"] = copy.deepcopy(message.blocks)
        if message.edited is not None:
            data["edited"] = {"user": message.edited[0], "ts": message.edited[1]}
        if message.attachments:
            data["attachments"] = copy.deepcopy(message.attachments)
        if message.thread_ts and message.thread_ts != message.ts:
            data["thread_ts"] = message.thread_ts
            parent = self._messages.get((message.channel, message.thread_ts))
            data["parent_user_id"] = parent.user if parent is not None else self.bot_user_id
        if message.files:
            data["files"] = [{"id": file_id} for file_id in message.files]
        return data

    def _store_message(
        self,
        channel: str,
        ts: str,
        text: str,
        blocks: list[JsonObject],
        thread_ts: str | None,
        *,
        via: str,
        attachments: list[JsonObject],
        files: list[str] | None = None,
        reply_broadcast: bool = False,
    ) -> Message:
        message = Message(
            ts=ts,
            channel=channel,
            user=self.bot_user_id,
            text=text,
            blocks=with_block_ids(blocks, ts),
            thread_ts=thread_ts or None,
            updates=0,
            files=list(files or []),
            attachments=copy.deepcopy(attachments),
            reply_broadcast=reply_broadcast,
            via=via,
            bot_id=self.bot_id,
        )
        self._messages[(channel, ts)] = message
        return message

    def _replace_content(
        self, message: Message, text: str | None, blocks: list[JsonObject] | None
    ) -> Message:
        version = MessageVersion(message.text, message.blocks, self._clock())
        updated = replace(
            message,
            text=message.text if text is None else text,
            blocks=message.blocks if blocks is None else with_block_ids(blocks, message.ts),
            updates=message.updates + 1,
            history=[*message.history, version],
        )
        self._messages[(message.channel, message.ts)] = updated
        return updated

    def _content(
        self, params: JsonObject, *, required: bool = True, blocks_total: bool = True
    ) -> tuple[str | None, Any, Any]:
        """Return (text, blocks, attachments) arguments, checked as chat.* methods check them.

        `blocks_total`: refuse blocks whose text adds up to more than `max_blocks_text`.
        """
        text = None if params.get("text") is None else _text(params.get("text"))
        blocks = _parse_blocks(params.get("blocks"))
        attachments = params.get("attachments")
        if attachments is not None and attachments != "":
            attachments = _json_field(attachments, "invalid_attachments")
            if not isinstance(attachments, list):
                raise _ApiError("invalid_attachments")
        else:
            attachments = None
        if required and not text and not blocks and not attachments:
            raise _ApiError("no_text")
        if text is not None and units(text) > self.max_text:
            raise _ApiError("msg_too_long")
        if blocks_total and blocks and blocks_text_units(blocks) > self.max_blocks_text:
            raise _ApiError("msg_blocks_too_long")
        return text, blocks, attachments

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, verb: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        url = urlsplit(target)
        path = url.path
        content_type = headers.get("content-type") or ""
        slow = self._slow_answer(_route_method(path))
        if slow is not None:
            return slow
        if path.startswith("/api/"):
            return self._web_api(path[len("/api/") :], verb, headers, url.query, body)
        if verb != "POST":
            return Reply(405, b"method not allowed", content_type="text/plain")
        if path.startswith("/upload/v1/"):
            return self._upload(path[len("/upload/v1/") :], body, content_type)
        if path.startswith(("/commands/", "/actions/")):
            return self._respond(path, body, content_type)
        return Reply(404, b"not found", content_type="text/plain")

    def _record(
        self,
        method: str,
        params: JsonObject,
        status: int,
        *,
        token: str | None = None,
        error: str | None = None,
        verb: str = "POST",
        content_type: str = "",
    ) -> None:
        self._calls.append(
            ApiCall(
                method=method,
                params=copy.deepcopy(params),
                status=status,
                time=self._clock(),
                token=token,
                error=error,
                http_method=verb,
                content_type=content_type,
            )
        )

    def _web_api(
        self, method: str, verb: str, headers: Mapping[str, str], query: str, body: bytes
    ) -> Reply:
        content_type = headers.get("content-type") or ""
        params, problem, warning = _parse_params(verb, content_type, query, body)
        auth = headers.get("authorization") or ""
        token: str | None = None
        if auth.lower().startswith("bearer "):
            token = auth[len("bearer ") :].strip() or None
        if "token" in params:
            field_token = _text(params.pop("token")).strip()
            token = token or field_token or None
        with self._lock:

            def answer(status: int, data: JsonObject, *extra: tuple[str, str]) -> Reply:
                error = None if data.get("ok") else _text(data.get("error"))
                self._record(
                    method,
                    params,
                    status,
                    token=token,
                    error=error,
                    verb=verb,
                    content_type=content_type,
                )
                scopes = ("X-OAuth-Scopes", ",".join(sorted(self.scopes)))
                return json_reply(status, data, scopes, *extra)

            handler = self._methods.get(method)
            if handler is None:
                return answer(200, {"ok": False, "error": "unknown_method", "req_method": method})
            if problem is not None:
                return answer(200, {"ok": False, "error": problem})
            if token is None:
                return answer(200, {"ok": False, "error": "not_authed"})
            app_level = method == "apps.connections.open"
            if token in (self.app_token, self.bot_token) and (token == self.app_token) != app_level:
                return answer(200, {"ok": False, "error": "not_allowed_token_type"})
            if token != (self.app_token if app_level else self.bot_token):
                return answer(200, {"ok": False, "error": "invalid_auth"})
            limited = self._rate_limit(method, params)
            if limited is not None:
                return answer(
                    429, {"ok": False, "error": "ratelimited"}, ("Retry-After", str(limited))
                )
            fault = self._take_fault(method)
            if fault is not None and fault.kind == "ratelimit":
                return answer(
                    429,
                    {"ok": False, "error": "ratelimited"},
                    ("Retry-After", str(fault.retry_after)),
                )
            if fault is not None:
                return answer(200, {"ok": False, "error": fault.error})
            try:
                data = {"ok": True, **handler(params)}
            except _ApiError as exc:
                data = {"ok": False, "error": exc.error, **exc.extra}
            if warning is not None:
                data["warning"] = warning
                data.setdefault("response_metadata", {})["warnings"] = [warning]
            return answer(200, data)

    # -- Web API methods -------------------------------------------------------------------

    def _auth_test(self, params: JsonObject) -> JsonObject:
        return {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": "Emulator Workspace",
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
            **({"enterprise_id": self.enterprise_id} if self.enterprise_id else {}),
        }

    def _chat_post_message(self, params: JsonObject) -> JsonObject:
        self._require("chat:write")
        channel = self._channel_for(params.get("channel"), post=True)
        text, blocks, attachments = self._content(params)
        thread_ts = _text(params.get("thread_ts")) or None
        ts = self._next_ts()
        message = self._store_message(
            channel.id,
            ts,
            text or "",
            blocks or [],
            thread_ts,
            via="chat.postMessage",
            attachments=attachments or [],
            reply_broadcast=bool(thread_ts) and _flag(params.get("reply_broadcast")),
        )
        return {"channel": channel.id, "ts": ts, "message": self._message_payload(message)}

    def _chat_update(self, params: JsonObject) -> JsonObject:
        self._require("chat:write")
        channel = self._channel_for(params.get("channel"), post=False)
        ts = _text(params.get("ts"))
        message = self._messages.get((channel.id, ts))
        if message is None or message.deleted:
            raise _ApiError("message_not_found")
        if message.user != self.bot_user_id:
            raise _ApiError("cant_update_message")
        text, blocks, attachments = self._content(params)
        updated = self._replace_content(message, text, blocks)
        if attachments is not None:
            updated = replace(updated, attachments=copy.deepcopy(attachments))
            self._messages[(channel.id, ts)] = updated
        return {
            "channel": channel.id,
            "ts": ts,
            "text": updated.text,
            "message": self._message_payload(updated),
        }

    def _chat_post_ephemeral(self, params: JsonObject) -> JsonObject:
        self._require("chat:write")
        channel = self._channel_for(params.get("channel"), post=True)
        user_id = _text(params.get("user"))
        if not user_id:
            raise _ApiError("invalid_arguments")
        user = self._users.get(user_id)
        if user is None:
            raise _ApiError("user_not_found")
        if channel.members is not None and user_id not in channel.members:
            raise _ApiError("user_not_in_channel")
        if channel.is_im and channel.user != user_id:
            raise _ApiError("user_not_in_channel")
        text, blocks, _ = self._content(params)
        ts = self._next_ts()
        self._ephemerals[ts] = Ephemeral(
            ts,
            channel.id,
            user_id,
            text or "",
            with_block_ids(blocks or [], ts),
            _text(params.get("thread_ts")) or None,
        )
        return {"message_ts": ts}

    def _chat_get_permalink(self, params: JsonObject) -> JsonObject:
        channel = self._channel_for(params.get("channel"), post=False)
        ts = _text(params.get("message_ts"))
        message = self._messages.get((channel.id, ts))
        if message is None or message.deleted:
            raise _ApiError("message_not_found")
        link = f"https://{self.team_domain}.slack.com/archives/{channel.id}/p{ts.replace('.', '')}"
        if message.thread_ts and message.thread_ts != ts:
            link += f"?thread_ts={message.thread_ts}&cid={channel.id}"
        return {"channel": channel.id, "permalink": link}

    def _files_get_upload_url(self, params: JsonObject) -> JsonObject:
        self._require("files:write")
        filename = _text(params.get("filename"))
        try:
            length = int(_text(params.get("length")))
        except ValueError:
            length = -1
        if not filename or length < 0:
            raise _ApiError("invalid_arguments")
        file_id = self._next_id("F")
        upload_secret = secrets.token_urlsafe(24)
        self._files[file_id] = _File(
            file_id, filename, length, upload_secret, created=int(self._clock())
        )
        self._uploads[upload_secret] = file_id
        return {"upload_url": f"{self.base_url}/upload/v1/{upload_secret}", "file_id": file_id}

    def _files_complete_upload(self, params: JsonObject) -> JsonObject:
        self._require("files:write")
        items = _json_field(params.get("files"), "invalid_arguments")
        if not isinstance(items, list) or not items:
            raise _ApiError("invalid_arguments")
        if len(items) > MAX_FILES_PER_COMPLETION:
            raise _ApiError(
                "invalid_arguments",
                response_metadata={
                    "messages": [
                        f"[ERROR] no more than {MAX_FILES_PER_COMPLETION} items allowed "
                        "[json-pointer:/files]"
                    ]
                },
            )
        chosen: list[tuple[_File, str]] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise _ApiError("invalid_arguments")
            found = self._files.get(item["id"])
            # A file whose bytes never arrived is as unknown to Slack as a made-up id.
            if found is None or found.data is None:
                raise _ApiError("file_not_found")
            chosen.append((found, _text(item.get("title")) or found.name))
        targets = [c for c in _text(params.get("channels")).split(",") if c.strip()]
        if params.get("channel_id"):
            targets.insert(0, _text(params.get("channel_id")))
        channels = [self._channel_for(target.strip(), post=True) for target in targets]
        thread_ts = _text(params.get("thread_ts")) or None
        if thread_ts and len(channels) != 1:
            raise _ApiError("invalid_arguments")
        comment = params.get("initial_comment")
        for found, title in chosen:
            found.title = title
            found.completed = True
            if comment is not None:
                found.initial_comment = _text(comment)
        ids = [found.id for found, _ in chosen]
        for channel in channels:
            ts = self._next_ts()
            self._store_message(
                channel.id,
                ts,
                _text(comment),
                [],
                thread_ts,
                via="files.completeUploadExternal",
                attachments=[],
                files=ids,
            )
            for found, _ in chosen:
                found.shares.append((channel.id, thread_ts, ts))
        return {"files": [{"id": found.id, "title": title} for found, title in chosen]}

    def _file_object(self, found: _File) -> JsonObject:
        public: dict[str, list[JsonObject]] = {}
        private: dict[str, list[JsonObject]] = {}
        for channel_id, thread_ts, ts in found.shares:
            channel = self._channels.get(channel_id)
            bucket = private if channel is None or channel.is_private or channel.is_im else public
            share: JsonObject = {"ts": ts, "channel_name": channel.name if channel else ""}
            if thread_ts:
                share["thread_ts"] = thread_ts
            bucket.setdefault(channel_id, []).append(share)
        kinds = {c: self._channels.get(c) for c, _, _ in found.shares}
        return {
            "id": found.id,
            "created": found.created,
            "timestamp": found.created,
            "name": found.name,
            "title": found.title or found.name,
            "user": self.bot_user_id,
            "size": len(found.data or b""),
            "mode": "hosted",
            "is_external": False,
            "is_public": bool(public),
            "url_private": f"https://files.slack.com/files-pri/{self.team_id}-{found.id}/x",
            "channels": sorted(
                c for c, k in kinds.items() if k and not k.is_private and not k.is_im
            ),
            "groups": sorted(c for c, k in kinds.items() if k and k.is_private),
            "ims": sorted(c for c, k in kinds.items() if k and k.is_im),
            "shares": {
                name: data for name, data in (("public", public), ("private", private)) if data
            },
        }

    def _files_info(self, params: JsonObject) -> JsonObject:
        self._require("files:read")
        found = self._files.get(_text(params.get("file")))
        if found is None or found.data is None:
            raise _ApiError("file_not_found")
        return {"file": self._file_object(found), "comments": []}

    def _users_info(self, params: JsonObject) -> JsonObject:
        self._require("users:read")
        user = self._users.get(_text(params.get("user")))
        if user is None:
            raise _ApiError("user_not_found")
        profile: JsonObject = {
            "real_name": user.real_name,
            "display_name": user.name,
            "real_name_normalized": user.real_name,
            "display_name_normalized": user.name,
            "team": self.team_id,
        }
        if user.email is not None and "users:read.email" in self.scopes:
            profile["email"] = user.email
        data: JsonObject = {
            "id": user.id,
            "team_id": self.team_id,
            "name": user.name,
            "deleted": user.deleted,
            "real_name": user.real_name,
            "tz": "Europe/Berlin",
            "tz_label": "Central European Time",
            "tz_offset": 3600,
            "profile": profile,
            "is_admin": user.is_admin,
            "is_owner": user.is_owner,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": user.is_bot,
            "is_app_user": False,
            "updated": 1700000000,
        }
        if user.is_bot:
            data["profile"]["bot_id"] = self.bot_id
        return {"user": data}

    def _usergroups_users_list(self, params: JsonObject) -> JsonObject:
        self._require("usergroups:read")
        if self.free_plan:
            raise _ApiError("plan_upgrade_required")
        group_id = _text(params.get("usergroup"))
        if not group_id:
            raise _ApiError("invalid_arguments")
        group = self._usergroups.get(group_id)
        if group is None:
            raise _ApiError("no_such_subteam")
        return {"users": list(group[1])}

    def _conversations_info(self, params: JsonObject) -> JsonObject:
        # Slack checks the scope of the conversation's kind before whether the bot may see it:
        # a group DM without mpim:read answered missing_scope (issue 13, item 4; inferred for
        # IMs likewise).
        known = self._channels.get(_text(params.get("channel")).strip())
        if known is not None and (known.is_mpim or known.is_im):
            self._require("mpim:read" if known.is_mpim else "im:read")
        channel = self._channel_for(params.get("channel"), post=False)
        if channel.is_im:
            self._require("im:read")
            return {
                "channel": {
                    "id": channel.id,
                    "created": 1700000000,
                    "is_archived": channel.is_archived,
                    "is_im": True,
                    "is_org_shared": False,
                    "context_team_id": self.team_id,
                    "updated": 1700000000000,
                    "user": channel.user or channel.name,
                    "is_user_deleted": False,
                    "priority": 0,
                }
            }
        if channel.is_mpim:
            self._require("mpim:read")
        elif channel.is_private:
            self._require("groups:read")
        else:
            self._require("channels:read")
        return {
            "channel": {
                "id": channel.id,
                "name": channel.name,
                "is_channel": not channel.is_private,
                "is_group": channel.is_private and not channel.is_mpim,
                "is_im": False,
                "is_mpim": channel.is_mpim,
                "is_private": channel.is_private,
                "created": 1700000000,
                "is_archived": channel.is_archived,
                "is_general": channel.name == "general",
                "unlinked": 0,
                "name_normalized": channel.name,
                "is_shared": channel.is_ext_shared or channel.is_org_shared,
                "is_org_shared": channel.is_org_shared,
                "is_pending_ext_shared": channel.is_pending_ext_shared,
                "pending_shared": [],
                "context_team_id": self.team_id,
                "updated": 1700000000000,
                "parent_conversation": None,
                "creator": "U0CREATOR",
                "is_ext_shared": channel.is_ext_shared,
                "shared_team_ids": (
                    [self.team_id, "T0PARTNER"] if channel.is_ext_shared else [self.team_id]
                ),
                "pending_connected_team_ids": [],
                "is_member": channel.bot_member,
                "topic": {"value": "", "creator": "", "last_set": 0},
                "purpose": {"value": "", "creator": "", "last_set": 0},
                "previous_names": [],
            }
        }

    def _views_open(self, params: JsonObject) -> JsonObject:
        trigger_id = _text(params.get("trigger_id"))
        view = _view_argument(params, required=trigger_id)
        trigger = self._triggers.get(trigger_id)
        if trigger is None:
            raise _ApiError("invalid_trigger_id")
        if trigger.used:
            raise _ApiError("exchanged_trigger_id")
        if self._clock() - trigger.created > TRIGGER_TTL:
            raise _ApiError("expired_trigger_id")
        problems = view_problems(view)
        if problems:
            raise _ApiError("invalid_arguments", response_metadata={"messages": problems})
        trigger.used = True
        view_id = self._next_id("V")
        modal = {
            "title": view.get("title"),
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "close": view.get("close"),
            "submit": view.get("submit"),
        }
        stored = self._stored_view(view, view_id, modal)
        self._views.append(OpenedView(view_id, trigger_id, trigger.user, stored, self._clock()))
        return {"view": copy.deepcopy(stored)}

    def _stored_view(self, view: JsonObject, view_id: str, extra: JsonObject) -> JsonObject:
        """Return `view` as Slack stores and answers it (ids, block_ids and a new hash filled
        in), with `extra` (a modal's title, buttons and close flags) after the hash."""
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": view["type"],
            "blocks": with_block_ids(view.get("blocks") or [], view_id),
            "private_metadata": _text(view.get("private_metadata")),
            "callback_id": _text(view.get("callback_id")),
            "state": {"values": {}},
            "hash": f"{int(self._clock())}.{secrets.token_hex(4)}",
            **extra,
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.app_id,
            "external_id": _text(view.get("external_id")),
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }

    def _views_publish(self, params: JsonObject) -> JsonObject:
        """views.publish: replace a person's Home tab.

        Evidence: api.slack.com/methods/views.publish (user_id and view required, view a
        JSON-encoded string; optional hash, `hash_conflict` when it is not the stored one;
        `invalid_arguments` for a view Slack refuses, with the reasons in
        response_metadata.messages as for views.open). An unknown user is answered
        `user_not_found` (inferred). The view comes back with its id and a new hash.
        """
        user_id = _text(params.get("user_id"))
        view = _view_argument(params, required=user_id)
        user = self._users.get(user_id)
        if user is None or user.deleted:
            raise _ApiError("user_not_found")
        current = self._homes.get(user_id)
        sent_hash = _text(params.get("hash"))
        if sent_hash and (current is None or current.view.get("hash") != sent_hash):
            raise _ApiError("hash_conflict")
        total = self.max_blocks_text if self.home_blocks_total else None
        problems = home_view_problems(view, max_text=total)
        if problems:
            raise _ApiError("invalid_arguments", response_metadata={"messages": problems})
        view_id = current.id if current is not None else self._next_id("V")
        stored = self._stored_view(view, view_id, {})
        published = PublishedView(view_id, user_id, stored, self._clock())
        self._published.append(published)
        self._homes[user_id] = published
        return {"view": copy.deepcopy(stored)}

    def _apps_connections_open(self, params: JsonObject) -> JsonObject:
        return {"url": self.socket_mode.open_url(self.base_url)}

    # -- upload and response_url routes ----------------------------------------------------

    def _plain_fault(self, method: str, params: JsonObject, content_type: str) -> Reply | None:
        fault = self._take_fault(method)
        if fault is None:
            return None
        if fault.kind == "ratelimit":
            self._record(method, params, 429, error="ratelimited", content_type=content_type)
            return json_reply(
                429,
                {"ok": False, "error": "ratelimited"},
                ("Retry-After", str(fault.retry_after)),
            )
        self._record(method, params, 500, error=fault.error, content_type=content_type)
        return json_reply(500, {"ok": False, "error": fault.error})

    def _upload(self, secret: str, body: bytes, content_type: str) -> Reply:
        with self._lock:
            file_id = self._uploads.get(secret)
            params: JsonObject = {"file_id": file_id, "bytes": len(body)}
            faulted = self._plain_fault("upload", params, content_type)
            if faulted is not None:
                return faulted
            found = self._files.get(file_id or "")
            if found is None:
                self._record("upload", params, 404, error="not_found", content_type=content_type)
                return Reply(404, b"not found", content_type="text/plain")
            if found.data is not None:
                self._record(
                    "upload", params, 409, error="already_uploaded", content_type=content_type
                )
                return Reply(409, b"already uploaded", content_type="text/plain")
            if len(body) != found.length:
                error = f"length mismatch: announced {found.length}, received {len(body)}"
                self._record("upload", params, 400, error=error, content_type=content_type)
                return Reply(400, error.encode(), content_type="text/plain")
            found.data = bytes(body)
            self._record("upload", params, 200, content_type=content_type)
            return Reply(200, f"OK - {len(body)}".encode(), content_type="text/plain")

    def _respond(self, path: str, body: bytes, content_type: str) -> Reply:
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        params: JsonObject = data if isinstance(data, dict) else {"raw": body.decode("latin-1")}
        with self._lock:

            def fail(status: int, error: str) -> Reply:
                self._record("response_url", params, status, error=error, content_type=content_type)
                return json_reply(status, {"ok": False, "error": error})

            faulted = self._plain_fault("response_url", params, content_type)
            if faulted is not None:
                return faulted
            url = self._response_urls.get(path)
            if url is None:
                return fail(404, "invalid_url")
            if self._clock() - url.created > RESPONSE_URL_TTL:
                return fail(404, "expired_url")
            if url.uses >= RESPONSE_URL_USES:
                return fail(404, "used_url")
            if not isinstance(data, dict):
                return fail(400, "invalid_payload")
            try:
                self._apply_response(url, data)
            except _ApiError as exc:
                if exc.error in _WEBHOOK_TEXT_ERRORS:
                    # A response_url answers these as incoming webhooks do: HTTP 400 and the
                    # bare code as plain text (sourcegraph issue 49979: '400 Bad Request with
                    # body "invalid_blocks"'; java-slack-sdk issue 1017).
                    self._record(
                        "response_url", params, 400, error=exc.error, content_type=content_type
                    )
                    return Reply(400, exc.error.encode(), content_type="text/plain")
                return fail(400 if exc.error != "message_not_found" else 404, exc.error)
            url.uses += 1
            self._record("response_url", params, 200, content_type=content_type)
            return json_reply(200, {"ok": True})

    def _apply_response(self, url: _ResponseUrl, data: JsonObject) -> None:
        if _flag(data.get("delete_original")):
            if url.original is None:
                raise _ApiError("message_not_found")
            kind, ts = url.original
            if kind == "message":
                found = self._messages.get((url.channel, ts))
                if found is None or found.deleted:
                    raise _ApiError("message_not_found")
                self._messages[(url.channel, ts)] = replace(found, deleted=True)
            else:
                ephemeral = self._ephemerals.get(ts)
                if ephemeral is None:
                    raise _ApiError("message_not_found")
                self._ephemerals[ts] = replace(ephemeral, deleted=True)
            return
        text, blocks, attachments = self._content(data, blocks_total=self.response_url_blocks_total)
        thread_ts = _text(data.get("thread_ts")) or None
        if _flag(data.get("replace_original")) and url.original is not None:
            kind, ts = url.original
            if kind == "message":
                found = self._messages.get((url.channel, ts))
                if found is None or found.deleted:
                    raise _ApiError("message_not_found")
                self._replace_content(found, text or "", blocks or [])
            else:
                ephemeral = self._ephemerals.get(ts)
                if ephemeral is None or ephemeral.deleted:
                    raise _ApiError("message_not_found")
                self._ephemerals[ts] = replace(
                    ephemeral,
                    text=text or "",
                    blocks=with_block_ids(blocks or [], ts),
                    updates=ephemeral.updates + 1,
                )
            return
        ts = self._next_ts()
        if data.get("response_type") == "in_channel":
            self._store_message(
                url.channel,
                ts,
                text or "",
                blocks or [],
                thread_ts,
                via="response_url",
                attachments=attachments or [],
            )
            url.original = ("message", ts)
            url.posted.append(url.original)
        else:
            self._ephemerals[ts] = Ephemeral(
                ts,
                url.channel,
                url.user,
                text or "",
                with_block_ids(blocks or [], ts),
                thread_ts,
                via="response_url",
            )
            url.original = ("ephemeral", ts)
            url.posted.append(url.original)


_WEBHOOK_TEXT_ERRORS = frozenset(
    {"invalid_blocks", "invalid_blocks_format", "msg_too_long", "msg_blocks_too_long"}
)


def _route_method(path: str) -> str:
    """Return the method name faults are keyed by: a Web API method, "upload", "response_url"."""
    if path.startswith("/api/"):
        return path[len("/api/") :]
    if path.startswith("/upload/v1/"):
        return "upload"
    if path.startswith(("/commands/", "/actions/")):
        return "response_url"
    return path


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds or 0), int(micros or 0)
