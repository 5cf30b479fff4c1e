"""The authorisation table, as a matrix: who may do what, on which request state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.policy import (
    Actor,
    Audience,
    Rules,
    Subject,
    approval_counts,
    approvals_in_force,
    may_approve,
    may_cancel,
    may_post_personal_data,
    may_read_audit,
    may_reject,
    may_request,
    may_retry,
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


def pending(**changes: object) -> Subject:
    values: dict[str, object] = {
        "request_id": "R-1001",
        "kind": "delete",
        "status": "pending",
        "requester": "U0REQ",
        "approvals": (),
        "expires_at": NOW + timedelta(hours=1),
    }
    values.update(changes)
    return Subject(**values)  # type: ignore[arg-type]


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
def test_policy_clicks_count_only_from_the_requests_channel(decide: object, actor: Actor) -> None:
    subject = pending(channel="C0DSR")
    decision = decide(actor, subject)  # type: ignore[operator]
    assert (decision.allowed, decision.reason) == (
        False,
        "R-1001 was requested in another channel; it can only be decided from its own message "
        "there.",
    )
    assert decide(actor, pending(channel="C0ELSEWHERE"))  # type: ignore[operator]


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
