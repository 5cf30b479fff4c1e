"""Service on its own: a real SQLite file, a fake clock, fakes for Slack's lookups and the jobs.

The rules themselves are tables in test_policy.py. These check that Service asks them with the
right facts (and asks Slack only what it needs), records every refusal with its reason, stores
nothing when it refuses, and wakes the workers only when it queued work. Jobs run through the
real Runner, synchronously, with handlers that return scripted outcomes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import pytest

from bot.clock import FakeClock, iso
from bot.db import Database
from bot.errors import BotError, SlackLookupError
from bot.lifecycle import JobKind, Status
from bot.policy import ChannelInfo, Rules, preview_digest
from bot.resources import Resources
from bot.runner import JobContext, JobHandler, Outcome, Runner, Settings
from bot.service import FRESH_FOR_APPROVALS, MANUAL_STEPS, Service
from bot.store import Store
from bot.training import TrainingClient

REQUESTER = "U0REQ"
APPROVER = "U0APPROVER"
GROUPIE = "U0GROUPIE"  # an approver through the user group S0PRIVACY
STRANGER = "U0STRANGER"
PRIVATE, PUBLIC, SHARED, OUTSIDE, GROUP_DM, DM = (
    "C0PRIVATE",
    "C0PUBLIC",
    "C0SHARED",
    "C0OUTSIDE",
    "G0GROUPDM",
    "D0DM",
)
CHANNELS = {
    PRIVATE: ChannelInfo(exists=True, is_member=True, is_private=True),
    PUBLIC: ChannelInfo(exists=True, is_member=True),
    SHARED: ChannelInfo(exists=True, is_member=True, is_private=True, external=True),
    OUTSIDE: ChannelInfo(exists=True, is_member=False, is_private=True),
    GROUP_DM: ChannelInfo(exists=True, is_member=True, is_mpim=True),
}
PROJECT = "0f8fad5b-d9cb-469f-a165-70867728950e"
IMAGE = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
DELETE = f"delete images {PROJECT} --ids {IMAGE}"
RULES = Rules(approvers=frozenset({APPROVER, "S0PRIVACY"}), required_approvals=2)
TTL = timedelta(hours=24)
SLACK_SLOW = "Slack did not answer in time, so nothing was recorded. Try again in a moment."


@dataclass
class FakeDirectory:
    """Slack's lookups, answered from dicts; the kinds in `down` ("groups", "channel") miss
    their time budget."""

    groups: dict[str, set[str]] = field(default_factory=lambda: {"S0PRIVACY": {GROUPIE}})
    channels: dict[str, ChannelInfo] = field(default_factory=lambda: dict(CHANNELS))
    down: set[str] = field(default_factory=set)
    asked: list[tuple[str, str]] = field(default_factory=list)
    max_ages: list[float | None] = field(default_factory=list)

    def groups_of(
        self, user_id: str, groups: frozenset[str], *, max_age: float | None = None
    ) -> frozenset[str]:
        self.asked.append(("groups", user_id))
        self.max_ages.append(max_age)
        if "groups" in self.down:
            raise SlackLookupError(SLACK_SLOW)
        return frozenset(g for g in groups if user_id in self.groups.get(g, set()))

    def channel(self, channel_id: str, *, max_age: float | None = None) -> ChannelInfo:
        self.asked.append(("channel", channel_id))
        if "channel" in self.down:
            raise SlackLookupError(SLACK_SLOW)
        return self.channels.get(channel_id, ChannelInfo(exists=False))


@dataclass
class FakeJobs:
    """Job handlers with scripted outcomes: a preview makes the deletion pending; `failing`
    kinds fail the way a job does when the Training API gives up."""

    settings: Settings
    failing: set[str] = field(default_factory=set)
    ran: list[str] = field(default_factory=list)

    def handler(self, kind: str) -> JobHandler:
        def run(ctx: JobContext) -> Outcome:
            self.ran.append(kind)
            if kind in self.failing:
                raise BotError("The Training API answered 503 three times.")
            if kind == "preview":
                expires = ctx.clock.now() + self.settings.approval_ttl
                return Outcome(
                    request_status=Status.PENDING,
                    request_fields={
                        "preview": {"summary": "1 image"},
                        "expires_at": iso(expires),
                    },
                    audit_action="preview.computed",
                    mention_requester=False,
                )
            return Outcome(request_status=Status.DONE, await_uploads=False)

        return run


@dataclass
class Bot:
    service: Service
    store: Store
    directory: FakeDirectory
    clock: FakeClock
    runner: Runner
    jobs: FakeJobs
    work_dir: Path
    wakes: list[None]

    def command(self, user: str, channel: str, text: str) -> str:
        return self.service.handle_command(user, channel, text).text

    def run_jobs(self) -> None:
        while (job := self.store.claim_job("test", timedelta(minutes=5))) is not None:
            self.runner.run_one(job)

    def status(self, number: int = 1001) -> str:
        return self.store.get(number).status

    def show_preview(self, number: int = 1001) -> None:
        """Record what the outbox records when it posts the Approve button with the preview."""
        preview = preview_digest(self.store.get(number).preview)
        self.store.record("bot", "approval.posted", request=number, details={"preview": preview})

    def actions(self, request: str | None = None) -> list[str]:
        return [e.action for e in self.store.audit_events(request_id=request)]

    def refusals(self) -> list[tuple[str, str]]:
        return [
            (e.action, e.details["reason"])
            for e in self.store.audit_events()
            if e.outcome == "refused"
        ]

    def posts(self) -> list[str]:
        return [str(i.payload.get("text")) for i in self.store.pending_outbox(100)]


def make_bot(tmp_path: Path, rules: Rules = RULES) -> Iterator[Bot]:
    db = Database(tmp_path / "bot.db")
    clock = FakeClock()
    store = Store(db, clock, secrets=("unused-key",))
    directory = FakeDirectory()
    work_dir = tmp_path / "work"
    settings = Settings(approval_ttl=TTL)
    jobs = FakeJobs(settings)
    client = TrainingClient("http://127.0.0.1:9/", "unused-key")  # the fake jobs never call it
    runner = Runner(
        store,
        client,
        {kind: jobs.handler(kind) for kind in ("export", "preview", "delete")},
        clock=clock,
        work_dir=work_dir,
        settings=settings,
    )
    wakes: list[None] = []
    service = Service(
        store,
        rules,
        directory,
        clock,
        approval_ttl=TTL,
        work_dir=work_dir,
        wake=lambda: wakes.append(None),
        resources=Resources({"default": client}),
    )
    try:
        yield Bot(service, store, directory, clock, runner, jobs, work_dir, wakes)
    finally:
        client.close()
        db.close()


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[Bot]:
    yield from make_bot(tmp_path)


def pending_deletion(bot: Bot) -> None:
    """R-1001: a deletion by REQUESTER in PRIVATE, previewed and waiting for approval."""
    assert bot.command(REQUESTER, PRIVATE, DELETE).startswith("R-1001 recorded")
    bot.run_jobs()
    assert bot.status() == "pending"
    bot.show_preview()


# --- submitting ---------------------------------------------------------------------------------

NOT_IN_A_CHANNEL = (
    "Requests and audit files belong in a channel, where approvers and the audit trail can see "
    "them, not in {where}. Run `/cv {text}` in your privacy team's channel."
)


@pytest.mark.parametrize(
    ("rules", "user", "channel", "text", "reply", "asked"),
    [
        (
            Rules(approvers=frozenset({APPROVER}), requesters=frozenset({APPROVER})),
            STRANGER,
            PRIVATE,
            "export projects",
            "You are not on the list of people who may make requests (BOT_REQUESTERS). "
            "Ask an admin to add you or your user group.",
            [],
        ),
        (
            Rules(approvers=frozenset({APPROVER}), allowed_channels=frozenset({PRIVATE})),
            REQUESTER,
            PUBLIC,
            "export projects",
            "This channel is not one where the bot takes requests (BOT_ALLOWED_CHANNELS). "
            "Ask in an allowed channel, or ask an admin to add this one.",
            [],
        ),
        (
            Rules(),
            REQUESTER,
            PRIVATE,
            DELETE,
            "Deletions are disabled: no approvers are configured (BOT_APPROVERS). "
            "Ask an admin to set at least one approver.",
            [],
        ),
        (
            RULES,
            REQUESTER,
            DM,
            "export projects",
            NOT_IN_A_CHANNEL.format(where="a direct message", text="export projects"),
            [("groups", REQUESTER)],  # a DM's id says what it is: no channel lookup
        ),
        (
            RULES,
            REQUESTER,
            GROUP_DM,
            DELETE,
            NOT_IN_A_CHANNEL.format(where="a group DM", text=DELETE),
            [("groups", REQUESTER), ("channel", GROUP_DM)],
        ),
        (
            RULES,
            REQUESTER,
            OUTSIDE,
            "  export projects ",
            "I am not in this channel, so I cannot post the request and its results here. "
            "Invite me first (`/invite @cv-dsr-bot`), then run `/cv export projects` again. (In a "
            "group DM, which cannot take requests, run it in your privacy team's channel "
            "instead.)",
            [("groups", REQUESTER), ("channel", OUTSIDE)],
        ),
        (
            RULES,
            REQUESTER,
            "C0GONE",
            "export projects",
            "I am not in this channel, so I cannot post the request and its results here. "
            "Invite me first (`/invite @cv-dsr-bot`), then run `/cv export projects` again. (In a "
            "group DM, which cannot take requests, run it in your privacy team's channel "
            "instead.)",
            [("groups", REQUESTER), ("channel", "C0GONE")],
        ),
        (
            RULES,
            REQUESTER,
            PUBLIC,
            f"export project {PROJECT}",
            "This export holds personal data, and this is a public channel. Run it in a private "
            "channel, or ask an admin to set BOT_ALLOW_PUBLIC_EXPORTS=true.",
            [("groups", REQUESTER), ("channel", PUBLIC)],
        ),
        (
            RULES,
            REQUESTER,
            SHARED,
            f"export project {PROJECT}",
            "This export holds personal data, and this channel is shared with another "
            "organisation (Slack Connect), whose members could read it. Run it in a channel of "
            "your own organisation, or ask an admin to set BOT_ALLOW_SHARED_CHANNEL_EXPORTS=true.",
            [("groups", REQUESTER), ("channel", SHARED)],
        ),
    ],
)
def test_service_submit_refusal_is_told_audited_and_stores_nothing(
    tmp_path: Path,
    rules: Rules,
    user: str,
    channel: str,
    text: str,
    reply: str,
    asked: list[tuple[str, str]],
) -> None:
    for bot in make_bot(tmp_path, rules):
        assert bot.command(user, channel, text) == reply

        assert bot.refusals() == [("command.refused", reply)]
        assert not bot.store.has_requests(user)
        assert bot.directory.asked == asked
        assert bot.wakes == []


def test_service_submit_when_slack_does_not_answer_records_nothing(bot: Bot) -> None:
    bot.directory.down = {"groups", "channel"}

    assert bot.command(REQUESTER, PRIVATE, "export projects") == SLACK_SLOW

    assert bot.actions() == []
    assert not bot.store.has_requests(REQUESTER)
    assert bot.wakes == []


@pytest.mark.parametrize(
    ("channel", "text", "reply", "kind", "status", "job", "actions"),
    [
        (
            PRIVATE,
            f"export project {PROJECT}",
            f"R-1001 queued: export project {PROJECT[:8]}…. Progress and files will appear in the "
            "request's thread.",
            "export",
            "queued",
            "export",
            ["command.received", "request.queued"],
        ),
        (
            PUBLIC,  # the list of projects holds no personal data
            "export projects",
            "R-1001 queued: export the list of projects. Progress and files will appear in the "
            "request's thread.",
            "export",
            "queued",
            "export",
            ["command.received", "request.queued"],
        ),
        (
            PRIVATE,
            DELETE,
            "R-1001 recorded: computing what the deletion will remove. The preview and the "
            "approval buttons will appear in the channel; a second, authorised person must "
            "approve.",
            "delete",
            "previewing",
            "preview",
            ["command.received", "request.queued"],
        ),
        (
            PRIVATE,
            "delete account",
            f"R-1001 recorded. {MANUAL_STEPS['account']}",
            "manual",
            "answered",
            None,
            ["command.received", "request.answered"],
        ),
        (
            PRIVATE,
            f"delete exports {PROJECT} {IMAGE}",
            f"R-1001 recorded. {MANUAL_STEPS['exports']}",
            "manual",
            "answered",
            None,
            ["command.received", "request.answered"],
        ),
    ],
)
def test_service_submit_stores_the_request_and_its_first_job_and_wakes_the_workers(
    bot: Bot,
    channel: str,
    text: str,
    reply: str,
    kind: str,
    status: str,
    job: str | None,
    actions: list[str],
) -> None:
    clock = (
        "received 2026-11-27 · completed 2026-11-27, the day of receipt, within the deadline"
        if status == "answered"
        else "received 2026-11-27 · due 2026-12-28 (in 31 days)"  # 27 Dec is a Sunday
    )
    assert bot.command(REQUESTER, channel, text) == f"{reply}\nDeadline: {clock}"

    record = bot.store.get(1001)
    assert (record.kind, record.status, record.requester, record.channel, record.text) == (
        kind,
        status,
        REQUESTER,
        channel,
        text,
    )
    queued = [k for k in JobKind if bot.store.job_for(1001, k) is not None]
    assert queued == ([job] if job else [])
    assert bot.actions("R-1001") == actions
    assert bot.refusals() == []
    assert bot.wakes == [None]


# --- status ------------------------------------------------------------------------------------

CLOCK = "received 2026-11-27 · due 2026-12-28 (in 31 days)"  # 27 Dec 2026 is a Sunday


@pytest.mark.parametrize(
    ("viewer", "reply"),
    [
        (REQUESTER, f"• R-1001 — queued, 0s old, {CLOCK}: `export projects`"),
        (APPROVER, f"• R-1001 — queued, 0s old, {CLOCK}: `export projects`"),
        (GROUPIE, f"• R-1001 — queued, 0s old, {CLOCK}: `export projects`"),
        (STRANGER, "R-1001 is not yours; only its requester and approvers can see its status."),
    ],
)
def test_service_status_of_one_request_only_for_its_requester_and_approvers(
    bot: Bot, viewer: str, reply: str
) -> None:
    bot.command(REQUESTER, PRIVATE, "export projects")

    assert bot.command(viewer, PRIVATE, "status R-1001") == reply

    refused = viewer == STRANGER
    assert bot.refusals() == ([("status.refused", reply)] if refused else [])


@pytest.mark.parametrize(
    ("typed", "reply"),
    [
        ("R-99", "There is no request R-99."),
        ("R-x", "'R-x' is not a request id (they look like R-1042)."),  # from a button
        (
            "R-1001" + "9" * 60,
            f"{'R-1001' + '9' * 34!r} is not a request id (they look like R-1042).",
        ),
    ],
)
def test_service_an_unknown_request_id_is_a_refusal_naming_it(
    bot: Bot, typed: str, reply: str
) -> None:
    assert bot.service.cancel(REQUESTER, typed, PRIVATE).text == reply

    [event] = list(bot.store.audit_events())
    assert (event.action, event.targets, event.details) == (
        "cancel.refused",
        (typed[:40],),
        {"reason": reply},
    )


def test_service_status_lists_the_callers_open_requests_by_age(bot: Bot) -> None:
    assert bot.command(REQUESTER, PRIVATE, "status") == (
        "You have no open requests. `/cv help` shows what I can do."
    )
    bot.command(REQUESTER, PRIVATE, "export projects")
    bot.clock.advance(minutes=5)
    bot.command(REQUESTER, PRIVATE, DELETE)
    bot.clock.advance(hours=3)

    assert bot.command(REQUESTER, PRIVATE, "status") == (
        "Your open requests (2):\n"
        f"• R-1002 — previewing, 3h old, due 2026-12-28 (in 31 days): `{DELETE[:69]}…`\n"
        "• R-1001 — queued, 3h old, due 2026-12-28 (in 31 days): `export projects`"
    )


@pytest.mark.parametrize(
    ("channel", "reply"),
    [
        (
            OUTSIDE,
            "I am not in this channel, so I cannot post the file here. Run `/cv status --all` in "
            "a private channel I am in, or `/cv status` for the newest 20.",
        ),
        (
            PUBLIC,
            "The list of your requests (tickets, reasons, commands) holds personal data, and this "
            "is a public channel. Run it in a private channel, or ask an admin to set "
            "BOT_ALLOW_PUBLIC_EXPORTS=true. `/cv status` shows the newest 20 (only you see it).",
        ),
    ],
)
def test_service_status_file_goes_only_where_personal_data_may(
    bot: Bot, channel: str, reply: str
) -> None:
    bot.command(REQUESTER, PRIVATE, "export projects")
    before = bot.actions()

    assert bot.command(REQUESTER, channel, "status --all") == reply

    assert bot.actions() == before  # told, not audited: a status is no request
    assert not (bot.work_dir / "status").exists()


def test_service_status_file_is_written_and_queued(bot: Bot) -> None:
    bot.command(REQUESTER, PRIVATE, "export projects --reason 'ticket 7'")

    reply = bot.command(REQUESTER, PRIVATE, "status --all")

    [path] = (bot.work_dir / "status").iterdir()
    assert reply == f"Posting your 1 open request here as `{path.name}`."
    assert path.read_text(encoding="utf-8") == (
        f"Open requests of {REQUESTER} at 2026-11-27 09:00 UTC: 1\n"
        "\n"
        f"• R-1001 — queued, 0s old, {CLOCK}: `export projects --reason 'ticket 7'`\n"
        "Reason: ticket 7\n"
    )
    assert bot.actions()[-1] == "status.exported"


# --- approvals ---------------------------------------------------------------------------------


def test_service_approval_needs_two_other_people_then_starts_the_deletion(bot: Bot) -> None:
    pending_deletion(bot)
    bot.wakes.clear()

    assert bot.service.approve(REQUESTER, "R-1001", PRIVATE).text == (
        "You cannot approve your own request: a second person must."
    )
    assert bot.service.approve(STRANGER, "R-1001", PRIVATE).text == (
        "Only approvers (BOT_APPROVERS) may approve deletions."
    )
    assert bot.service.approve(APPROVER, "R-1001", "C0ELSEWHERE").text == (
        "R-1001 was requested in another channel; it can only be decided from its own message "
        "there."
    )
    assert bot.service.approve(APPROVER, "R-1001", PRIVATE).text == (
        "You approved R-1001. 1 more approval needed."
    )
    assert bot.status() == "pending"
    assert bot.wakes == []
    assert (
        bot.service.approve(APPROVER, "R-1001", PRIVATE).text == "You have already approved R-1001."
    )

    assert bot.service.approve(GROUPIE, "R-1001", PRIVATE).text == (
        "You approved R-1001. The deletion starts now; the receipt will be posted in its thread."
    )

    assert bot.status() == "approved"
    assert bot.store.job_for(1001, JobKind.DELETE) is not None
    assert bot.wakes == [None]
    assert [a for a in bot.actions("R-1001") if a.startswith(("approval", "request.a"))] == [
        "approval.posted",
        "approval.refused",
        "approval.refused",
        "approval.refused",
        "approval.granted",
        "approval.refused",
        "approval.granted",
        "request.approved",
    ]


NOT_SHOWN = (
    "The preview of R-1001's current plan has not been posted with its Approve button yet, so "
    "it cannot be approved. Approve from the request's message once it shows the preview."
)


def test_service_no_approval_counts_before_the_preview_is_posted_with_its_button(
    bot: Bot,
) -> None:
    assert bot.command(REQUESTER, PRIVATE, DELETE).startswith("R-1001 recorded")
    bot.run_jobs()
    assert bot.status() == "pending"  # the announcement with the preview is still queued

    assert bot.service.approve(APPROVER, "R-1001", PRIVATE).text == NOT_SHOWN

    assert bot.store.get(1001).approvals == ()
    bot.show_preview()
    assert bot.service.approve(APPROVER, "R-1001", PRIVATE).text == (
        "You approved R-1001. 1 more approval needed."
    )


def test_service_after_a_new_preview_the_old_one_shown_does_not_let_an_approval_count(
    bot: Bot,
) -> None:
    _failed_deletion(bot)
    bot.clock.advance(hours=24)
    bot.command(REQUESTER, PRIVATE, "retry R-1001")  # approvals lapsed: a new preview
    bot.run_jobs()
    assert bot.status() == "pending"  # the same plan, frozen again, not yet posted

    assert bot.service.approve(APPROVER, "R-1001", PRIVATE).text == NOT_SHOWN

    assert bot.store.get(1001).approvals == ()
    bot.show_preview()
    assert bot.service.approve(APPROVER, "R-1001", PRIVATE).text == (
        "You approved R-1001. 1 more approval needed."
    )


def test_service_an_approval_counts_only_while_its_approver_still_is_one(bot: Bot) -> None:
    pending_deletion(bot)
    assert bot.service.approve(GROUPIE, "R-1001", PRIVATE).text == (
        "You approved R-1001. 1 more approval needed."
    )
    bot.directory.groups["S0PRIVACY"] = set()  # the groupie left the approver group
    bot.directory.max_ages.clear()

    reply = bot.service.approve(APPROVER, "R-1001", PRIVATE).text

    dropped = (
        f"<@{GROUPIE}> is no longer an approver (BOT_APPROVERS and its user groups), so their "
        "approval of R-1001 no longer counts."
    )
    assert reply == f"You approved R-1001. {dropped} 1 more approval needed."
    assert bot.status() == "pending"
    assert bot.store.get(1001).approvals == (APPROVER,)
    assert bot.actions("R-1001")[-2:] == ["approval.granted", "approval.dropped"]
    assert f"{dropped} R-1001 needs 1 more approval." in bot.posts()
    # Approval decisions read group membership fresh, not from a five-minute cache.
    assert set(bot.directory.max_ages) == {FRESH_FOR_APPROVALS}


def test_service_a_deletion_expires_on_the_fake_clock_and_can_no_longer_be_decided(
    bot: Bot,
) -> None:
    pending_deletion(bot)
    bot.clock.advance(hours=23, minutes=59)
    assert bot.service.expire_due() == 0

    bot.clock.advance(minutes=1)
    assert bot.service.expire_due() == 1

    assert bot.status() == "expired"
    assert f"<@{REQUESTER}> R-1001 expired without enough approvals; nothing was deleted." in (
        bot.posts()
    )
    assert bot.service.approve(APPROVER, "R-1001", PRIVATE).text == (
        "R-1001 is expired and can no longer be decided."
    )
    assert bot.service.expire_due() == 0


def test_service_a_pending_deletion_past_its_window_cannot_be_approved_before_the_sweep(
    bot: Bot,
) -> None:
    pending_deletion(bot)
    bot.clock.advance(hours=24)

    assert bot.service.approve(APPROVER, "R-1001", PRIVATE).text == (
        "R-1001 has expired and can no longer be decided."
    )
    assert bot.status() == "pending"


def test_service_rejection_needs_an_approver_and_a_reason(bot: Bot) -> None:
    pending_deletion(bot)

    refusal = bot.service.check_reject(REQUESTER, "R-1001", PRIVATE)
    assert refusal is not None
    assert refusal.text == "You cannot reject your own request: use Cancel instead."
    assert bot.service.check_reject(APPROVER, "R-1001", PRIVATE) is None
    assert bot.service.reject(APPROVER, "R-1001", "  ", PRIVATE).text == (
        "A rejection needs a reason."
    )
    assert bot.status() == "pending"

    assert bot.service.reject(APPROVER, "R-1001", " not a data subject's image ", PRIVATE).text == (
        "You rejected R-1001."
    )

    record = bot.store.get(1001)
    assert (record.status, record.decided_by, record.decision_reason) == (
        "rejected",
        APPROVER,
        "not a data subject's image",
    )
    assert f"<@{REQUESTER}> R-1001 was rejected by <@{APPROVER}>." in bot.posts()


@pytest.mark.parametrize(
    ("user", "reply", "status"),
    [
        (STRANGER, "Only the requester may cancel R-1001.", "queued"),
        (APPROVER, "Only the requester may cancel R-1001.", "queued"),
        (REQUESTER, "R-1001 is cancelled.", "cancelled"),
    ],
)
def test_service_only_the_requester_cancels(bot: Bot, user: str, reply: str, status: str) -> None:
    bot.command(REQUESTER, PRIVATE, "export projects")

    assert bot.command(user, PRIVATE, "cancel R-1001") == reply

    assert bot.status() == status


# --- retry -------------------------------------------------------------------------------------


def test_service_retry_resumes_a_failed_export_for_its_requester(bot: Bot) -> None:
    bot.jobs.failing.add("export")
    bot.command(REQUESTER, PRIVATE, "export projects")
    bot.run_jobs()
    assert bot.status() == "failed"
    bot.wakes.clear()

    assert bot.command(STRANGER, PRIVATE, "retry R-1001") == (
        "Only the requester or an approver may retry R-1001."
    )
    assert bot.wakes == []
    assert (
        bot.command(REQUESTER, PRIVATE, "retry R-1001") == "R-1001 resumes from where it stopped."
    )

    assert bot.status() == "queued"
    assert bot.wakes == [None]
    bot.jobs.failing.clear()
    bot.run_jobs()
    assert bot.status() == "done"
    assert bot.command(REQUESTER, PRIVATE, "retry R-1001") == (
        "R-1001 is done: only failed requests can be retried."
    )


def _failed_deletion(bot: Bot) -> None:
    pending_deletion(bot)
    bot.service.approve(APPROVER, "R-1001", PRIVATE)
    bot.service.approve(GROUPIE, "R-1001", PRIVATE)
    bot.jobs.failing.add("delete")
    bot.run_jobs()
    assert bot.status() == "failed"
    bot.jobs.failing.clear()


def test_service_retry_resumes_a_deletion_while_its_approvals_are_in_force(bot: Bot) -> None:
    _failed_deletion(bot)
    bot.clock.advance(hours=23)

    assert bot.command(APPROVER, PRIVATE, "retry R-1001") == "R-1001 resumes from where it stopped."

    assert bot.status() == "approved"
    assert bot.store.get(1001).approvals == (APPROVER, GROUPIE)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            "age",
            "The approval of R-1001 is older than 24 h (BOT_APPROVAL_TTL_HOURS).",
        ),
        (
            "group",
            f"<@{GROUPIE}> is no longer an approver (BOT_APPROVERS and its user groups), so "
            "their approval of R-1001 no longer counts. 1 of the 2 required approvals stands.",
        ),
        (
            # restarted with a stricter BOT_REQUIRED_APPROVALS: no approval dropped, too few
            "required",
            "2 of the 3 required approvals stand.",
        ),
    ],
)
def test_service_retry_sends_a_deletion_back_to_a_new_preview_once_its_approvals_lapse(
    bot: Bot, change: str, reason: str
) -> None:
    _failed_deletion(bot)
    if change == "age":
        bot.clock.advance(hours=24)
    elif change == "group":
        bot.directory.groups["S0PRIVACY"] = set()
    else:
        bot.service.rules = replace(bot.service.rules, required_approvals=3)
    bot.wakes.clear()

    reply = bot.command(REQUESTER, PRIVATE, "retry R-1001")

    assert reply == (
        f"R-1001 cannot resume on its approvals: {reason} A fresh preview of what is left follows; "
        "nothing more is deleted until it gets new approval."
    )
    record = bot.store.get(1001)
    assert (record.status, record.approvals) == ("previewing", ())
    assert bot.store.job_for(1001, JobKind.PREVIEW) is not None
    [event] = [e for e in bot.store.audit_events() if e.action == "request.reapproval"]
    assert event.details["withdrawn_approvals"] == [APPROVER, GROUPIE]
    assert f"<@{REQUESTER}> asked to resume. {reply}" in bot.posts()
    assert bot.wakes == [None]


# --- audit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "channel", "reply", "audited"),
    [
        (
            STRANGER,
            PRIVATE,
            "Only approvers may read the whole audit log; requesters may read the trail of their "
            "own requests (`audit --request <id>`).",
            True,
        ),
        (APPROVER, DM, NOT_IN_A_CHANNEL.format(where="a direct message", text="audit"), True),
        (APPROVER, GROUP_DM, NOT_IN_A_CHANNEL.format(where="a group DM", text="audit"), True),
        (
            APPROVER,
            OUTSIDE,
            "I am not in this channel, so I cannot post the audit file here. Invite me first.",
            False,
        ),
        (
            APPROVER,
            PUBLIC,
            "The audit log (reasons, people, targets) holds personal data, and this is a public "
            "channel. Run it in a private channel, or ask an admin to set "
            "BOT_ALLOW_PUBLIC_EXPORTS=true.",
            True,
        ),
    ],
)
def test_service_audit_export_refusals(
    bot: Bot, user: str, channel: str, reply: str, audited: bool
) -> None:
    assert bot.command(user, channel, "audit") == reply

    assert bot.refusals() == ([("audit.refused", reply)] if audited else [])
    assert not (bot.work_dir / "audit").exists()


@pytest.mark.parametrize(
    ("user", "text", "events", "name"),
    [
        (APPROVER, "audit", 5, "audit-all-2026-11-27T0900.csv"),
        (REQUESTER, "audit --request R-1001", 3, "audit-R-1001-2026-11-27T0900.csv"),
        (APPROVER, "audit --format jsonl", 5, "audit-all-2026-11-27T0900.jsonl"),
    ],
)
def test_service_audit_export_writes_the_file_and_queues_it(
    bot: Bot, user: str, text: str, events: int, name: str
) -> None:
    bot.command(REQUESTER, PRIVATE, "export projects")
    bot.command(APPROVER, PRIVATE, "export projects")
    bot.command(STRANGER, PRIVATE, "status R-1001")  # refused, in R-1001's trail

    reply = bot.command(user, PRIVATE, text)

    assert reply == f"Posting {events} audit events as `{name}`."
    lines = (bot.work_dir / "audit" / name).read_text(encoding="utf-8").splitlines()
    assert len(lines) == events + name.endswith(".csv")  # a CSV has a header line
    assert bot.actions()[-1] == "audit.exported"
    [upload] = [i for i in bot.store.pending_outbox(100) if i.kind == "upload"]
    assert (upload.channel, upload.payload["filename"]) == (PRIVATE, name)


def test_service_audit_verify_for_approvers_and_requesters(bot: Bot) -> None:
    refusal = bot.command(STRANGER, PRIVATE, "audit verify")
    assert refusal.startswith("Only approvers may read the whole audit log")

    reply = bot.service.handle_command(APPROVER, PRIVATE, "audit verify")

    assert reply.public
    assert reply.text.startswith("Audit log intact: 1 event, head #1 hash ")
    assert bot.actions()[-1] == "audit.verified"


def test_service_the_trail_of_an_ended_request_is_written_and_queued(bot: Bot) -> None:
    bot.command(REQUESTER, PRIVATE, "export projects")

    assert bot.command(REQUESTER, PRIVATE, "cancel R-1001") == "R-1001 is cancelled."

    trail = bot.work_dir / "audit" / "R-1001-audit-trail.jsonl"
    assert [line.count('"action"') for line in trail.read_text().splitlines()] == [1, 1, 1]
    uploads = [i for i in bot.store.pending_outbox(100) if i.kind == "upload"]
    assert [u.payload["filename"] for u in uploads] == ["R-1001-audit-trail.jsonl"]


@pytest.mark.parametrize(
    ("slack", "why"),
    [
        (
            "down",
            "The audit trail holds personal data, and Slack did not confirm that this "
            "channel is private.",
        ),
        (
            "public",
            "The audit trail holds personal data, and this is a public channel. Run it in "
            "a private channel, or ask an admin to set BOT_ALLOW_PUBLIC_EXPORTS=true.",
        ),
    ],
)
def test_service_the_trail_stays_out_of_a_channel_personal_data_may_not_reach(
    bot: Bot, slack: str, why: str
) -> None:
    bot.command(REQUESTER, PRIVATE, "export projects")
    if slack == "down":
        bot.directory.down = {"channel"}
    else:
        bot.directory.channels[PRIVATE] = CHANNELS[PUBLIC]  # made public since

    assert bot.command(REQUESTER, PRIVATE, "cancel R-1001") == "R-1001 is cancelled."

    assert (
        f"R-1001's audit trail is not posted here. {why} An approver can get it with `/cv audit "
        "--request R-1001` in a private channel."
    ) in bot.posts()
    assert not (bot.work_dir / "audit").exists()
