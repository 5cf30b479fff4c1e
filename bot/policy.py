"""Who may do what, and where: the one table of rules. Pure functions over plain values.

`bot.service` looks the facts up (the stored request, the actor's user groups, what Slack says
of a channel), asks one function here, and records a refusal's reason in the audit log.

| action      | who                                                  | when / where              |
|-------------|------------------------------------------------------|---------------------------|
| request     | BOT_REQUESTERS (user or group), anyone when empty;   | channel allowed by        |
| (export,    | deletions also need BOT_APPROVERS to be configured   | BOT_ALLOWED_CHANNELS;     |
| delete)     | (`may_request`)                                      | `may_submit_here`, below  |
| submit here | a request goes only into a channel (not a DM or a    | the bot is a member; a    |
|             | group DM: no approvers, no audit trail there) that   | personal-data export, and |
|             | the bot is a member of (`in_a_channel`, `bot_is_in`) | every deletion (for its   |
|             |                                                      | receipt), also needs      |
|             |                                                      | `may_post_personal_data`  |
| approve     | BOT_APPROVERS (user or group), never the requester,  | pending, not expired, the |
|             | each approver once; an approval counts only while    | whole preview shown       |
|             | its approver still is one (`approval_counts`)        | (`preview_shown`); starts |
|             |                                                      | the deletion once none is |
|             |                                                      | missing (`approvals_      |
|             |                                                      | missing`)                 |
| reject      | BOT_APPROVERS (user or group), never the requester   | pending, not expired      |
| cancel      | the requester                                        | queued/running export,    |
|             |                                                      | previewing/pending delete |
| (buttons)   | approve, reject and cancel clicks count only from    | always                    |
|             | the request's own channel                            |                           |
| retry       | the requester or an approver                         | failed; a deletion        |
|             |                                                      | resumes only while its    |
|             |                                                      | approvals are in force    |
|             |                                                      | (`may_resume`), else: new |
|             |                                                      | preview, new approvals    |
| resend      | the requester or an approver                         | a delivery is held        |
| see status  | the requester or an approver (`may_see_status`)      | always                    |
| extend      | BOT_APPROVERS (user or group), never the requester   | before the first due date |
|             | alone (`may_extend`)                                 | (`bot.deadline.extension_ |
|             |                                                      | problem`)                 |
| report      | BOT_APPROVERS (`may_read_report`)                    | as audit files            |
| dashboard   | everyone: their own open requests; BOT_APPROVERS     | the App Home tab, seen    |
| (App Home)  | also every request waiting for an approval and every | only by the person        |
|             | one due within 7 days or overdue (`may_see_queue`)   |                           |
| read audit  | approvers: everything; requesters: their own         | the file goes only into a |
|             | requests                                             | channel the bot is in     |
|             |                                                      | (`in_a_channel`,          |
|             |                                                      | `bot_is_in`)              |
| post        | files with personal data go only where the           | public channels only with |
| personal    | workspace's own members read them: not public, not   | BOT_ALLOW_PUBLIC_EXPORTS; |
| data        | shared with other organisations or workspaces; not   | shared ones only with     |
|             | where Slack did not say who reads it                 | BOT_ALLOW_SHARED_CHANNEL_ |
|             | (`may_post_personal_data`)                           | EXPORTS                   |

A deletion's recorded approvals are in force (`approvals_in_force`, asked by a retry) while
enough of them still count (`approval_counts`) and the last one is younger than
BOT_APPROVAL_TTL_HOURS.

Every refusal is a `Decision` that carries a message fit for the user; callers record it in the
audit log. This table says whether a person may act; which status change the action then makes
is the transitions table of `bot.lifecycle`, which the store enforces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.commands import Delete, Export
from bot.lifecycle import RequestKind, Status
from bot.wording import count


@dataclass(frozen=True)
class Rules:
    """The configured lists (from Config)."""

    approvers: frozenset[str] = frozenset()
    requesters: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    required_approvals: int = 1
    allow_public_exports: bool = False
    allow_shared_exports: bool = False

    @property
    def user_groups(self) -> frozenset[str]:
        """Return the configured ids that are Slack user groups (their ids start with S)."""
        return frozenset(g for g in self.approvers | self.requesters if g.startswith("S"))


@dataclass(frozen=True)
class Audience:
    """Who can read a conversation, beyond the people the request is for (conversations.info)."""

    public: bool = False  # any member of the workspace can join it and read its history
    external: bool = False  # Slack Connect: another organisation reads it, or is invited
    org_wide: bool = False  # shared between workspaces of an Enterprise Grid organisation


@dataclass(frozen=True)
class ChannelInfo:
    """What Slack says of a conversation (conversations.info), as the rules need it."""

    exists: bool
    is_member: bool = False  # the bot is in it (always so in its own DMs)
    is_private: bool = False
    is_im: bool = False  # a direct message
    is_mpim: bool = False  # a group DM
    external: bool = False  # Slack Connect (is_ext_shared / is_pending_ext_shared)
    org_wide: bool = False  # is_org_shared (Enterprise Grid)

    @property
    def audience(self) -> Audience:
        """Return who can read the channel, as the personal-data rule needs it."""
        return Audience(
            public=not (self.is_private or self.is_im or self.is_mpim),
            external=self.external,
            org_wide=self.org_wide,
        )


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
    kind: RequestKind
    status: Status
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
CANCELLABLE = {
    RequestKind.EXPORT: {Status.QUEUED, Status.RUNNING},
    RequestKind.DELETE: {Status.PREVIEWING, Status.PENDING},
}


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


def in_a_channel(channel: ChannelInfo, *, rerun: str) -> Decision:
    """Return whether a request or an audit file may go into `channel`: not a DM, not a group DM.

    Nobody else can follow those (no approvers, no audit trail), and the bot cannot post results
    into a group DM. `rerun` is the command to type again elsewhere ("/cv export ...").
    """
    if channel.is_im:
        conversation = "a direct message"
    elif channel.is_mpim:
        conversation = "a group DM"
    else:
        return ALLOW
    return Decision(
        False,
        "Requests and audit files belong in a channel, where approvers and the audit trail "
        f"can see them, not in {conversation}. Run `{rerun}` in your privacy team's channel.",
    )


def bot_is_in(channel: ChannelInfo, *, to_post: str, then: str) -> Decision:
    """Return whether the bot can post `to_post` ("the audit file") into `channel` (`then`: what
    the user does about it when not)."""
    if channel.exists and channel.is_member:
        return ALLOW
    return Decision(False, f"I am not in this channel, so I cannot post {to_post} here. {then}")


def may_submit_here(
    rules: Rules, channel: ChannelInfo, *, rerun: str, personal: str | None
) -> Decision:
    """Return whether a request (typed as `rerun`) may be made in `channel`: a channel the bot
    is in and, for a request whose files hold personal data (`personal` names them: "This
    export", "This deletion's receipt"), one they may go to."""
    if not (here := in_a_channel(channel, rerun=rerun)):
        return here
    member = bot_is_in(
        channel,
        to_post="the request and its results",
        then=f"Invite me first (`/invite @cv-dsr-bot`), then run `{rerun}` again. (In a group "
        "DM, which cannot take requests, run it in your privacy team's channel instead.)",
    )
    if not member:
        return member
    if personal is not None:
        return may_post_personal_data(rules, channel.audience, what=personal)
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
    if subject.kind != RequestKind.DELETE:
        return Decision(False, f"{subject.request_id} is not a deletion: nothing to approve.")
    overdue = subject.expires_at is not None and now >= subject.expires_at
    if subject.status == Status.PENDING and overdue:
        return Decision(False, f"{subject.request_id} has expired and can no longer be decided.")
    if subject.status != Status.PENDING:
        return Decision(
            False, f"{subject.request_id} is {subject.status} and can no longer be decided."
        )
    return ALLOW


def preview_digest(preview: Mapping[str, Any] | None) -> str:
    """Return the fingerprint of a deletion's frozen preview (its plan as approvers read it)."""
    text = json.dumps(preview, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def preview_shown(shown: str | None, preview: Mapping[str, Any] | None) -> bool:
    """Return whether the whole preview of a deletion's current plan is in front of its
    approvers.

    `shown`: the fingerprint (`preview_digest`) of the preview the bot posted with the Approve
    button since the plan was last frozen (the store's `shown_preview`), None when it has not
    posted one: the whole preview in the message, or its file confirmed by Slack first.
    """
    return preview is not None and shown == preview_digest(preview)


def whole_preview_posted(*, file_needed: bool, file_status: str | None) -> bool:
    """Return whether a deletion's whole preview is in front of its approvers, so that its
    Approve button may show (and, once it did, `preview_shown` holds): the preview fits its
    message (`file_needed` False), or its full-preview file's delivery (`file_status`) was
    confirmed by Slack ("sent")."""
    return not file_needed or file_status == "sent"


def may_approve(
    rules: Rules,
    actor: Actor,
    subject: Subject,
    now: datetime,
    *,
    channel: str | None = None,
    preview_shown: bool = True,
) -> Decision:
    """Return whether `actor` may approve the deletion `subject` now (clicked in `channel`).

    `preview_shown`: whether the whole preview is in front of the approvers (`preview_shown()`);
    nobody approves a deletion they could not read.
    """
    if not (where := _from_its_channel(subject, channel)):
        return where
    if actor.user_id == subject.requester:
        return Decision(False, "You cannot approve your own request: a second person must.")
    if not actor.listed_in(rules.approvers):
        return Decision(False, "Only approvers (BOT_APPROVERS) may approve deletions.")
    if actor.user_id in subject.approvals:
        return Decision(False, f"You have already approved {subject.request_id}.")
    if not (decidable := _decidable(subject, now)):
        return decidable
    if not preview_shown:
        return Decision(
            False,
            f"The preview of {subject.request_id}'s current plan has not been posted with its "
            "Approve button yet, so it cannot be approved. Approve from the request's message "
            "once it shows the preview.",
        )
    return ALLOW


def approvals_missing(rules: Rules, standing: int) -> int:
    """Return how many more approvals a deletion with `standing` counting ones needs (0 or less:
    it may start)."""
    return rules.required_approvals - standing


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
    `rules.required_approvals` of them still count (`approval_counts`); an actor in `approvers`
    whose approval is not recorded on `subject` (any more) is not counted. A retry of a deletion
    asks this; when it says no, the deletion needs a new preview and new approvals.
    """
    approvers = [a for a in approvers if a.user_id in subject.approvals]
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
        stand = "stands" if standing == 1 else "stand"
        required = count(rules.required_approvals, "required approval")
        tally = f"{standing:,} of the {required} {stand}."
        return Decision(False, " ".join([*stale, tally]))
    return ALLOW


def _requester_or_approver(rules: Rules, actor: Actor, subject: Subject) -> bool:
    return actor.user_id == subject.requester or actor.listed_in(rules.approvers)


def may_retry(rules: Rules, actor: Actor, subject: Subject) -> Decision:
    """Return whether `actor` may resume the failed request `subject`."""
    if not _requester_or_approver(rules, actor, subject):
        return Decision(False, f"Only the requester or an approver may retry {subject.request_id}.")
    if subject.status != Status.FAILED:
        return Decision(
            False, f"{subject.request_id} is {subject.status}: only failed requests can be retried."
        )
    return ALLOW


def may_resume(
    rules: Rules,
    subject: Subject,
    approvers: Sequence[Actor],
    now: datetime,
    ttl: timedelta,
    *,
    deleting: bool,
) -> Decision:
    """Return whether a retry may resume `subject` from its checkpoint (`deleting`: the job to
    resume deletes). An export or a preview always may; a deletion only on approvals in force
    (`approvals_in_force`), else it goes back to a new preview and new approvals."""
    if not deleting:
        return ALLOW
    return approvals_in_force(rules, subject, approvers, now, ttl)


def may_resend(rules: Rules, actor: Actor, subject: Subject) -> Decision:
    """Return whether `actor` may post the held deliveries of `subject` again (any status)."""
    if not _requester_or_approver(rules, actor, subject):
        return Decision(
            False, f"Only the requester or an approver may resend {subject.request_id}."
        )
    return ALLOW


def may_see_status(rules: Rules, actor: Actor, subject: Subject) -> Decision:
    """Return whether `actor` may see the state of `subject` (its command, ticket, approvers)."""
    if _requester_or_approver(rules, actor, subject):
        return ALLOW
    return Decision(
        False,
        f"{subject.request_id} is not yours; only its requester and approvers can see its status.",
    )


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


def audience_problem(rules: Rules, audience: Audience | None) -> str | None:
    """Return why files with personal data may not go to a conversation read by `audience`
    (None: Slack did not say): "unknown", "ext_shared", "org_shared" or "public"; None when
    they may.

    The one rule for packages, receipts, previews and audit files, when a request is made and
    again just before each is posted. A shared channel's history, files included, is readable
    by every organisation or workspace it is shared with. An audience Slack did not confirm
    counts as unsafe: nothing personal leaks on a blip.
    """
    if audience is None:
        return "unknown"
    if audience.external and not rules.allow_shared_exports:
        return "ext_shared"
    if audience.org_wide and not rules.allow_shared_exports:
        return "org_shared"
    if audience.public and not rules.allow_public_exports:
        return "public"
    return None


def may_post_personal_data(rules: Rules, audience: Audience | None, *, what: str) -> Decision:
    """Return whether `what` (e.g. "This export"), a file holding personal data, may be posted
    into a conversation read by `audience` (None: Slack did not say), by `audience_problem`."""
    problem = audience_problem(rules, audience)
    if problem is None:
        return ALLOW
    reasons = {
        "unknown": "Slack did not confirm that this channel is private.",
        "ext_shared": "this channel is shared with another organisation (Slack Connect), whose "
        "members could read it. Run it in a channel of your own organisation, or ask an admin "
        "to set BOT_ALLOW_SHARED_CHANNEL_EXPORTS=true.",
        "org_shared": "this channel is shared with other workspaces of your Enterprise Grid "
        "organisation. Run it in a channel of this workspace, or ask an admin to set "
        "BOT_ALLOW_SHARED_CHANNEL_EXPORTS=true.",
        "public": "this is a public channel. Run it in a private channel, or ask an admin to "
        "set BOT_ALLOW_PUBLIC_EXPORTS=true.",
    }
    return Decision(False, f"{what} holds personal data, and {reasons[problem]}")


# Why a delivery with personal data waits for a channel whose audience widened since its request
# was made (held as `withheld_error(audience_problem(...))`), and what cures it.
_WIDENED = {
    "channel_public": (
        "<#{channel}> has become a public channel, which anyone in the workspace can join and read",
        "make the channel private again (a workspace admin can), or ask an admin to set "
        "BOT_ALLOW_PUBLIC_EXPORTS=true",
    ),
    "channel_ext_shared": (
        "<#{channel}> is now shared with another organisation (Slack Connect), whose members "
        "could read it",
        "stop sharing the channel with the other organisation, or ask an admin to set "
        "BOT_ALLOW_SHARED_CHANNEL_EXPORTS=true",
    ),
    "channel_org_shared": (
        "<#{channel}> is now shared with other workspaces of your Enterprise Grid organisation",
        "stop sharing it with the other workspaces, or ask an admin to set "
        "BOT_ALLOW_SHARED_CHANNEL_EXPORTS=true",
    ),
}


def withheld_error(problem: str) -> str:
    """Return the error a delivery is held with when `audience_problem` answered `problem`."""
    return f"channel_{problem}"


def widened(error: str, channel: str) -> tuple[str, str] | None:
    """Return why a delivery held with `error` waits for `channel`, and what cures it, when the
    channel's audience widened since its request (None for any other error)."""
    texts = _WIDENED.get(error)
    if texts is None:
        return None
    why, cure = texts
    return why.format(channel=channel), cure


def personal_results(command: Export | Delete) -> str | None:
    """Return what of a request holds personal data, as a refusal names it ("This export",
    "This deletion's receipt"), or None when nothing it posts does.

    A deletion's preview and receipt list the person's image ids, tags and projects: evidence
    about a data subject, kept out of the channels a package is kept out of.
    """
    if isinstance(command, Delete):
        return "This deletion's receipt"
    return "This export" if command.personal else None


def may_extend(rules: Rules, actor: Actor, subject: Subject) -> Decision:
    """Return whether `actor` may extend the statutory deadline of `subject`.

    Art. 12(3) GDPR leaves the extension to the controller: an approver decides it, never the
    requester alone (an approver who is also the requester is still the requester).
    """
    if actor.user_id == subject.requester:
        return Decision(
            False,
            f"You cannot extend your own request {subject.request_id}: an approver must decide"
            " that the request is complex or one of many.",
        )
    if not actor.listed_in(rules.approvers):
        return Decision(False, "Only approvers (BOT_APPROVERS) may extend a request's deadline.")
    return ALLOW


def may_read_report(rules: Rules, actor: Actor) -> Decision:
    """Return whether `actor` may have the data-protection officer's report of all requests."""
    if actor.listed_in(rules.approvers):
        return ALLOW
    return Decision(
        False,
        "Only approvers (BOT_APPROVERS) may have the report of every request;"
        " `status` shows your own.",
    )


def may_see_queue(rules: Rules, actor: Actor) -> Decision:
    """Return whether `actor` sees, beside their own requests, every request waiting for an
    approval and every one due soon or overdue (the approvers' part of the App Home)."""
    if actor.listed_in(rules.approvers):
        return ALLOW
    return Decision(False, "Only approvers (BOT_APPROVERS) see every open request.")
