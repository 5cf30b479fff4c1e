"""What the Slack emulator hands to tests: frozen snapshots of its workspace and of its calls.

Pure values: `SlackEmulator` builds them under its lock from deep copies, so a test can keep
and compare them while the emulator serves on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

__all__ = [
    "ApiCall",
    "Channel",
    "Ephemeral",
    "JsonObject",
    "Message",
    "MessageVersion",
    "OpenedView",
    "Sharing",
    "UploadedFile",
    "User",
]

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class ApiCall:
    """One request the emulator answered: a Web API method, "upload" or "response_url"."""

    method: str
    params: JsonObject  # body/query fields as received, without the token
    status: int
    time: float
    token: str | None = None  # from the Authorization header or the `token` field
    error: str | None = None  # the `error` answered, if any
    http_method: str = "POST"
    content_type: str = ""

    @property
    def ok(self) -> bool:
        """Return True when the call succeeded (HTTP 200 and no error)."""
        return self.status == 200 and self.error is None


@dataclass(frozen=True)
class MessageVersion:
    """What a message said before a chat.update or replace_original changed it."""

    text: str
    blocks: list[JsonObject]
    time: float


@dataclass(frozen=True)
class Message:
    """A channel message (top level or thread reply) as Slack stores it."""

    ts: str
    channel: str
    user: str
    text: str
    blocks: list[JsonObject]  # as stored: Slack fills in a block_id where none was sent
    thread_ts: str | None
    updates: int
    files: list[str]
    attachments: list[JsonObject] = field(default_factory=list)
    history: list[MessageVersion] = field(default_factory=list)
    deleted: bool = False
    reply_broadcast: bool = False
    via: str = "chat.postMessage"  # or "response_url", "ack", "files.completeUploadExternal"
    # Who posted it: the bot (user=bot user, bot_id=its bot), another app (its own bot user
    # and bot id) or a person (no bot id). `post_as` adds the last two.
    bot_id: str = ""
    edited: tuple[str, str] | None = None  # (user, ts) of a person's edit (`edit_as`)


@dataclass(frozen=True)
class Ephemeral:
    """A message only `user` sees (chat.postEphemeral, response_url, or a command's ack)."""

    ts: str
    channel: str
    user: str
    text: str
    blocks: list[JsonObject]
    thread_ts: str | None
    updates: int = 0
    deleted: bool = False
    via: str = "chat.postEphemeral"


@dataclass(frozen=True)
class UploadedFile:
    """A file announced by files.getUploadURLExternal; `data` once its bytes arrived."""

    id: str
    name: str
    title: str
    data: bytes
    channel: str | None  # first channel it was shared to (None: not completed or no channel)
    thread_ts: str | None
    initial_comment: str | None
    length: int = 0  # as announced
    uploaded: bool = False  # bytes received
    completed: bool = False  # files.completeUploadExternal accepted it
    shares: list[tuple[str, str | None]] = field(default_factory=list)  # (channel, thread_ts)


@dataclass(frozen=True)
class OpenedView:
    """A modal opened with views.open, as Slack returned it (id, state, hash filled in)."""

    id: str
    trigger_id: str
    user: str
    view: JsonObject
    time: float

    @property
    def callback_id(self) -> str:
        """Return the view's callback_id ("" when none)."""
        return str(self.view.get("callback_id") or "")


@dataclass(frozen=True)
class PublishedView:
    """A Home tab published with views.publish, as Slack returned it (id, hash filled in)."""

    id: str
    user: str
    view: JsonObject
    time: float

    @property
    def blocks(self) -> list[JsonObject]:
        """Return the view's blocks as Slack stores them (block_ids filled in)."""
        blocks = self.view.get("blocks")
        return list(blocks) if isinstance(blocks, list) else []


@dataclass(frozen=True)
class Channel:
    """A conversation the emulator knows: channel, private channel, IM or MPIM."""

    id: str
    name: str
    is_private: bool = False
    is_im: bool = False
    is_mpim: bool = False
    is_archived: bool = False
    bot_member: bool = True
    user: str | None = None  # the other party of an IM
    members: frozenset[str] | None = None  # None: every user is a member
    # Slack Connect (another organisation reads it), shared across an Enterprise Grid org, or
    # invited to Slack Connect and not yet accepted (api.slack.com/types/conversation).
    is_ext_shared: bool = False
    is_org_shared: bool = False
    is_pending_ext_shared: bool = False


class Sharing(TypedDict, total=False):
    """How a channel is shared beyond the workspace: the keywords of `add_channel`."""

    is_ext_shared: bool
    is_org_shared: bool
    is_pending_ext_shared: bool


@dataclass(frozen=True)
class User:
    """A workspace member."""

    id: str
    name: str
    real_name: str = ""
    is_admin: bool = False
    is_owner: bool = False
    is_bot: bool = False
    deleted: bool = False
    email: str | None = None
