"""Who may do what: the one table of authorisation rules. Pure functions over plain values.

| action     | who                                                   | when                     |
|------------|-------------------------------------------------------|--------------------------|
| request    | BOT_REQUESTERS (user or group), anyone when empty;    | channel allowed by       |
|            | deletions also need BOT_APPROVERS to be configured    | BOT_ALLOWED_CHANNELS     |
| approve    | BOT_APPROVERS (user or group), never the requester,   | pending, not expired     |
|            | each approver once; an approval counts only while its | (re-checked whenever an  |
|            | approver still is one (`approval_counts`)             | approval is added)       |
| reject     | BOT_APPROVERS (user or group), never the requester    | pending, not expired     |
| cancel     | the requester                                         | queued/running export,   |
|            |                                                       | previewing/pending delete|
| (buttons)  | approve, reject and cancel clicks count only from the | always                   |
|            | request's own channel                                 |                          |
| retry      | the requester or an approver                          | failed; a deletion's     |
|            |                                                       | approvals still in force |
|            |                                                       | (else: new preview and   |
|            |                                                       | new approvals)           |
| resend     | the requester or an approver                          | a delivery is held       |
| read audit | approvers: everything; requesters: their own requests | always                   |
| post       | files with personal data go only where the           | public channels only with|
| personal   | workspace's own members read them: not public, not    | BOT_ALLOW_PUBLIC_EXPORTS;|
| data       | shared with other organisations or workspaces         | shared ones only with    |
|            | (`may_post_personal_data`)                            | BOT_ALLOW_SHARED_CHANNEL_|
|            |                                                       | EXPORTS                  |

A deletion's recorded approvals are in force (`approvals_in_force`, asked by a retry) while
enough of them still count (`approval_counts`) and the last one is younger than
BOT_APPROVAL_TTL_HOURS.

Every refusal carries a message fit for the user; callers record it in the audit log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Rules:
    """The configured lists (from Config)."""

    approvers: frozenset[str] = frozenset()
    requesters: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    required_approvals: int = 1
    allow_public_exports: bool = False
    allow_shared_exports: bool = False


@dataclass(frozen=True)
class Audience:
    """Who can read a conversation, beyond the people the request is for (conversations.info)."""

    public: bool = False  # any member of the workspace can join it and read its history
    external: bool = False  # Slack Connect: another organisation reads it, or is invited
    org_wide: bool = False  # shared between workspaces of an Enterprise Grid organisation


@dataclass(frozen=True)
class Actor:
    """A Slack user and the configured user groups they belong to."""

    user_id: str
    groups: frozenset[str] = frozenset()

    def listed_in(self, ids: Iterable[str]) -> bool:
        """Return True when the user, or one of their groups, is in `ids`."""
        ids = frozenset(ids)
        return self.user_id in ids or bool(self.groups & ids)


@dataclass(frozen=True)
class Subject:
    """What the rules need to know about a stored request."""

    request_id: str
    kind: str  # export | delete | manual
    status: str
    requester: str
    approvals: tuple[str, ...] = ()
    expires_at: datetime | None = None
    channel: str = ""  # where it was requested (and its buttons were posted)
    approved_at: datetime | None = None  # the last recorded approval


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


ALLOW = Decision(True)
CANCELLABLE = {"export": {"queued", "running"}, "delete": {"previewing", "pending"}}


def may_request(rules: Rules, actor: Actor, channel: str, *, deletion: bool) -> Decision:
    """Return whether `actor` may make a request in `channel`."""
    if rules.allowed_channels and channel not in rules.allowed_channels:
        return Decision(
            False,
            "This channel is not one where the bot takes requests (BOT_ALLOWED_CHANNELS). "
            "Ask in an allowed channel, or ask an admin to add this one.",
        )
    if rules.requesters and not actor.listed_in(rules.requesters):
        return Decision(
            False,
            "You are not on the list of people who may make requests (BOT_REQUESTERS). "
            "Ask an admin to add you or your user group.",
        )
    if deletion and not rules.approvers:
        return Decision(
            False,
            "Deletions are disabled: no approvers are configured (BOT_APPROVERS). "
            "Ask an admin to set at least one approver.",
        )
    return ALLOW


def _from_its_channel(subject: Subject, channel: str | None) -> Decision:
    """A click counts only from the request's own message: `channel` None means no click."""
    if channel is None or channel == subject.channel:
        return ALLOW
    return Decision(
        False,
        f"{subject.request_id} was requested in another channel; it can only be decided "
        "from its own message there.",
    )


def _decidable(subject: Subject, now: datetime) -> Decision:
    if subject.kind != "delete":
        return Decision(False, f"{subject.request_id} is not a deletion: nothing to approve.")
    if subject.status == "pending" and subject.expires_at is not None and now >= subject.expires_at:
        return Decision(False, f"{subject.request_id} has expired and can no longer be decided.")
    if subject.status != "pending":
        return Decision(
            False, f"{subject.request_id} is {subject.status} and can no longer be decided."
        )
    return ALLOW


def may_approve(
    rules: Rules, actor: Actor, subject: Subject, now: datetime, *, channel: str | None = None
) -> Decision:
    """Return whether `actor` may approve the deletion `subject` now (clicked in `channel`)."""
    if not (where := _from_its_channel(subject, channel)):
        return where
    if actor.user_id == subject.requester:
        return Decision(False, "You cannot approve your own request: a second person must.")
    if not actor.listed_in(rules.approvers):
        return Decision(False, "Only approvers (BOT_APPROVERS) may approve deletions.")
    if actor.user_id in subject.approvals:
        return Decision(False, f"You have already approved {subject.request_id}.")
    return _decidable(subject, now)


def approval_counts(rules: Rules, approver: Actor, subject: Subject) -> Decision:
    """Return whether a recorded approval by `approver` still counts under the current rules.

    The one test of "is this recorded approval still authorised": an approver removed from
    BOT_APPROVERS or from an approver group since (a restart with new config, a group edited in
    Slack) no longer counts, nor does an approval by the requester. `approver.groups` must be
    read fresh from Slack. Used when an approval is added and before a retry.
    """
    who = f"<@{approver.user_id}>"
    if approver.user_id == subject.requester:
        return Decision(
            False, f"{who} requested {subject.request_id}, so their approval cannot count."
        )
    if not approver.listed_in(rules.approvers):
        return Decision(
            False,
            f"{who} is no longer an approver (BOT_APPROVERS and its user groups), so their "
            f"approval of {subject.request_id} no longer counts.",
        )
    return ALLOW


def may_reject(
    rules: Rules, actor: Actor, subject: Subject, now: datetime, *, channel: str | None = None
) -> Decision:
    """Return whether `actor` may reject the deletion `subject` now (clicked in `channel`)."""
    if not (where := _from_its_channel(subject, channel)):
        return where
    if actor.user_id == subject.requester:
        return Decision(False, "You cannot reject your own request: use Cancel instead.")
    if not actor.listed_in(rules.approvers):
        return Decision(False, "Only approvers (BOT_APPROVERS) may reject deletions.")
    return _decidable(subject, now)


def may_cancel(actor: Actor, subject: Subject, *, channel: str | None = None) -> Decision:
    """Return whether `actor` may cancel `subject` (clicked in `channel`)."""
    if not (where := _from_its_channel(subject, channel)):
        return where
    if actor.user_id != subject.requester:
        return Decision(False, f"Only the requester may cancel {subject.request_id}.")
    if subject.status not in CANCELLABLE.get(subject.kind, set()):
        return Decision(False, f"{subject.request_id} is {subject.status}: it cannot be cancelled.")
    return ALLOW


def approvals_in_force(
    rules: Rules,
    subject: Subject,
    approvers: Sequence[Actor],
    now: datetime,
    ttl: timedelta,
) -> Decision:
    """Return whether the recorded `approvers` of `subject` still authorise carrying it out.

    They do while the last approval is younger than `ttl` and at least
    `rules.required_approvals` of them still count (`approval_counts`). A retry of a deletion asks
    this; when it says no, the deletion needs a new preview and new approvals.
    """
    if subject.approved_at is None or now >= subject.approved_at + ttl:
        hours = f"{ttl.total_seconds() / 3600:g}"
        return Decision(
            False,
            f"The approval of {subject.request_id} is older than {hours} h "
            "(BOT_APPROVAL_TTL_HOURS).",
        )
    stale = [d.reason for a in approvers if not (d := approval_counts(rules, a, subject))]
    standing = len(approvers) - len(stale)
    if standing < rules.required_approvals:
        return Decision(
            False,
            " ".join(stale)
            + f" {standing} of the {rules.required_approvals} required approval(s) stand.",
        )
    return ALLOW


def may_retry(rules: Rules, actor: Actor, subject: Subject) -> Decision:
    """Return whether `actor` may resume the failed request `subject`."""
    if actor.user_id != subject.requester and not actor.listed_in(rules.approvers):
        return Decision(False, f"Only the requester or an approver may retry {subject.request_id}.")
    if subject.status != "failed":
        return Decision(
            False, f"{subject.request_id} is {subject.status}: only failed requests can be retried."
        )
    return ALLOW


def may_resend(rules: Rules, actor: Actor, subject: Subject) -> Decision:
    """Return whether `actor` may post the held deliveries of `subject` again (any status)."""
    if actor.user_id != subject.requester and not actor.listed_in(rules.approvers):
        return Decision(
            False, f"Only the requester or an approver may resend {subject.request_id}."
        )
    return ALLOW


def may_read_audit(rules: Rules, actor: Actor, *, own_request: bool | None) -> Decision:
    """Return whether `actor` may read the audit (`own_request`: the trail asked for is theirs).

    `own_request` is None for the whole log, True/False for one request's trail.
    """
    if actor.listed_in(rules.approvers):
        return ALLOW
    if own_request:
        return ALLOW
    return Decision(
        False,
        "Only approvers may read the whole audit log; requesters may read the trail of their "
        "own requests (`audit --request <id>`).",
    )


def may_post_personal_data(rules: Rules, audience: Audience, *, what: str) -> Decision:
    """Return whether `what` (e.g. "This export"), a file holding personal data, may be posted
    into a conversation read by `audience`.

    The one rule for packages, receipts and audit files. A shared channel's history, files
    included, is readable by every organisation or workspace it is shared with.
    """
    if audience.external and not rules.allow_shared_exports:
        return Decision(
            False,
            f"{what} holds personal data, and this channel is shared with another organisation "
            "(Slack Connect), whose members could read it. Run it in a channel of your own "
            "organisation, or ask an admin to set BOT_ALLOW_SHARED_CHANNEL_EXPORTS=true.",
        )
    if audience.org_wide and not rules.allow_shared_exports:
        return Decision(
            False,
            f"{what} holds personal data, and this channel is shared with other workspaces of "
            "your Enterprise Grid organisation. Run it in a channel of this workspace, or ask "
            "an admin to set BOT_ALLOW_SHARED_CHANNEL_EXPORTS=true.",
        )
    if audience.public and not rules.allow_public_exports:
        return Decision(
            False,
            f"{what} holds personal data, and this is a public channel. Run it in a private "
            "channel, or ask an admin to set BOT_ALLOW_PUBLIC_EXPORTS=true.",
        )
    return ALLOW
