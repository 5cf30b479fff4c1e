"""The bot without Slack: what happens when someone types a command or clicks a button.

Handlers call one method here with plain values and render the `Reply`. `Service` only
orchestrates: it looks the facts up (the stored request, Slack's answers through `Directory`),
asks bot.policy, which holds every rule, and records the outcome. Every change is one write
transaction holding the state change, its audit events and the Slack deliveries it causes (the
outbox), so nothing is half-done after a crash; a refusal is audited with its reason.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TextIO, TypeVar

from bot import audit, commands, parser, subject, wording
from bot.clock import Clock, iso
from bot.dashboard import DASHBOARD_SHOWN, Dashboard, Listing
from bot.deadline import (
    DUE_SOON_DAYS,
    Deadline,
    deadline_of,
    describe_left,
    due_date,
    extension_problem,
    receipt_problem,
)
from bot.errors import (
    BotError,
    ParseError,
    RequestStateError,
    SlackLookupError,
    WorkDirFull,
    is_disk_full,
)
from bot.help import FORMS, help_text
from bot.ids import format_request_id, parse_request_id
from bot.lifecycle import (
    OPEN,
    STOPPED,
    TERMINAL,
    Job,
    JobKind,
    RequestKind,
    RequestRecord,
    Role,
    Status,
)
from bot.policy import (
    Actor,
    ChannelInfo,
    Decision,
    Rules,
    Subject,
    approval_counts,
    approvals_missing,
    audience_problem,
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
    may_see_queue,
    may_see_status,
    may_submit_here,
    personal_results,
    preview_shown,
    widened,
    withheld_error,
)
from bot.reminders import digest_day, digests
from bot.report import csv_text as report_csv
from bot.report import period as report_period
from bot.report import summary as report_summary
from bot.resources import ResourceError, Resources, narrowed
from bot.store import HeldDelivery, Store

log = logging.getLogger(__name__)
# An approval decision reads group membership fresh: a cached "yes" older than this is asked
# again (someone removed from an approver group must not approve on a five-minute cache).
FRESH_FOR_APPROVALS = 3.0
P = ParamSpec("P")
R = TypeVar("R")

MANUAL_STEPS = {
    "account": (
        "The Custom Vision account is the Azure resource itself; the Training-Key cannot delete "
        "it. To erase it:\n"
        "1. Azure portal > the Custom Vision resource (training and, if any, prediction) > "
        "Delete; or Resource Manager: `az cognitiveservices account delete --name <resource> "
        "--resource-group <group>`.\n"
        "2. Deleted resources stay recoverable for 48 hours. Purge them to erase at once: "
        "portal > Azure AI services > Manage deleted resources > Purge; or `az "
        "cognitiveservices account purge --location <region> --resource-group <group> --name "
        "<resource>`.\n"
        "3. Exported models, training images and stored predictions go with the resource."
    ),
    "exports": (
        "Exported models have no delete operation in the Training API: they are deleted with "
        "the iteration (`delete iteration <project-id> <iteration-id>`) or with the account "
        "(Azure portal or Resource Manager, then purge after the 48-hour soft delete). Copies "
        "already downloaded must be deleted where they were stored."
    ),
}


# `status` lists the newest open requests, each command clipped, so the reply fits Slack's
# 4,000 characters with room to spare (`status --all` posts the full list as a file).
STATUS_SHOWN = 20
STATUS_COMMAND_CHARS = 70
STATUS_TICKET_CHARS = 24


@dataclass(frozen=True)
class Reply:
    """What the user who acted is told (ephemeral unless `public`)."""

    text: str
    public: bool = False


class Directory(Protocol):
    """Slack lookups the rules need (implemented in handlers/ with a cache)."""

    def groups_of(
        self, user_id: str, groups: frozenset[str], *, max_age: float | None = None
    ) -> frozenset[str]:
        """Return which of `groups` (user-group ids) contain `user_id`.

        `max_age`: how old a cached "yes" may be (None: the directory's own TTL). Raises
        SlackLookupError when Slack does not answer in time.
        """
        ...

    def channel(self, channel_id: str, *, max_age: float | None = None) -> ChannelInfo:
        """Return what the bot knows of a channel (`max_age`: how old a cached answer may be;
        None: the directory's own TTL). Raises SlackLookupError when Slack does not answer in
        time."""
        ...


def _answers_errors(method: Callable[P, R]) -> Callable[P, R | Reply]:
    """Turn a BotError raised by a decision into the Reply that explains it."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Reply:
        try:
            return method(*args, **kwargs)
        except BotError as exc:
            return Reply(exc.user_message)

    return wrapper


def subject_of(record: RequestRecord) -> Subject:
    """Return what the authorisation rules need to know of a stored request."""
    return Subject(
        request_id=record.id,
        kind=record.kind,
        status=record.status,
        requester=record.requester,
        approvals=record.approvals,
        expires_at=record.expires_at,
        channel=record.channel,
        approved_at=record.approved_at,
    )


def age(since: datetime, now: datetime) -> str:
    """Return a short human age: 45s, 12m, 3h, 2d."""
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Service:
    """Entry points for commands and decisions."""

    def __init__(
        self,
        store: Store,
        rules: Rules,
        directory: Directory,
        clock: Clock,
        *,
        approval_ttl: timedelta,
        work_dir: Path,
        command: str = "/cv",
        wake: Callable[[], None] = lambda: None,
        holidays: frozenset[date] = frozenset(),
        reminder_hour: int = 8,
        resources: Resources,
    ) -> None:
        self.store = store
        # The Custom Vision resources, by name: which one holds a project (bot.resources)
        self.resources = resources
        self.holidays = holidays  # BOT_PUBLIC_HOLIDAYS: move a due date like a weekend
        self.reminder_hour = reminder_hour  # BOT_REMINDER_HOUR_UTC
        self.rules = rules
        self.directory = directory
        self.clock = clock
        self.approval_ttl = approval_ttl
        self.work_dir = work_dir
        self.command = command
        self.wake = wake
        self._trails_waiting: set[str] = set()  # logged once each

    # -- who is acting ---------------------------------------------------------------------------

    def actor(self, user_id: str, *, max_age: float | None = None) -> Actor:
        """Return the actor with the configured user groups they belong to.

        `max_age`: how old a cached group membership may be (FRESH_FOR_APPROVALS for approval
        decisions). Raises SlackLookupError when Slack does not answer in time.
        """
        groups = self.rules.user_groups
        if not groups:
            return Actor(user_id)
        return Actor(user_id, self.directory.groups_of(user_id, groups, max_age=max_age))

    def _conversation(self, channel_id: str) -> ChannelInfo:
        """Return what the rules need of the conversation `channel_id`.

        A DM's id says it is one (it starts with D), so no lookup is needed to refuse it.
        """
        if channel_id.startswith("D"):
            return ChannelInfo(exists=True, is_member=True, is_im=True)
        return self.directory.channel(channel_id)

    def _refused(
        self,
        user_id: str,
        action: str,
        decision: Decision,
        *,
        request: int | str | None = None,
        targets: tuple[str, ...] = (),
        conn: sqlite3.Connection | None = None,
    ) -> Reply:
        """Record the refusal (in `conn`'s transaction, else as an event of its own, committed
        with the others of the moment: Store.record); return its explanation."""
        refusal: dict[str, Any] = {
            "request": request,
            "targets": targets,
            "outcome": "refused",
            "details": {"reason": decision.reason},
        }
        if conn is None:
            self.store.record(user_id, f"{action}.refused", **refusal)
        else:
            self.store.audit(conn, user_id, f"{action}.refused", **refusal)
        return Reply(decision.reason)

    # -- commands --------------------------------------------------------------------------------

    def handle_command(self, user_id: str, channel_id: str, text: str) -> Reply:
        """Parse and act on one slash command; return what the user is told."""
        try:
            command = parser.parse(text)
        except ParseError as exc:
            return Reply(
                f"{exc.problem}\nUsage: `{self.command} {exc.usage}`" if exc.usage else exc.problem
            )
        try:
            return self._dispatch(user_id, channel_id, text, command)
        except BotError as exc:
            return Reply(exc.user_message)

    def _dispatch(self, user_id: str, channel_id: str, text: str, command: Any) -> Reply:
        if isinstance(command, commands.Help):
            return Reply(help_text(command.topic, command=self.command))
        if isinstance(command, commands.Status) and command.all:
            return self.status_file(user_id, channel_id)
        if isinstance(command, commands.Status):
            return self.status(user_id, command.request_id)
        if isinstance(command, commands.Cancel):
            return self.cancel(user_id, command.request_id)
        if isinstance(command, commands.Retry):
            return self.retry(user_id, command.request_id)
        if isinstance(command, commands.Resend):
            return self.resend(user_id, command.request_id)
        if isinstance(command, commands.AuditVerify):
            return self.audit_verify(user_id, channel_id)
        if isinstance(command, commands.AuditExport):
            return self.audit_export(user_id, channel_id, command)
        if isinstance(command, commands.Extend):
            return self.extend(user_id, command)
        if isinstance(command, commands.Report):
            return self.report(user_id, channel_id, command)
        if isinstance(command, commands.Find):
            return self.find(user_id, channel_id, command)
        if isinstance(command, commands.Export | commands.Delete):
            return self.submit(user_id, channel_id, text, command)
        raise AssertionError(f"unhandled command {command!r}")

    def find(self, user_id: str, channel_id: str, command: commands.Find) -> Reply:
        """Count one person's images in every resource, project and trained iteration; change
        nothing. The search is audited (who looked, for what, how much was found)."""
        unknown = self._unknown_resource(command.selectors, "find")
        if unknown is not None:
            return unknown
        decision = may_request(self.rules, self.actor(user_id), channel_id, deletion=False)
        if not decision:
            return self._refused(user_id, "find", decision)
        result = subject.find(self.resources, command.selectors)
        self._audit_search(user_id, result)
        return Reply(subject.describe_find(result))

    def _audit_search(self, user_id: str, result: subject.FindResult, purpose: str = "") -> None:
        """Record a search for one person: who looked, for what, how much was found (counts
        and the projects holding matches, nothing personal), and for which deletion."""
        self.store.record(
            user_id,
            "find",
            targets=tuple(p.place.project_id for p in result.projects if p.matched),
            outcome="ok" if subject.complete(result) else "incomplete",
            details={
                "selector": result.selectors.describe(),
                "projects": len(result.projects),
                "workspace_images": subject.workspace_images(result),
                **({"for": purpose} if purpose else {}),
            },
        )

    def submit(
        self, user_id: str, channel_id: str, text: str, command: commands.Export | commands.Delete
    ) -> Reply:
        """Store a new export or deletion request and queue its first job."""
        today = self.clock.now().date()
        received = command.meta.received or today
        problem = receipt_problem(received, today)
        if problem is not None:  # bad input: answered before anything is asked or stored
            form = FORMS[f"{command.to_dict()['verb']} {command.kind.value}"]
            return Reply(f"{problem}\nUsage: `{self.command} {form.usage}`")
        try:  # an unknown --resource is bad input: answered before any call
            self.resources.name_of(command.resource)
        except ResourceError as error:
            return Reply(error.user_message)
        if command.selectors is not None:
            unknown = self._unknown_resource(
                command.selectors, f"{command.to_dict()['verb']} {command.kind.value}"
            )
            if unknown is not None:
                return unknown
        decision = self._may_submit(user_id, channel_id, text, command)
        if not decision:
            return self._refused(user_id, "command", decision)
        if command.project_id is not None:
            try:
                located = self.resources.locate(command.project_id, command.resource)
            except ResourceError as error:
                return Reply(error.user_message)
            # Stored with the request, so every job (and a retry after a restart) uses the
            # resource found now; a request on the only resource is stored as before.
            if command.resource is not None or len(self.resources) > 1:
                command = replace(command, resource=located.lower())
        if isinstance(command, commands.Delete) and command.selectors is not None:
            unmatched = self._search_before_storing(user_id, command)
            if unmatched is not None:
                return unmatched
        number, deadline = self._store_request(user_id, channel_id, text, command, received)
        self.wake()
        submitted = _submitted(format_request_id(number), command)
        return Reply(f"{submitted}\nDeadline: {deadline.describe(today)}")

    def _search_before_storing(self, user_id: str, command: commands.Delete) -> Reply | None:
        """Count the person's images in the deletion's scope (`find`'s search: every project
        searched, or the one project of `delete images`, on its resource); return the answer
        when nothing matches or the search could not finish, so nothing is stored; None when
        some image matches and the request may be stored.

        This runs in the decision (handlers.decider): Slack has its answer within 3 s (this
        one, or a holding answer and this one through the response_url). The search is
        audited as `find` is.
        """
        selectors = command.selectors
        assert selectors is not None
        clients: Mapping[str, Any] = self.resources
        if command.project_id is not None:
            name = self.resources.name_of(command.resource)
            clients = {name: self.resources[name]}
            selectors = replace(selectors, project_ids=(command.project_id,))
        result = subject.find(clients, selectors)
        self._audit_search(user_id, result, f"delete {command.kind.value}")
        if not subject.complete(result):
            return Reply(
                "\n".join(subject.problems(result))
                + "\nNothing was stored: no deletion is planned from a partial search. Type the"
                " same command again once Custom Vision answers."
            )
        if any(p.matched for p in result.projects):
            return None
        searched = list(clients) if len(self.resources) > 1 else []
        return Reply(subject.describe_no_match(result, searched))

    def _unknown_resource(self, selectors: commands.Selectors, form: str) -> Reply | None:
        """Return the refusal of a search naming a resource that is not configured (bad
        input: no call, nothing stored), with the form's usage; None when all are known."""
        try:
            narrowed(self.resources, selectors.resources)
        except ResourceError as error:
            return Reply(f"{error.user_message}\nUsage: `{self.command} {FORMS[form].usage}`")
        return None

    def _may_submit(
        self, user_id: str, channel_id: str, text: str, command: commands.Export | commands.Delete
    ) -> Decision:
        """Ask the rules whether `user_id` may make this request here; Slack is asked about the
        channel only once the requester passed."""
        deletion = isinstance(command, commands.Delete)
        decision = may_request(self.rules, self.actor(user_id), channel_id, deletion=deletion)
        if not decision:
            return decision
        return may_submit_here(
            self.rules,
            self._conversation(channel_id),
            rerun=f"{self.command} {text.strip()}",
            personal=personal_results(command),
        )

    def _store_request(
        self,
        user_id: str,
        channel_id: str,
        text: str,
        command: commands.Export | commands.Delete,
        received: date,
    ) -> tuple[int, Deadline]:
        """Store the request, its deadline, its audit events, its first job (or its manual
        answer) and its announcement in one transaction; return its number and deadline."""
        kind, status, job = _first_step(command)
        parsed = command.to_dict()
        answered = self.clock.now().date() if job is None else None
        deadline = deadline_of(received, 1, self.holidays, completed=answered)
        with self.store.write() as conn:
            number = self.store.create_request(
                conn,
                kind=kind,
                command=parsed,
                text=text,
                requester=user_id,
                channel=channel_id,
                status=status,
            )
            self.store.start_clock(conn, number, deadline)
            self.store.audit(
                conn,
                user_id,
                "command.received",
                request=number,
                targets=_targets(parsed),
                details={
                    "command": parsed,
                    "channel": channel_id,
                    "received": deadline.received.isoformat(),
                    "due": deadline.due.isoformat(),
                },
            )
            if job is None:
                self.store.audit(
                    conn,
                    "bot",
                    "request.answered",
                    request=number,
                    details={"steps": str(command.kind)},
                )
            else:
                self.store.enqueue_job(conn, number, job)
                self.store.audit(
                    conn, "bot", "request.queued", request=number, details={"job": str(job)}
                )
            self.store.announce(conn, number, channel_id)
        return number, deadline

    def status(self, user_id: str, request_id: str | None) -> Reply:
        """Return the caller's open requests, or one request's state."""
        now = self.clock.now()
        if request_id is not None:
            record = self._load(request_id, user_id=user_id, action="status")
            decision = may_see_status(self.rules, self.actor(user_id), subject_of(record))
            if not decision:
                return self._refused(user_id, "status", decision, request=record.id)
            held = self.store.held_deliveries(record.number)
            return Reply(describe_status(record, now, held=held, command=self.command))
        total = self.store.count_requests_of(user_id)
        if not total:
            return Reply(f"You have no open requests. `{self.command} help` shows what I can do.")
        records = self.store.requests_of(user_id, limit=STATUS_SHOWN)
        header = f"Your open requests ({total}):"
        if total > len(records):
            # First, not last: if Slack's length limit cuts the list, this line stays.
            header = (
                f"Your open requests ({total}), newest first; showing {len(records)} of {total}. "
                f"`{self.command} status --all` posts every one as a file, `{self.command} "
                "status <request-id>` shows one:"
            )
        holding = self.store.held_requests([r.number for r in records])
        lines = [header, *(self._status_line(r, now, r.number in holding) for r in records)]
        return Reply("\n".join(lines))

    def _status_line(self, record: RequestRecord, now: datetime, held: bool) -> str:
        """Return a request's line in the `status` list, saying when a delivery is held."""
        line = _status_line(record, now, short=True)
        if held:
            line += f" · held: `{self.command} resend {record.id}`"
        return line

    def status_file(self, user_id: str, channel_id: str) -> Reply:
        """Post every open request of the caller as a file here (personal data: not public)."""
        records = self.store.requests_of(user_id, limit=None)
        if not records:
            return Reply(f"You have no open requests. `{self.command} help` shows what I can do.")
        # Not a request: a refusal here is only told, not audited.
        channel = self.directory.channel(channel_id)
        member = bot_is_in(
            channel,
            to_post="the file",
            then=f"Run `{self.command} status --all` in a private channel I am in, or "
            f"`{self.command} status` for the newest 20.",
        )
        if not member:
            return Reply(member.reason)
        where = may_post_personal_data(
            self.rules,
            channel.audience,
            what="The list of your requests (tickets, reasons, commands)",
        )
        if not where:
            return Reply(
                f"{where.reason} `{self.command} status` shows the newest 20 (only you see it)."
            )
        now = self.clock.now()
        stamp = iso(now).replace(":", "").replace(".", "")[:15]
        name = f"status-{user_id}-{stamp}.txt"
        path = self.work_dir / "status" / name
        body = [
            f"Open requests of {user_id} at {iso(now)[:16].replace('T', ' ')} UTC: {len(records)}"
        ]
        for record in records:
            held = self.store.held_deliveries(record.number)
            body += ["", describe_status(record, now, held=held, command=self.command)]
            _, reason = _meta_of(record)
            if reason:
                body.append(f"Reason: {reason}")
        text = "\n".join(body) + "\n"
        self._write_file(path, lambda fp: fp.write(text), again="status --all")
        self._share_file(
            user_id,
            channel_id,
            path,
            action="status.exported",
            details={"requests": len(records), "file": name, "channel": channel_id},
            title=f"Open requests of <@{user_id}> ({len(records)})",
            comment=f"<@{user_id}> your {wording.count(len(records), 'open request')}.",
        )
        return Reply(
            f"Posting your {wording.count(len(records), 'open request')} here as `{name}`."
        )

    def dashboard(self, user_id: str) -> Dashboard:
        """Return what `user_id`'s App Home shows: their open requests and, for an approver,
        everything waiting for an approval and everything due within a week or overdue.

        Read-only. When Slack does not say whether the person is in an approvers' user group,
        their own requests are shown with a note instead of the approvers' lists.
        """
        now = self.clock.now()
        note = None
        try:
            actor = self.actor(user_id)
        except SlackLookupError:
            actor = Actor(user_id)
            note = (
                "Slack did not say in time whether you are in an approvers' user group, so only"
                " your own requests are shown. Open this tab again in a moment."
            )
        mine = Listing(
            tuple(self.store.tracked(requester=user_id, limit=DASHBOARD_SHOWN)),
            self.store.count_tracked(requester=user_id),
        )
        if not may_see_queue(self.rules, actor):
            return Dashboard(user_id, now, mine, note=note)
        pending = (Status.PENDING,)
        due_by = now.date() + timedelta(days=DUE_SOON_DAYS)
        return Dashboard(
            user_id,
            now,
            mine,
            awaiting_approval=Listing(
                tuple(self.store.tracked(statuses=pending, limit=DASHBOARD_SHOWN)),
                self.store.count_tracked(statuses=pending),
            ),
            due_soon=Listing(
                tuple(self.store.tracked(due_by=due_by, limit=DASHBOARD_SHOWN)),
                self.store.count_tracked(due_by=due_by),
            ),
            note=note,
        )

    # -- decisions -------------------------------------------------------------------------------

    def _load(self, request_id: str, *, user_id: str, action: str) -> RequestRecord:
        """Return the stored request; an unknown or malformed id is a refusal, audited."""
        try:
            if parse_request_id(request_id) is None:
                raise RequestStateError(
                    f"{request_id[:40]!r} is not a request id (they look like R-1042)."
                )
            return self.store.get(request_id)
        except RequestStateError as exc:
            refusal = Decision(False, exc.user_message)
            self._refused(user_id, action, refusal, targets=(request_id[:40],))
            raise

    @_answers_errors
    def approve(self, user_id: str, request_id: str, channel_id: str | None = None) -> Reply:
        """Record an approval; start the deletion when enough distinct approvers agreed.

        `channel_id` is where the Approve button was clicked (None: not a click).
        """
        record = self._load(request_id, user_id=user_id, action="approval")
        actor = self.actor(user_id, max_age=FRESH_FOR_APPROVALS)
        # Every recorded approval is re-checked against the current rules (approval_counts);
        # their group memberships are read now, outside the write lock.
        earlier = {a: self.actor(a, max_age=FRESH_FOR_APPROVALS) for a in record.approvals}
        now = self.clock.now()
        with self.store.write() as conn:
            record = self.store.get(record.number, conn)  # decide on stored state, in the tx
            subject = subject_of(record)
            decision = may_approve(
                self.rules,
                actor,
                subject,
                now,
                channel=channel_id,
                preview_shown=preview_shown(self.store.shown_preview(record.id), record.preview),
            )
            if not decision:
                return self._refused(
                    user_id, "approval", decision, request=record.number, conn=conn
                )
            count = self.store.add_approval(conn, record.number, user_id)
            self.store.audit(
                conn,
                user_id,
                "approval.granted",
                request=record.number,
                details={"approvals": count, "required": self.rules.required_approvals},
            )
            kept, dropped = self._drop_lapsed_approvals(conn, subject, record, earlier)
            missing = approvals_missing(self.rules, count - len(dropped))
            started = missing <= 0 and self._start_deletion(conn, record, user_id, [*kept, user_id])
            if dropped:
                self.store.post(
                    conn,
                    record.number,
                    record.channel,
                    " ".join(dropped)
                    + (
                        ""
                        if started
                        else f" {record.id} needs {wording.count(missing, 'more approval')}."
                    ),
                )
            self.store.announce(conn, record.number, record.channel)
        stale = (" " + " ".join(dropped)) if dropped else ""
        if started:
            self.wake()
            return Reply(
                f"You approved {record.id}.{stale} The deletion starts now; the receipt will "
                "be posted in its thread."
            )
        return Reply(
            f"You approved {record.id}.{stale} {wording.count(missing, 'more approval')} needed."
        )

    def _drop_lapsed_approvals(
        self,
        conn: sqlite3.Connection,
        subject: Subject,
        record: RequestRecord,
        earlier: Mapping[str, Actor],
    ) -> tuple[list[str], list[str]]:
        """Withdraw each of `record`'s approvals that no longer counts (policy.approval_counts),
        audited; return the approvers kept and why the others were dropped.

        `earlier`: the recorded approvers as looked up before the transaction.
        """
        kept, dropped = [], []
        for approver in record.approvals:
            # One recorded since the lookups above was checked fresh by its own decision.
            who = earlier.get(approver) or self.actor(approver, max_age=FRESH_FOR_APPROVALS)
            counts = approval_counts(self.rules, who, subject)
            if counts:
                kept.append(approver)
                continue
            self.store.remove_approval(conn, record.number, approver)
            self.store.audit(
                conn,
                "bot",
                "approval.dropped",
                request=record.number,
                outcome="refused",
                details={"approver": approver, "reason": counts.reason},
            )
            dropped.append(counts.reason)
        return kept, dropped

    def _start_deletion(
        self, conn: sqlite3.Connection, record: RequestRecord, user_id: str, approvers: list[str]
    ) -> bool:
        """Move an approved deletion on and queue its job; False when it was no longer pending."""
        started = self.store.transition(
            conn, record.number, to=Status.APPROVED, by=Role.APPROVER, actor=user_id
        )
        if started:
            self.store.enqueue_job(conn, record.number, JobKind.DELETE)
            self.store.audit(
                conn,
                "bot",
                "request.approved",
                request=record.number,
                details={"approvers": approvers},
            )
        return started

    @_answers_errors
    def check_reject(
        self, user_id: str, request_id: str, channel_id: str | None = None
    ) -> Reply | None:
        """Return None when the user may reject (before opening the reason dialog), else why not."""
        record = self._load(request_id, user_id=user_id, action="rejection")
        decision = may_reject(
            self.rules,
            self.actor(user_id, max_age=FRESH_FOR_APPROVALS),
            subject_of(record),
            self.clock.now(),
            channel=channel_id,
        )
        if decision:
            return None
        return self._refused(user_id, "rejection", decision, request=record.id)

    @_answers_errors
    def reject(
        self, user_id: str, request_id: str, reason: str, channel_id: str | None = None
    ) -> Reply:
        """Reject a pending deletion with a reason."""
        record = self._load(request_id, user_id=user_id, action="rejection")
        actor = self.actor(user_id, max_age=FRESH_FOR_APPROVALS)
        reason = reason.strip()
        if not reason:
            return Reply("A rejection needs a reason.")
        with self.store.write() as conn:
            record = self.store.get(record.number, conn)
            decision = may_reject(
                self.rules, actor, subject_of(record), self.clock.now(), channel=channel_id
            )
            if not decision:
                return self._refused(
                    user_id, "rejection", decision, request=record.number, conn=conn
                )
            self.store.transition(
                conn,
                record.number,
                to=Status.REJECTED,
                by=Role.APPROVER,
                actor=user_id,
                decided_by=user_id,
                decision_reason=reason[:1000],
            )
            self.store.audit(
                conn,
                user_id,
                "request.rejected",
                request=record.number,
                outcome="rejected",
                details={"reason": reason[:1000]},
            )
            self.store.announce(conn, record.number, record.channel)
            self.store.post(
                conn,
                record.number,
                record.channel,
                f"<@{record.requester}> {record.id} was rejected by <@{user_id}>.",
            )
        self._after_decision(record.number)
        return Reply(f"You rejected {record.id}.")

    @_answers_errors
    def cancel(self, user_id: str, request_id: str, channel_id: str | None = None) -> Reply:
        """Cancel the caller's queued or running export, or pending deletion."""
        record = self._load(request_id, user_id=user_id, action="cancel")
        actor = self.actor(user_id)  # Slack lookups stay outside the write lock
        with self.store.write() as conn:
            record = self.store.get(record.number, conn)
            decision = may_cancel(actor, subject_of(record), channel=channel_id)
            if not decision:
                return self._refused(user_id, "cancel", decision, request=record.number, conn=conn)
            self.store.transition(
                conn,
                record.number,
                to=Status.CANCELLED,
                by=Role.REQUESTER,
                actor=user_id,
                expected=(record.status,),
                decided_by=user_id,
            )
            self.store.audit(
                conn,
                user_id,
                "request.cancelled",
                request=record.number,
                outcome="cancelled",
                details={"was": record.status},
            )
            self.store.announce(conn, record.number, record.channel)
        if record.status in {Status.PENDING, Status.QUEUED}:
            self._after_decision(record.number)
        return Reply(f"{record.id} is cancelled.")

    @_answers_errors
    def retry(self, user_id: str, request_id: str) -> Reply:
        """Resume a failed request from where it stopped.

        A deletion resumes on its approvals only while they are in force (policy
        `approvals_in_force`); otherwise it goes back to a fresh preview that needs new ones.
        """
        record = self._load(request_id, user_id=user_id, action="retry")
        actor = self.actor(user_id)  # Slack lookups stay outside the write lock
        # The recorded approvers' groups, read fresh: is each approval still authorised?
        approvers = [self.actor(a, max_age=FRESH_FOR_APPROVALS) for a in record.approvals]
        with self.store.write() as conn:
            record = self.store.get(record.number, conn)
            decision = may_retry(self.rules, actor, subject_of(record))
            if not decision:
                return self._refused(user_id, "retry", decision, request=record.number, conn=conn)
            job = self._last_job(record)
            if job is None:
                return Reply(f"{record.id} has no work to resume.")
            in_force = may_resume(
                self.rules,
                subject_of(record),
                approvers,
                self.clock.now(),
                self.approval_ttl,
                deleting=job.kind == JobKind.DELETE,
            )
            if in_force:
                reply = self._resume(conn, user_id, record, job)
            else:
                reply = self._preview_again(conn, user_id, record, in_force.reason)
        self.wake()
        return reply

    def _resume(self, conn: Any, user_id: str, record: RequestRecord, job: Job) -> Reply:
        """Queue a failed request's job again; it continues from its checkpoint."""
        to = {
            JobKind.EXPORT: Status.QUEUED,
            JobKind.DELETE: Status.APPROVED,
            JobKind.PREVIEW: Status.PREVIEWING,
        }[job.kind]
        self.store.transition(
            conn,
            record.number,
            to=to,
            by=_role_of(user_id, record),
            actor=user_id,
            expected=(Status.FAILED,),
            error=None,
        )
        self.store.requeue_job(conn, job.id)
        self.store.audit(
            conn,
            user_id,
            "request.retried",
            request=record.number,
            details={"job": job.kind, "checkpoint": bool(job.checkpoint)},
        )
        self.store.announce(conn, record.number, record.channel)
        self.store.post(
            conn,
            record.number,
            record.channel,
            f"<@{user_id}> resumed {record.id} from where it stopped.",
        )
        return Reply(f"{record.id} resumes from where it stopped.")

    def _last_job(self, record: RequestRecord) -> Job | None:
        """Return the job a retry resumes: the request's latest (a deletion: preview or delete)."""
        kinds = {
            RequestKind.DELETE: (JobKind.PREVIEW, JobKind.DELETE),
            RequestKind.EXPORT: (JobKind.EXPORT,),
        }.get(record.kind, ())
        jobs = [j for k in kinds if (j := self.store.job_for(record.number, k)) is not None]
        return max(jobs, key=lambda j: j.id, default=None)

    def _preview_again(self, conn: Any, user_id: str, record: RequestRecord, reason: str) -> Reply:
        """Send a failed deletion back to a fresh preview; its approvals are withdrawn."""
        self.store.transition(
            conn,
            record.number,
            to=Status.PREVIEWING,
            by=_role_of(user_id, record),
            actor=user_id,
            expected=(Status.FAILED,),
            error=None,
        )
        self.store.clear_approvals(conn, record.number)
        self.store.enqueue_job(conn, record.number, JobKind.PREVIEW)
        self.store.audit(
            conn,
            user_id,
            "request.reapproval",
            request=record.number,
            details={"reason": reason, "withdrawn_approvals": list(record.approvals)},
        )
        self.store.announce(conn, record.number, record.channel)
        text = (
            f"{record.id} cannot resume on its approvals: {reason} A fresh preview of what "
            "is left follows; nothing more is deleted until it gets new approval."
        )
        self.store.post(
            conn, record.number, record.channel, f"<@{user_id}> asked to resume. {text}"
        )
        return Reply(text)

    @_answers_errors
    def resend(self, user_id: str, request_id: str) -> Reply:
        """Queue a request's held deliveries again (after the cause was fixed)."""
        record = self._load(request_id, user_id=user_id, action="resend")
        # Decided before the transaction: who may resend never changes (the requester, the
        # approvers), and a refusal is then an audit event of its own, committed with others.
        decision = may_resend(self.rules, self.actor(user_id), subject_of(record))
        if not decision:
            return self._refused(user_id, "resend", decision, request=record.number)
        still = self._still_widened(record)
        if still is not None:
            return Reply(still)
        with self.store.write() as conn:
            held = self.store.held_deliveries(record.number, conn)
            if not held:
                return Reply(
                    f"{record.id} has nothing held: everything it has to post was posted or is "
                    f"on its way (`{self.command} status {record.id}`)."
                )
            self.store.resend(conn, record.number)
            self.store.audit(
                conn,
                user_id,
                "delivery.resent",
                request=record.number,
                targets=tuple(h.key or h.kind for h in held),
                details={"count": len(held), "errors": sorted({h.error for h in held})},
            )
        names = wording.join_words(
            [h.name for h in held[:5]] + ([f"{len(held) - 5:,} more"] if len(held) > 5 else [])
        )
        return Reply(
            f"Posting {wording.count(len(held), 'held delivery', 'held deliveries')} of "
            f"{record.id} again: {names}. If Slack "
            "refuses again, you will be told why."
        )

    def _still_widened(self, record: RequestRecord) -> str | None:
        """Return why a resend would be held again at once, when the request's deliveries wait
        for its channel's audience to narrow and Slack says it has not (None otherwise)."""
        held = self.store.held_deliveries(record.number)
        if not any(widened(h.error, record.channel) for h in held):
            return None
        # Asked afresh: the channel may have been made private a moment ago.
        channel = self.directory.channel(record.channel, max_age=0.0)
        problem = audience_problem(self.rules, channel.audience) if channel.exists else None
        told = None if problem is None else widened(withheld_error(problem), record.channel)
        if told is None:
            return None  # narrowed (or gone: Slack's own answer will say so)
        why, cure = told
        return (
            f"{record.id} stays held, and nothing was resent: its files hold personal data, "
            f"and {why}. To have them posted, {cure}; then run `{self.command} resend "
            f"{record.id}` again."
        )

    # -- the statutory clock -----------------------------------------------------------------

    def extend(self, user_id: str, command: commands.Extend) -> Reply:
        """Extend a request's statutory deadline (approvers only, before its first due date)."""
        record = self._load(command.request_id, user_id=user_id, action="extend")
        decision = may_extend(self.rules, self.actor(user_id), subject_of(record))
        if not decision:
            return self._refused(user_id, "extend", decision, request=record.id)
        today = self.clock.now().date()
        with self.store.write() as conn:
            record = self.store.get(record.number, conn)  # decide on stored state, in the tx
            was = record.deadline
            problem = self._extension_problem(record, command.months, today)
            if problem is not None or was is None:
                refusal = Decision(False, f"{record.id} cannot be extended: {problem}")
                return self._refused(user_id, "extend", refusal, request=record.number, conn=conn)
            months = was.months + command.months
            now = replace(was, months=months, due=due_date(was.received, months, self.holidays))
            if not self.store.extend_clock(conn, record.number, was=was, now=now):
                raise RequestStateError(
                    f"{record.id}'s deadline changed meanwhile; `{self.command} status"
                    f" {record.id}` shows it."
                )
            self.store.audit(
                conn,
                user_id,
                "request.extended",
                request=record.number,
                details={
                    "months": command.months,
                    "period": months,
                    "received": was.received.isoformat(),
                    "due_before": was.due.isoformat(),
                    "due": now.due.isoformat(),
                    "tell_by": was.first_due.isoformat(),
                    "reason": command.reason,
                },
            )
            self.store.post(
                conn,
                record.number,
                record.channel,
                _extended(user_id, record, was, now, command.reason),
            )
            self.store.announce(conn, record.number, record.channel)
        return Reply(
            f"Extended {record.id} by {wording.count(command.months, 'month')}: due"
            f" {now.due.isoformat()} ({describe_left(now.due, today)}). Tell the person by"
            f" {was.first_due.isoformat()}, with the reasons; the thread has the reminder."
        )

    def _extension_problem(self, record: RequestRecord, months: int, today: date) -> str | None:
        """Return why `record` cannot be extended by `months` on `today`, or None."""
        if record.deadline is None:
            return "it was made before the bot kept deadlines, so it has no due date to move"
        if record.deadline.completed is None and record.status in STOPPED:
            return f"it is {record.status.value}; no answer is owed any more"
        return extension_problem(record.deadline, months, today)

    def report(self, user_id: str, channel_id: str, command: commands.Report) -> Reply:
        """Post the data-protection officer's CSV of requests (approvers only; not public)."""
        decision = may_read_report(self.rules, self.actor(user_id))
        if not decision:
            return self._refused(user_id, "report", decision)
        refused = self._file_refused(
            user_id,
            channel_id,
            "report",
            typed="report",
            name="the report",
            what="The report (every request's dates and outcome)",
        )
        if refused is not None:
            return refused
        today = self.clock.now().date()
        entries = self.store.report_entries(command.since, command.until)
        period = report_period(command.since, command.until)
        stamp = iso(self.clock.now()).replace(":", "").replace(".", "")[:15]
        name = f"report-{stamp}.csv"
        self._write_file(
            self.work_dir / "report" / name,
            lambda fp: fp.write(report_csv(entries, today)),
            again="report",
        )
        line = report_summary(entries, today)
        self._share_file(
            user_id,
            channel_id,
            self.work_dir / "report" / name,
            action="report.exported",
            details={
                "requests": len(entries),
                "since": None if command.since is None else command.since.isoformat(),
                "until": None if command.until is None else command.until.isoformat(),
                "file": name,
            },
            title=f"Requests received {period} ({len(entries)})",
            comment=f"<@{user_id}> requests received {period}: {line}.",
        )
        return Reply(f"Posting the report of requests received {period} as `{name}`: {line}.")

    def send_digest(self) -> int:
        """Queue today's deadline digest into each channel with something due, once a day from
        the reminder hour on; return how many channels get one (0 also when not due yet)."""
        now = self.clock.now()
        day = digest_day(now, self.reminder_hour, self.store.last_digest_day())
        if day is None:
            return 0
        texts = digests(self.store.due_soon(day), day, command=self.command)
        with self.store.write() as conn:
            if not self.store.mark_digest(conn, day, len(texts)):
                return 0  # another process sent it first
            for channel, text in texts.items():
                self.store.enqueue(
                    conn,
                    kind="post",
                    channel=channel,
                    payload={"text": text},
                    request=None,
                    key=f"digest:{day.isoformat()}:{channel}",
                )
            if texts:  # a day with nothing due leaves no trace but its row
                self.store.audit(
                    conn,
                    "bot",
                    "digest.sent",
                    details={"day": day.isoformat(), "channels": sorted(texts)},
                )
        return len(texts)

    def housekeeping(self) -> None:
        """Expire overdue approvals, send the day's deadline digest, then remove the work files
        of finished requests."""
        self.expire_due()
        self.send_digest()
        self.purge_work_files()

    def purge_work_files(self) -> list[str]:
        """Delete the work folders (packages, caches, receipts) of requests that are over.

        They hold personal data (image files). A folder goes once its request has ended and
        Slack confirmed every file of it; a held delivery keeps it for `resend`, a failed
        request keeps it so `retry` can reuse what was downloaded.
        """
        removed = []
        for folder in sorted(self.work_dir.glob("R-*")):
            number = parse_request_id(folder.name)
            if number is None or not folder.is_dir():
                continue
            try:
                record = self.store.get(number)
            except RequestStateError:
                continue
            if record.status not in TERMINAL or record.status == Status.FAILED:
                continue
            if not self.store.is_settled(number):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(record.id)
        return removed

    def expire_due(self) -> int:
        """Expire pending deletions whose approval window passed; return how many."""
        expired = 0
        for number in self.store.due_for_expiry(self.clock.now()):
            with self.store.write() as conn:
                if not self.store.transition(
                    conn, number, to=Status.EXPIRED, by=Role.HOUSEKEEPING, actor="bot"
                ):
                    continue
                record = self.store.get(number, conn)
                self.store.audit(conn, "bot", "request.expired", request=number, outcome="expired")
                self.store.announce(conn, number, record.channel)
                self.store.post(
                    conn,
                    record.number,
                    record.channel,
                    f"<@{record.requester}> {record.id} expired without "
                    "enough approvals; nothing was deleted.",
                )
            expired += 1
            self.finished(self.store.get(number))
        return expired

    def _after_decision(self, number: int) -> None:
        """Queue the audit trail of a request a decision (reject, cancel) just ended.

        The decision is committed: a failure here (a slow Slack lookup, a full disk) is logged
        and must not turn the decision's answer into "nothing was recorded".
        """
        try:
            self.finished(self.store.get(number))
        except Exception:
            log.exception("R-%s: the audit trail was not queued after the decision", number)

    # -- audit -----------------------------------------------------------------------------------

    def finished(self, record: RequestRecord) -> None:
        """Post a request's own audit trail into its thread once it has ended.

        With the work directory full, the trail waits: the runner's sweep of ended requests
        without a report makes it once there is room (the request's outcome stands). Not in a
        channel where personal data may not go (policy.may_post_personal_data): the trail holds
        the reason and the people; a note in the thread says where to get it.
        """
        try:
            audience = self.directory.channel(record.channel).audience
        except SlackLookupError:
            audience = None  # unknown: the rule counts it as unsafe
        where = may_post_personal_data(self.rules, audience, what="The audit trail")
        if not where:
            with self.store.write() as conn:
                self.store.post(
                    conn,
                    record.number,
                    record.channel,
                    f"{record.id}'s audit trail is not posted here. {where.reason} An approver "
                    f"can get it with `{self.command} audit --request {record.id}` in a private "
                    "channel.",
                    key=f"trail:{record.number}:{record.status}",
                )
            return
        path = self.work_dir / "audit" / f"{record.id}-audit-trail.jsonl"
        count = self._write_trail(record, path)
        if count is None:
            return
        # The chain's head, not a full verification: that is O(log size) on every request's
        # end; `audit verify` recomputes the whole chain on demand.
        seq, digest = self.store.audit_head()
        with self.store.write() as conn:
            self.store.enqueue_once(
                conn,
                kind="upload",
                channel=record.channel,
                payload={
                    "path": str(path),
                    "filename": path.name,
                    "title": f"{record.id} audit trail ({count} events)",
                    "comment": f"Audit trail of {record.id}: {count} events"
                    f"{_clock_note(record, self.clock.now().date())}. Audit log head "
                    f"#{seq} hash {digest[:16]}… (`{self.command} audit verify` checks the "
                    "whole chain).",
                },
                request=record.number,
                key=f"trail:{record.number}:{record.status}",
            )

    def _write_trail(self, record: RequestRecord, path: Path) -> int | None:
        """Write `record`'s audit events to `path`; return how many, or None when the work
        directory is full (logged once per request; the runner's sweep tries again)."""
        # Written aside and renamed: the runner's sweep may make the same report at once.
        partial = path.with_name(f"{path.name}.{threading.get_ident()}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("w", encoding="utf-8") as fp:
                count = audit.write_jsonl(self.store.audit_events(request_id=record.id), fp)
            partial.replace(path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            if not is_disk_full(exc):
                raise
            if record.id not in self._trails_waiting:
                full = WorkDirFull(self.work_dir, "It is posted once there is room.")
                log.warning("audit trail of %s not written yet: %s", record.id, full.user_message)
                self._trails_waiting.add(record.id)
            return None
        return count

    def audit_verify(self, user_id: str, channel_id: str) -> Reply:
        """Recompute the audit chain and report the result."""
        actor = self.actor(user_id)
        decision = may_read_audit(self.rules, actor, own_request=self.store.has_requests(user_id))
        if not decision:
            return self._refused(user_id, "audit", decision)
        verification = self.store.verify_audit()
        self.store.record(
            user_id,
            "audit.verified",
            outcome="ok" if verification.ok else "broken",
            details={
                "count": verification.count,
                "head": verification.head_hash,
                "first_bad_seq": verification.first_bad_seq,
            },
        )
        return Reply(verification.summary(), public=True)

    def audit_export(self, user_id: str, channel_id: str, command: commands.AuditExport) -> Reply:
        """Post the selected audit events as a file in the channel."""
        actor = self.actor(user_id)
        own: bool | None = None
        clock = ""
        if command.request_id is not None:
            record = self.store.get(command.request_id)
            own = record.requester == user_id
            clock = _clock_note(record, self.clock.now().date())
        decision = may_read_audit(self.rules, actor, own_request=own)
        if not decision:
            return self._refused(user_id, "audit", decision, request=command.request_id)
        refused = self._file_refused(
            user_id,
            channel_id,
            "audit",
            typed=f"audit{' --request ' + command.request_id if command.request_id else ''}",
            name="the audit file",
            what="The audit log (reasons, people, targets)",
            request=command.request_id,
        )
        if refused is not None:
            return refused
        stamp = iso(self.clock.now()).replace(":", "").replace(".", "")[:15]
        name = f"audit-{command.request_id or 'all'}-{stamp}.{command.format}"
        path = self.work_dir / "audit" / name
        selected = self.store.audit_events(request_id=command.request_id, since=command.since)
        write = audit.write_csv if command.format == "csv" else audit.write_jsonl
        count = self._write_file(path, lambda fp: write(selected, fp), again="audit")
        verification = self.store.verify_audit()
        self._share_file(
            user_id,
            channel_id,
            path,
            action="audit.exported",
            request=command.request_id,
            details={
                "events": count,
                "format": command.format,
                "since": str(command.since) if command.since else None,
                "file": name,
            },
            title=f"Audit log ({wording.count(count, 'event')})",
            comment=f"<@{user_id}> audit log: {wording.count(count, 'event')}{clock}. "
            f"{verification.summary()}",
        )
        return Reply(f"Posting {wording.count(count, 'audit event')} as `{name}`.")

    def _file_refused(
        self,
        user_id: str,
        channel_id: str,
        action: str,
        *,
        typed: str,
        name: str,
        what: str,
        request: str | None = None,
    ) -> Reply | None:
        """Return why a file with personal data (`what`, as `typed`) cannot be posted in this
        channel (refusals audited as `<action>.refused`), or None when it can."""
        channel = self._conversation(channel_id)
        here = in_a_channel(channel, rerun=f"{self.command} {typed}")
        if not here:
            return self._refused(user_id, action, here)
        member = bot_is_in(channel, to_post=name, then="Invite me first.")
        if not member:
            return Reply(member.reason)  # told, not audited: nothing was asked of the rules
        where = may_post_personal_data(self.rules, channel.audience, what=what)
        if not where:
            return self._refused(user_id, action, where, request=request)
        return None

    def _write_file(self, path: Path, write: Callable[[TextIO], R], *, again: str) -> R:
        """Write a file a command posts; a full work directory is a clear answer to the user."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8", newline="") as fp:
                return write(fp)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            path.unlink(missing_ok=True)
            raise WorkDirFull(
                self.work_dir,
                "Nothing was posted. Free space under BOT_WORK_DIR, then run "
                f"`{self.command} {again}` again.",
            ) from None

    def _share_file(
        self,
        user_id: str,
        channel_id: str,
        path: Path,
        *,
        action: str,
        details: Mapping[str, Any],
        title: str,
        comment: str,
        request: str | None = None,
    ) -> None:
        """Record `action` and queue the upload of `path` to the channel, in one transaction."""
        with self.store.write() as conn:
            self.store.audit(conn, user_id, action, request=request, details=dict(details))
            self.store.enqueue(
                conn,
                kind="upload",
                channel=channel_id,
                payload={
                    "path": str(path),
                    "filename": path.name,
                    "title": title,
                    "comment": comment,
                    "user": user_id,  # told by DM if the file cannot be posted here
                },
                request=None,
            )


def _clock_note(record: RequestRecord, today: date) -> str:
    """Return "; received ... · due ..." for a file's comment ("" when the clock is unknown)."""
    return "" if record.deadline is None else f"; {record.deadline.describe(today)}"


def _extended(
    approver: str, record: RequestRecord, was: Deadline, now: Deadline, reason: str
) -> str:
    """Return the thread's message about an extension, with the reminder Art. 12(3) asks for."""
    return (
        f"<@{approver}> extended the deadline of {record.id} by"
        f" {wording.count(now.months - was.months, 'month')}: due {now.due.isoformat()} (was"
        f" {was.due.isoformat()}; received {was.received.isoformat()}).\n"
        f"Reason: {reason}\n"
        f":warning: The person must be told of the extension, with these reasons, within the first"
        f" month: by {was.first_due.isoformat()} (Art. 12(3) GDPR)."
    )


def _role_of(user_id: str, record: RequestRecord) -> Role:
    """Return the part `user_id` plays in a request they act on (policy already allowed it)."""
    return Role.REQUESTER if user_id == record.requester else Role.APPROVER


def _targets(parsed: Mapping[str, Any]) -> list[str]:
    keys = ("project_id", "iteration_id", "tag_id")
    found = [str(parsed[k]) for k in keys if parsed.get(k)]
    for key in ("image_ids", "prediction_ids", "tag_ids"):
        found.extend(str(v) for v in parsed.get(key) or ())
    found.extend(str(v) for v in (parsed.get("selectors") or {}).get("project_ids") or ())
    return found


def _first_step(
    command: commands.Export | commands.Delete,
) -> tuple[RequestKind, Status, JobKind | None]:
    """Return a new request's kind, first status and first job (None: answered at once).

    Deleting the account or exported models is not the Training-Key's to do: those requests
    are answered with the manual steps.
    """
    if isinstance(command, commands.Export):
        return RequestKind.EXPORT, Status.QUEUED, JobKind.EXPORT
    if command.kind in {commands.DeleteKind.ACCOUNT, commands.DeleteKind.EXPORTS}:
        return RequestKind.MANUAL, Status.ANSWERED, None
    return RequestKind.DELETE, Status.PREVIEWING, JobKind.PREVIEW


def _submitted(rid: str, command: commands.Export | commands.Delete) -> str:
    """Return what the requester is told once request `rid` is stored."""
    if isinstance(command, commands.Export):
        return (
            f"{rid} queued: {command.describe()}. Progress and files will appear in "
            "the request's thread."
        )
    if command.kind == commands.DeleteKind.ACCOUNT:
        return f"{rid} recorded. {MANUAL_STEPS['account']}"
    if command.kind == commands.DeleteKind.EXPORTS:
        return f"{rid} recorded. {MANUAL_STEPS['exports']}"
    return (
        f"{rid} recorded: computing what the deletion will remove. The preview and the "
        "approval buttons will appear in the channel; a second, authorised person must "
        "approve."
    )


def _meta_of(record: RequestRecord) -> tuple[str | None, str | None]:
    meta = (record.command or {}).get("meta") or {}
    return meta.get("ticket"), meta.get("reason")


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _status_line(record: RequestRecord, now: datetime, *, short: bool = False) -> str:
    """Return one request's line; `short` clips the quoted command (a list shows 20 of them)."""
    ticket, _ = _meta_of(record)
    ticket_part = (
        f", ticket {_clip(ticket, STATUS_TICKET_CHARS) if short else ticket}" if ticket else ""
    )
    command = parser.slack_unescape(record.text)
    if short:
        command = _clip(command.replace("`", "'"), STATUS_COMMAND_CHARS)
    clock = ""
    if record.deadline is not None:
        deadline = record.deadline
        clock = (
            f", due {deadline.due.isoformat()} ({describe_left(deadline.due, now.date())})"
            if short and deadline.completed is None
            else f", {deadline.describe(now.date())}"
        )
    return (
        f"• {record.id} — {record.status}, {age(record.created_at, now)} old{clock}{ticket_part}:"
        f" `{command}`"
    )


def describe_status(
    record: RequestRecord,
    now: datetime,
    *,
    held: tuple[HeldDelivery, ...] | list[HeldDelivery] = (),
    command: str = "/cv",
) -> str:
    """Return a plain description of one request's state (and of its held deliveries)."""
    lines = [_status_line(record, now)]
    if record.progress and record.status in OPEN:
        p = record.progress
        total = f"/{p['total']}" if p.get("total") is not None else ""
        lines.append(f"Progress: {p.get('phase', '')} {p.get('done', 0)}{total}")
    if record.approvals:
        lines.append("Approved by " + wording.join_words(f"<@{a}>" for a in record.approvals))
    if record.expires_at and record.status == Status.PENDING:
        lines.append(f"Expires {iso(record.expires_at)[:16].replace('T', ' ')} UTC")
    if record.error:
        lines.append(f"Error: {record.error}")
    if held:
        lines.append(f"Held ({len(held)}): not posted, and the bot keeps them:")
        lines += [f"• {h.name}: `{h.error}`" for h in held[:10]]
        if len(held) > 10:
            lines.append(f"• and {len(held) - 10} more")
        lines.append(f"Once the cause is fixed: `{command} resend {record.id}`.")
    return "\n".join(lines)
