"""The authorisation table, as a matrix: who may do what, on which request state."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.lifecycle import RequestKind, Status
from bot.policy import (
    Actor,
    Audience,
    ChannelInfo,
    Decision,
    Rules,
    Subject,
    approval_counts,
    approvals_in_force,
    approvals_missing,
    bot_is_in,
    in_a_channel,
    may_approve,
    may_cancel,
    may_extend,
    may_post_personal_data,
    may_read_audit,
    may_read_report,
    may_reject,
    may_request,
    may_resend,
    may_resume,
    may_retry,
    may_see_status,
    may_submit_here,
    preview_digest,
    preview_shown,
    whole_preview_posted,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
RULES = Rules(
    approvers=frozenset({"U0APPROVER", "S0PRIVACY"}),
    requesters=frozenset({"U0REQ", "U0APPROVER", "S0ANALYSTS"}),
    allowed_channels=frozenset({"C0DSR"}),
    required_approvals=2,
)
REQUESTER = Actor("U0REQ")
APPROVER = Actor("U0APPROVER")
GROUP_APPROVER = Actor("U0GROUPIE", frozenset({"S0PRIVACY"}))
GROUP_REQUESTER = Actor("U0ANALYST", frozenset({"S0ANALYSTS"}))
STRANGER = Actor("U0STRANGER")


PENDING = Subject(
    request_id="R-1001",
    kind=RequestKind.DELETE,
    status=Status.PENDING,
    requester="U0REQ",
    approvals=(),
    expires_at=NOW + timedelta(hours=1),
)


def pending(**changes: Any) -> Subject:
    return dataclasses.replace(PENDING, **changes)


@pytest.mark.parametrize(
    ("actor", "channel", "deletion", "allowed", "reason_part"),
    [
        (REQUESTER, "C0DSR", False, True, ""),
        (REQUESTER, "C0DSR", True, True, ""),
        (GROUP_REQUESTER, "C0DSR", True, True, ""),
        (STRANGER, "C0DSR", False, False, "BOT_REQUESTERS"),
        (REQUESTER, "C0OTHER", False, False, "BOT_ALLOWED_CHANNELS"),
        (GROUP_APPROVER, "C0DSR", False, False, "BOT_REQUESTERS"),
    ],
)
def test_policy_request(
    actor: Actor, channel: str, deletion: bool, allowed: bool, reason_part: str
) -> None:
    decision = may_request(RULES, actor, channel, deletion=deletion)
    assert decision.allowed is allowed
    assert reason_part in decision.reason


def test_policy_request_open_lists_allow_anyone_but_deletions_need_approvers() -> None:
    rules = Rules()
    assert may_request(rules, STRANGER, "C0ANY", deletion=False)
    refused = may_request(rules, STRANGER, "C0ANY", deletion=True)
    assert not refused
    assert "no approvers are configured (BOT_APPROVERS)" in refused.reason


@pytest.mark.parametrize(
    ("actor", "subject", "allowed", "reason"),
    [
        (APPROVER, pending(), True, ""),
        (GROUP_APPROVER, pending(), True, ""),
        (REQUESTER, pending(), False, "You cannot approve your own request: a second person must."),
        (STRANGER, pending(), False, "Only approvers (BOT_APPROVERS) may approve deletions."),
        (
            APPROVER,
            pending(requester="U0APPROVER"),
            False,
            "You cannot approve your own request: a second person must.",
        ),
        (
            APPROVER,
            pending(approvals=("U0APPROVER",)),
            False,
            "You have already approved R-1001.",
        ),
        (
            APPROVER,
            pending(expires_at=NOW),
            False,
            "R-1001 has expired and can no longer be decided.",
        ),
        *[
            (
                APPROVER,
                pending(status=status),
                False,
                f"R-1001 is {status} and can no longer be decided.",
            )
            for status in ("expired", "rejected", "cancelled", "done", "failed", "approved")
        ],
        (
            APPROVER,
            pending(kind="export", status="queued"),
            False,
            "R-1001 is not a deletion: nothing to approve.",
        ),
    ],
)
def test_policy_approve(actor: Actor, subject: Subject, allowed: bool, reason: str) -> None:
    decision = may_approve(RULES, actor, subject, NOW)
    assert (decision.allowed, decision.reason) == (allowed, reason)


@pytest.mark.parametrize(
    ("actor", "subject", "allowed", "reason"),
    [
        (APPROVER, pending(), True, ""),
        (GROUP_APPROVER, pending(approvals=("U0GROUPIE",)), True, ""),
        (REQUESTER, pending(), False, "You cannot reject your own request: use Cancel instead."),
        (STRANGER, pending(), False, "Only approvers (BOT_APPROVERS) may reject deletions."),
        (
            APPROVER,
            pending(requester="U0APPROVER"),
            False,
            "You cannot reject your own request: use Cancel instead.",
        ),
        (
            APPROVER,
            pending(status="done"),
            False,
            "R-1001 is done and can no longer be decided.",
        ),
    ],
)
def test_policy_reject(actor: Actor, subject: Subject, allowed: bool, reason: str) -> None:
    decision = may_reject(RULES, actor, subject, NOW)
    assert (decision.allowed, decision.reason) == (allowed, reason)


@pytest.mark.parametrize(
    ("actor", "subject", "allowed", "reason"),
    [
        (REQUESTER, pending(), True, ""),
        (REQUESTER, pending(status="previewing"), True, ""),
        (REQUESTER, pending(kind="export", status="queued"), True, ""),
        (REQUESTER, pending(kind="export", status="running"), True, ""),
        (APPROVER, pending(), False, "Only the requester may cancel R-1001."),
        (
            REQUESTER,
            pending(status="approved"),
            False,
            "R-1001 is approved: it cannot be cancelled.",
        ),
        (
            REQUESTER,
            pending(kind="export", status="done"),
            False,
            "R-1001 is done: it cannot be cancelled.",
        ),
    ],
)
def test_policy_cancel(actor: Actor, subject: Subject, allowed: bool, reason: str) -> None:
    decision = may_cancel(actor, subject)
    assert (decision.allowed, decision.reason) == (allowed, reason)


@pytest.mark.parametrize(
    ("actor", "subject", "allowed", "reason"),
    [
        (REQUESTER, pending(status="failed"), True, ""),
        (GROUP_APPROVER, pending(status="failed"), True, ""),
        (
            STRANGER,
            pending(status="failed"),
            False,
            "Only the requester or an approver may retry R-1001.",
        ),
        (
            REQUESTER,
            pending(status="done"),
            False,
            "R-1001 is done: only failed requests can be retried.",
        ),
    ],
)
def test_policy_retry(actor: Actor, subject: Subject, allowed: bool, reason: str) -> None:
    decision = may_retry(RULES, actor, subject)
    assert (decision.allowed, decision.reason) == (allowed, reason)


@pytest.mark.parametrize(
    ("actor", "own", "allowed"),
    [
        (APPROVER, None, True),
        (GROUP_APPROVER, False, True),
        (REQUESTER, True, True),
        (REQUESTER, False, False),
        (REQUESTER, None, False),
        (STRANGER, None, False),
    ],
)
def test_policy_read_audit(actor: Actor, own: bool | None, allowed: bool) -> None:
    assert may_read_audit(RULES, actor, own_request=own).allowed is allowed


@pytest.mark.parametrize(
    ("decide", "actor"),
    [
        (lambda a, s: may_approve(RULES, a, s, NOW, channel="C0ELSEWHERE"), APPROVER),
        (lambda a, s: may_reject(RULES, a, s, NOW, channel="C0ELSEWHERE"), APPROVER),
        (lambda a, s: may_cancel(a, s, channel="C0ELSEWHERE"), REQUESTER),
    ],
)
def test_policy_clicks_count_only_from_the_requests_channel(
    decide: Callable[[Actor, Subject], Decision], actor: Actor
) -> None:
    subject = pending(channel="C0DSR")
    decision = decide(actor, subject)
    assert (decision.allowed, decision.reason) == (
        False,
        "R-1001 was requested in another channel; it can only be decided from its own message "
        "there.",
    )
    assert decide(actor, pending(channel="C0ELSEWHERE"))


# --- recorded approvals: do they still stand, are they still in force --------------------------

TTL = timedelta(hours=24)


@pytest.mark.parametrize(
    ("approver", "rules", "stands", "reason_part"),
    [
        (APPROVER, RULES, True, ""),
        (GROUP_APPROVER, RULES, True, ""),
        (APPROVER, Rules(approvers=frozenset({"S0PRIVACY"})), False, "no longer an approver"),
        (Actor("U0GROUPIE"), RULES, False, "no longer an approver"),  # left the group
        (REQUESTER, Rules(approvers=frozenset({"U0REQ"})), False, "requested R-1001"),
    ],
)
def test_policy_recorded_approval_counts_only_while_the_approver_is_authorised(
    approver: Actor, rules: Rules, stands: bool, reason_part: str
) -> None:
    decision = approval_counts(rules, approver, pending(status="failed"))
    assert bool(decision) is stands
    assert reason_part in decision.reason


@pytest.mark.parametrize(
    ("age", "approvers", "in_force", "reason_part"),
    [
        (timedelta(hours=1), (APPROVER, GROUP_APPROVER), True, ""),
        (timedelta(hours=23, minutes=59), (APPROVER, GROUP_APPROVER), True, ""),
        (TTL, (APPROVER, GROUP_APPROVER), False, "older than 24 h"),
        (timedelta(days=3), (APPROVER, GROUP_APPROVER), False, "BOT_APPROVAL_TTL_HOURS"),
        (timedelta(hours=1), (APPROVER, Actor("U0GROUPIE")), False, "1 of the 2 required"),
        (timedelta(hours=1), (APPROVER,), False, "1 of the 2 required"),
    ],
)
def test_policy_approvals_in_force_for_a_retry(
    age: timedelta, approvers: tuple[Actor, ...], in_force: bool, reason_part: str
) -> None:
    subject = pending(
        status="failed",
        approvals=tuple(a.user_id for a in approvers),
        approved_at=NOW - age,
    )
    decision = approvals_in_force(RULES, subject, approvers, NOW, TTL)
    assert bool(decision) is in_force
    assert reason_part in decision.reason


def test_policy_approvals_without_a_recorded_time_are_not_in_force() -> None:
    subject = pending(status="failed", approvals=("U0APPROVER",))
    assert not approvals_in_force(RULES, subject, (APPROVER,), NOW, TTL)


@pytest.mark.parametrize(
    ("audience", "rules", "allowed", "names"),
    [
        (Audience(), Rules(), True, ""),
        (Audience(public=True), Rules(), False, "BOT_ALLOW_PUBLIC_EXPORTS"),
        (Audience(public=True), Rules(allow_public_exports=True), True, ""),
        (Audience(external=True), Rules(), False, "Slack Connect"),
        (Audience(external=True), Rules(allow_public_exports=True), False, "SHARED_CHANNEL"),
        (Audience(external=True), Rules(allow_shared_exports=True), True, ""),
        (Audience(org_wide=True), Rules(), False, "Enterprise Grid"),
        (Audience(public=True, external=True), Rules(allow_shared_exports=True), False, "public"),
    ],
)
def test_policy_personal_data_goes_only_where_the_workspace_alone_reads_it(
    audience: Audience, rules: Rules, allowed: bool, names: str
) -> None:
    decision = may_post_personal_data(rules, audience, what="This export")
    assert bool(decision) is allowed
    assert names in decision.reason


def test_policy_an_audience_slack_did_not_confirm_counts_as_unsafe() -> None:
    decision = may_post_personal_data(
        Rules(allow_public_exports=True, allow_shared_exports=True), None, what="The audit trail"
    )
    assert (decision.allowed, decision.reason) == (
        False,
        "The audit trail holds personal data, and Slack did not confirm that this channel is "
        "private.",
    )


# --- where: a channel, the bot in it -----------------------------------------------------------

PRIVATE = ChannelInfo(exists=True, is_member=True, is_private=True)
PUBLIC = ChannelInfo(exists=True, is_member=True)
DM = ChannelInfo(exists=True, is_member=True, is_im=True)
GROUP_DM = ChannelInfo(exists=True, is_member=True, is_mpim=True)
OUTSIDE = ChannelInfo(exists=True, is_member=False, is_private=True)
GONE = ChannelInfo(exists=False)
SHARED = ChannelInfo(exists=True, is_member=True, is_private=True, external=True)
GRID = ChannelInfo(exists=True, is_member=True, is_private=True, org_wide=True)


@pytest.mark.parametrize(
    ("channel", "audience"),
    [
        (PRIVATE, Audience()),
        (PUBLIC, Audience(public=True)),
        (DM, Audience()),
        (GROUP_DM, Audience()),
        (SHARED, Audience(external=True)),
        (GRID, Audience(org_wide=True)),
        (ChannelInfo(exists=True, is_member=True, external=True), Audience(True, True)),
    ],
)
def test_policy_channel_audience(channel: ChannelInfo, audience: Audience) -> None:
    assert channel.audience == audience


NOT_IN_A_CHANNEL = (
    "Requests and audit files belong in a channel, where approvers and the audit trail can see "
    "them, not in {}. Run `/cv audit` in your privacy team's channel."
)


@pytest.mark.parametrize(
    ("channel", "reason"),
    [
        (PRIVATE, ""),
        (PUBLIC, ""),
        (OUTSIDE, ""),  # the bot's membership is another rule (bot_is_in)
        (DM, NOT_IN_A_CHANNEL.format("a direct message")),
        (GROUP_DM, NOT_IN_A_CHANNEL.format("a group DM")),
    ],
)
def test_policy_requests_and_audit_files_belong_in_a_channel(
    channel: ChannelInfo, reason: str
) -> None:
    decision = in_a_channel(channel, rerun="/cv audit")
    assert (decision.allowed, decision.reason) == (not reason, reason)


@pytest.mark.parametrize(
    ("channel", "allowed"),
    [(PRIVATE, True), (PUBLIC, True), (DM, True), (OUTSIDE, False), (GONE, False)],
)
def test_policy_the_bot_posts_only_where_it_is_a_member(
    channel: ChannelInfo, allowed: bool
) -> None:
    decision = bot_is_in(channel, to_post="the audit file", then="Invite me first.")
    assert (decision.allowed, decision.reason) == (
        allowed,
        ""
        if allowed
        else "I am not in this channel, so I cannot post the audit file here. Invite me first.",
    )


INVITE = (
    "I am not in this channel, so I cannot post the request and its results here. Invite me "
    "first (`/invite @cv-dsr-bot`), then run `/cv export images p` again. (In a group DM, which "
    "cannot take requests, run it in your privacy team's channel instead.)"
)


@pytest.mark.parametrize(
    ("rules", "channel", "personal", "reason_part"),
    [
        (Rules(), PRIVATE, True, ""),
        (Rules(), PUBLIC, False, ""),  # nothing personal: a public channel is fine
        (Rules(), PUBLIC, True, "This export holds personal data, and this is a public channel"),
        (Rules(allow_public_exports=True), PUBLIC, True, ""),
        (Rules(), SHARED, True, "Slack Connect"),
        (Rules(), GRID, True, "Enterprise Grid"),
        (Rules(), SHARED, False, ""),
        # The first rule that refuses is the one the user hears.
        (Rules(allow_public_exports=True), DM, True, "not in a direct message"),
        (Rules(), GROUP_DM, False, "not in a group DM"),
        (Rules(), OUTSIDE, True, INVITE),
        (Rules(), GONE, False, INVITE),
    ],
)
def test_policy_submit_here(
    rules: Rules, channel: ChannelInfo, personal: bool, reason_part: str
) -> None:
    decision = may_submit_here(
        rules, channel, rerun="/cv export images p", personal="This export" if personal else None
    )
    assert decision.allowed is (not reason_part)
    assert reason_part in decision.reason
    if not personal and reason_part:
        assert "personal data" not in decision.reason


# --- seeing a request, resending it -------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "allowed"),
    [(REQUESTER, True), (APPROVER, True), (GROUP_APPROVER, True), (GROUP_REQUESTER, False)],
)
def test_policy_see_status_and_resend(actor: Actor, allowed: bool) -> None:
    status = may_see_status(RULES, actor, pending())
    assert (status.allowed, status.reason) == (
        allowed,
        ""
        if allowed
        else "R-1001 is not yours; only its requester and approvers can see its status.",
    )
    assert may_resend(RULES, actor, pending()).allowed is allowed


# --- approving what was seen, and when a deletion starts ----------------------------------------


PLAN = {"images": 3, "iterations": ["it-1"]}
NEW_PLAN = {"images": 2, "iterations": ["it-1"]}


@pytest.mark.parametrize(
    ("shown", "preview", "result"),
    [
        (preview_digest(PLAN), PLAN, True),
        (None, PLAN, False),  # pending, its preview not posted with the button yet
        (preview_digest(PLAN), NEW_PLAN, False),  # a new plan; the old preview was shown
        (preview_digest(PLAN), None, False),
    ],
)
def test_policy_preview_shown(
    shown: str | None, preview: dict[str, object] | None, result: bool
) -> None:
    assert preview_shown(shown, preview) is result


def test_policy_no_approval_before_the_whole_preview_is_shown() -> None:
    decision = may_approve(RULES, APPROVER, pending(), NOW, preview_shown=False)
    assert (decision.allowed, decision.reason) == (
        False,
        "The preview of R-1001's current plan has not been posted with its Approve button yet, "
        "so it cannot be approved. Approve from the request's message once it shows the "
        "preview.",
    )
    # Any other refusal comes first: it says what the person can do about it.
    assert (
        "own request" in may_approve(RULES, REQUESTER, pending(), NOW, preview_shown=False).reason
    )


@pytest.mark.parametrize(("standing", "missing"), [(0, 2), (1, 1), (2, 0), (3, -1)])
def test_policy_approvals_missing(standing: int, missing: int) -> None:
    assert approvals_missing(RULES, standing) == missing


def test_policy_user_groups_are_the_configured_ids_starting_with_s() -> None:
    assert RULES.user_groups == {"S0PRIVACY", "S0ANALYSTS"}
    assert Rules(approvers=frozenset({"U0A"})).user_groups == frozenset()


# --- resuming ------------------------------------------------------------------------------------


def test_policy_an_export_or_a_preview_resumes_whatever_its_approvals() -> None:
    stale = pending(status="failed", approvals=("U0APPROVER",), approved_at=NOW - 10 * TTL)
    assert may_resume(RULES, stale, [APPROVER], NOW, TTL, deleting=False)
    assert not may_resume(RULES, stale, [APPROVER], NOW, TTL, deleting=True)


def test_policy_approvals_in_force_counts_only_recorded_approvers() -> None:
    subject = pending(status="failed", approvals=("U0APPROVER",), approved_at=NOW)
    decision = approvals_in_force(RULES, subject, [APPROVER, GROUP_APPROVER], NOW, TTL)
    assert (decision.allowed, decision.reason.strip()) == (
        False,
        "1 of the 2 required approvals stands.",
    )


# --- the statutory clock: extending a deadline, the report ---------------------------------------


@pytest.mark.parametrize(
    ("actor", "subject", "reason"),
    [
        (APPROVER, pending(), ""),
        (GROUP_APPROVER, pending(), ""),
        (
            APPROVER,  # an approver who made the request is its requester here
            pending(requester="U0APPROVER"),
            "You cannot extend your own request R-1001: an approver must decide that the request"
            " is complex or one of many.",
        ),
        (
            REQUESTER,
            pending(),
            "You cannot extend your own request R-1001: an approver must decide that the request"
            " is complex or one of many.",
        ),
        (STRANGER, pending(), "Only approvers (BOT_APPROVERS) may extend a request's deadline."),
    ],
)
def test_policy_extend(actor: Actor, subject: Subject, reason: str) -> None:
    decision = may_extend(RULES, actor, subject)
    assert (decision.allowed, decision.reason) == (not reason, reason)


@pytest.mark.parametrize(
    ("actor", "allowed"),
    [(APPROVER, True), (GROUP_APPROVER, True), (REQUESTER, False), (GROUP_REQUESTER, False)],
)
def test_policy_read_report(actor: Actor, allowed: bool) -> None:
    assert may_read_report(RULES, actor).allowed is allowed


@pytest.mark.parametrize(
    ("file_needed", "file_status", "posted"),
    [
        (False, None, True),  # the whole preview is in the message
        (True, None, False),  # its file is not even queued yet
        (True, "pending", False),
        (True, "held", False),  # Slack refused it: nobody can read the whole preview
        (True, "failed", False),
        (True, "sent", True),  # Slack confirmed the file
    ],
)
def test_policy_approve_shows_only_once_the_whole_preview_is_posted(
    file_needed: bool, file_status: str | None, posted: bool
) -> None:
    assert whole_preview_posted(file_needed=file_needed, file_status=file_status) is posted
