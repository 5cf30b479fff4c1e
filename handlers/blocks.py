"""Block Kit builders: pure functions from stored state to Slack message payloads.

Text that comes from users or from the Training API (reasons, tickets, names) goes into
`plain_text` objects, which Slack never parses for mentions, links or formatting; where it
must sit in mrkdwn it passes through `bot.parser.slack_escape` first, so it cannot ping
`@channel` or forge a link.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot import parser
from bot.lifecycle import RequestKind, RequestRecord, Status
from bot.parser import slack_escape
from bot.policy import whole_preview_posted
from bot.wording import count, join_words
from handlers import limits

Block = dict[str, Any]

STATUS_EMOJI = {
    Status.DONE: ":white_check_mark:",
    Status.FAILED: ":x:",
    Status.CANCELLED: ":no_entry_sign:",
    Status.REJECTED: ":no_entry:",
    Status.EXPIRED: ":hourglass:",
    Status.PENDING: ":raised_hand:",
}


_MENTION = re.compile(r"<@[UW][A-Z0-9]+>")


def bot_text(text: str) -> str:
    """Return text the bot composed, safe as mrkdwn: escaped, keeping only user mentions.

    The bot's own messages mention people as `<@U…>`; everything else in them (request
    descriptions, reasons, error messages quoting the Training API) is escaped, so it cannot
    ping `@channel`, forge a link or open a mention of a channel.
    """
    parts = _MENTION.split(text)
    mentions = _MENTION.findall(text)
    out = [slack_escape(parts[0])]
    for mention, part in zip(mentions, parts[1:], strict=True):
        out.extend([mention, slack_escape(part)])
    return "".join(out)


def message_text(text: str) -> str:
    """Return text the bot composed as a message Slack takes whole: safe mrkdwn, ≤ 4,000 units.

    Whole lines are kept; what does not fit is named, never dropped silently.
    """
    return limits.fit_lines(
        bot_text(text).split("\n"),
        limits.MAX_REPLY_TEXT,
        lambda n: f"… ({count(n, 'more line')} did not fit in one Slack message)",
    )


def plain(text: str, limit: int = limits.MAX_SECTION_TEXT) -> dict[str, Any]:
    """Return a plain_text object (never parsed for mentions or links), cut to `limit` units."""
    return {"type": "plain_text", "text": limits.cut(text, limit) or " ", "emoji": False}


def mrkdwn(text: str, limit: int = limits.MAX_SECTION_TEXT) -> dict[str, Any]:
    """Return a mrkdwn text object cut to `limit` units; callers escape any untrusted part."""
    return {"type": "mrkdwn", "text": limits.cut(text, limit) or " "}


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def describe_command(record: RequestRecord) -> str:
    """Return the plain one-line description of a stored request's command."""
    data = dict(record.command)
    try:
        if record.kind == RequestKind.EXPORT:
            return parser.load_export(data).describe()
        return parser.load_delete(data).describe()
    except (ValueError, KeyError, TypeError):
        return record.text


def _meta(record: RequestRecord) -> tuple[str | None, str | None]:
    meta = record.command.get("meta") or {}
    return meta.get("ticket"), meta.get("reason")


@dataclass(frozen=True)
class PreviewFile:
    """The full preview of a deletion that does not fit its message, posted as a thread file.

    `status` is its delivery's: None (not queued yet), "pending", "sent", or anything else
    (Slack refused it; the delivery is failed or held). Only "sent" lets Approve appear.
    """

    name: str
    status: str | None


def approvable(preview_file: PreviewFile | None) -> bool:
    """Return whether the Approve button shows beside a preview with this file (None: the
    preview fits its message); the rule is policy.whole_preview_posted."""
    return whole_preview_posted(
        file_needed=preview_file is not None,
        file_status=preview_file.status if preview_file is not None else None,
    )


def announcement(
    record: RequestRecord, required_approvals: int, preview_file: PreviewFile | None = None
) -> tuple[str, list[Block]]:
    """Return the fallback text and blocks of a request's announcement, for its current state.

    `preview_file` is given when the deletion preview does not fit the message; the Approve
    button stays away until that file is in the thread.
    """
    label = record.status.label
    if record.kind == RequestKind.DELETE and record.status == Status.RUNNING:
        label = "Deleting"
    emoji = STATUS_EMOJI.get(record.status, ":hourglass_flowing_sand:")
    what = describe_command(record)
    verb = {
        RequestKind.EXPORT: "Export",
        RequestKind.DELETE: "Deletion",
        RequestKind.MANUAL: "Deletion (manual)",
    }[record.kind]
    text = limits.cut(
        f"{record.id} {verb} requested by <@{record.requester}>: {slack_escape(what)} ({label})",
        limits.MAX_REPLY_TEXT,
    )
    blocks: list[Block] = [
        {
            "type": "section",
            "block_id": "request",
            "text": mrkdwn(
                f"{emoji} *{record.id}* · {verb} requested by <@{record.requester}> · *{label}*"
            ),
        },
        {"type": "section", "block_id": "what", "text": plain(what)},
    ]
    ticket, reason = _meta(record)
    fields = [
        plain(f"Ticket: {ticket or '—'}", limits.MAX_FIELD_TEXT),
        plain(f"Reason: {reason or '—'}", limits.MAX_FIELD_TEXT),
    ]
    blocks.append({"type": "section", "block_id": "meta", "fields": fields})
    if record.deadline is not None:
        # Dates only: a message is not edited every day, so "in 3 days" would go stale.
        clock = plain(f":calendar: {record.deadline.describe()}", limits.MAX_CONTEXT_TEXT)
        blocks.append({"type": "context", "block_id": "deadline", "elements": [clock]})
    if record.preview:
        blocks.extend(preview_blocks(record.preview, preview_file))
    if record.kind == RequestKind.DELETE:
        blocks.extend(
            _decision_blocks(record, required_approvals, approvable=approvable(preview_file))
        )
    if record.progress and record.status in {Status.RUNNING, Status.APPROVED, Status.QUEUED}:
        progress = plain(progress_text(record.progress), limits.MAX_CONTEXT_TEXT)
        blocks.append({"type": "context", "elements": [progress]})
    if record.error and record.status == Status.FAILED:
        blocks.append({"type": "section", "block_id": "error", "text": plain(record.error)})
    return text, limits.within_budget(blocks, limits.MAX_BLOCKS_TEXT)


def _iteration_line(iteration: Mapping[str, Any]) -> str:
    flags = []
    if iteration.get("removed"):
        flags.append("deleted")
    if iteration.get("published"):
        flags.append(f"published as {iteration.get('publish_name')}")
    suffix = f" [{', '.join(flags)}]" if flags else ""
    return (
        f"{iteration.get('name', '')} ({iteration.get('id', '')}): "
        f"{iteration.get('images', 0)} images{suffix}"
    )


def _preview_head(preview: Mapping[str, Any]) -> list[str]:
    lines = []
    project = preview.get("project") or {}
    if project:
        lines.append(f"Project: {project.get('name', '')} ({project.get('id', '')})")
    if "workspace_images" in preview:
        lines.append(f"Workspace images removed: {preview['workspace_images']}")
    if preview.get("images_targeted") is not None:
        lines.append(
            f"Images to delete (workspace and every iteration): {preview['images_targeted']}"
        )
    return lines


def _searched_line(preview: Mapping[str, Any]) -> list[str]:
    """Return the scope a subject deletion searched, as one line (none for other kinds)."""
    searched = preview.get("searched")
    if not isinstance(searched, Mapping):
        return []
    resources = join_words(str(r) for r in searched.get("resources") or [])
    return [
        f"Searched: {count(int(searched.get('projects') or 0), 'project')} and"
        f" {count(int(searched.get('iterations') or 0), 'trained iteration')} on {resources}"
    ]


def _subject_lines(preview: Mapping[str, Any]) -> list[str]:
    """Return a subject deletion's lines per project (its resource named when several were
    searched), each followed by the snapshots holding the person's images."""
    searched = preview.get("searched") or {}
    named = len(searched.get("resources") or []) > 1
    lines = []
    for project in preview.get("projects") or []:
        info = project.get("project") or {}
        where = f" on {project.get('resource')}" if named else ""
        lines.append(
            f"Project {info.get('name', '')} ({info.get('id', '')}){where}:"
            f" {count(int(project.get('images_targeted') or 0), 'image')}"
            f" ({project.get('workspace_images', 0)} in the workspace)"
        )
        lines += [f"  {_iteration_line(it)}" for it in project.get("iterations") or []]
    return lines


def _all_iterations(preview: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Return the iterations a preview names, those of each project of a subject too."""
    projects = preview.get("projects") or []
    nested = [it for project in projects for it in project.get("iterations") or []]
    return [*(preview.get("iterations") or []), *nested]


def _preview_warnings(preview: Mapping[str, Any]) -> list[str]:
    """Return the lines an approver must never miss: predictions and ids not found."""
    lines = []
    unknown = preview.get("unknown_projects") or []
    if unknown:
        lines.append(
            f"Not found on any resource searched (not searched): {count(len(unknown), 'project')}"
        )
    if preview.get("predictions"):
        lines.append(f"Stored predictions: {preview['predictions']}")
    missing = preview.get("images_not_found") or []
    if missing:
        lines.append(f"Not found (not targeted): {count(len(missing), 'id')}")
    missing_predictions = preview.get("predictions_not_found") or []
    if missing_predictions:
        lines.append(f"Prediction ids not found (not targeted): {len(missing_predictions)}")
    return lines


def preview_lines(preview: Mapping[str, Any]) -> list[str]:
    """Return every line of a deletion preview: each iteration, each tag, every warning."""
    lines = [str(preview.get("summary", "")), *_preview_head(preview), *_searched_line(preview)]
    lines += [_iteration_line(iteration) for iteration in preview.get("iterations") or []]
    lines += _subject_lines(preview)
    tags = preview.get("tags") or []
    if tags:
        lines.append(
            "Tags: " + ", ".join(f"{t.get('name', '')} ({t.get('images', 0)})" for t in tags)
        )
    return lines + _preview_warnings(preview)


def _unpublish_warning(preview: Mapping[str, Any]) -> str | None:
    unpublish = preview.get("unpublish") or []
    if not unpublish:
        return None
    names = join_words(str(u.get("publish_name")) for u in unpublish)
    return (
        "Warning: these prediction endpoints will stop working, because their iterations must "
        f"be unpublished first: {names}"
    )


def preview_fits(preview: Mapping[str, Any]) -> bool:
    """Return True when the whole preview fits its message (else it goes to a thread file)."""
    warning = _unpublish_warning(preview) or ""
    return (
        limits.units("\n".join(preview_lines(preview))) <= limits.MAX_SECTION_TEXT
        and limits.units(warning) <= limits.MAX_SECTION_TEXT
    )


def preview_file_name(record: RequestRecord) -> str:
    """Return the name of the thread file holding a request's full preview."""
    return f"{record.id}-preview.txt"


def preview_file_text(record: RequestRecord) -> str:
    """Return the full preview of a deletion, as the plain text file posted to its thread."""
    preview = record.preview or {}
    lines = [f"{record.id}: {describe_command(record)}", "", *preview_lines(preview)]
    warning = _unpublish_warning(preview)
    if warning:
        lines += ["", warning]
    if preview.get("projects") is None:  # a subject's lines above list them per project
        lines += ["", "Iterations:"] + [
            f"  {_iteration_line(i)}" for i in preview.get("iterations") or []
        ]
        lines += ["", "Tags (images in the workspace):"] + [
            f"  {t.get('name', '')} ({t.get('id', '')}): {t.get('images', 0)}"
            for t in preview.get("tags") or []
        ]
    return "\n".join(lines) + "\n"


def _file_note(preview_file: PreviewFile) -> str:
    name = preview_file.name
    if preview_file.status == "sent":
        return f"The full preview (every iteration and tag) is attached to this thread: {name}"
    if preview_file.status in (None, "pending"):
        return (
            f"The full preview is too long for this message; it is being attached to this "
            f"thread as {name}. The Approve button appears once it is there."
        )
    return (
        f"The full preview is too long for this message and could not be attached to this "
        f"thread ({name}), so this deletion cannot be approved yet. The bot's log names the "
        "cause; once it is fixed and the file is posted, the Approve button appears."
    )


def preview_blocks(
    preview: Mapping[str, Any], preview_file: PreviewFile | None = None
) -> list[Block]:
    """Return the blocks showing what a deletion will remove.

    When the whole preview does not fit (`preview_file` given), the message keeps the summary,
    the totals and every warning, and says where the full list is.
    """
    if preview_file is None and preview_fits(preview):
        lines = preview_lines(preview)
    else:
        iterations = _all_iterations(preview)
        published = [str(i.get("publish_name")) for i in iterations if i.get("published")]
        shown = join_words(published)
        projects = preview.get("projects")
        lines = [
            limits.cut(str(preview.get("summary", "")), 1500),
            *_preview_head(preview),
            *_searched_line(preview),
            *([] if projects is None else [f"Projects: {len(projects)}"]),
            f"Iterations: {len(iterations)}"
            + (f" ({len(published)} published: {limits.cut(shown, 300)})" if published else ""),
            *([f"Tags: {len(preview.get('tags') or [])}"] if projects is None else []),
            *_preview_warnings(preview),
        ]
        if preview_file is not None:
            lines.append(_file_note(preview_file))
    text = limits.fit_lines(
        lines, limits.MAX_SECTION_TEXT, lambda n: f"… {count(n, 'more line')} in the file"
    )
    blocks: list[Block] = [{"type": "section", "block_id": "preview", "text": plain(text)}]
    warning = _unpublish_warning(preview)
    if warning:
        warning = limits.cut(warning, limits.MAX_SECTION_TEXT - 60, "… (every name is in the file)")
        blocks.append({"type": "section", "block_id": "unpublish", "text": plain(warning)})
    return blocks


def _decision_blocks(record: RequestRecord, required: int, *, approvable: bool) -> list[Block]:
    blocks: list[Block] = []
    approvals = join_words(f"<@{a}>" for a in record.approvals) or "none yet"
    context = [mrkdwn(f"Approvals: {approvals} ({len(record.approvals)} of {required} needed)")]
    if record.expires_at and record.status == Status.PENDING:
        context.append(mrkdwn(f"Expires {_utc(record.expires_at)}"))
    if record.status == Status.REJECTED and record.decided_by:
        context.append(mrkdwn(f"Rejected by <@{record.decided_by}>"))
    if record.status == Status.CANCELLED and record.decided_by:
        context.append(mrkdwn(f"Cancelled by <@{record.decided_by}>"))
    blocks.append({"type": "context", "elements": context})
    if record.status == Status.REJECTED and record.decision_reason:
        blocks.append(
            {
                "type": "section",
                "block_id": "rejection",
                "text": plain(f"Rejection reason: {record.decision_reason}"),
            }
        )
    if record.status == Status.PENDING:
        blocks.append(approval_buttons(record.id, approve=approvable))
    return blocks


def approval_buttons(request_id: str, *, approve: bool = True) -> Block:
    """Return the Approve / Reject / Cancel actions; each button carries only the request id.

    Without `approve`, only Reject and Cancel: the approver has not got all it needs to decide.
    """
    value = limits.cut(request_id, limits.MAX_BUTTON_VALUE)
    approve_button = {
        "type": "button",
        "action_id": "request.approve",
        "text": plain("Approve", limits.MAX_BUTTON_TEXT),
        "style": "primary",
        "value": value,
        "confirm": {
            "title": plain("Approve this deletion?", limits.MAX_CONFIRM_TITLE),
            "text": plain(
                f"{request_id} will be deleted from Custom Vision. This cannot be undone.",
                limits.MAX_CONFIRM_TEXT,
            ),
            "confirm": plain("Approve", limits.MAX_CONFIRM_BUTTON),
            "deny": plain("Back", limits.MAX_CONFIRM_BUTTON),
            "style": "danger",
        },
    }
    others = [
        {
            "type": "button",
            "action_id": "request.reject",
            "text": plain("Reject", limits.MAX_BUTTON_TEXT),
            "style": "danger",
            "value": value,
        },
        {
            "type": "button",
            "action_id": "request.cancel",
            "text": plain("Cancel (requester)", limits.MAX_BUTTON_TEXT),
            "value": value,
        },
    ]
    return {
        "type": "actions",
        "block_id": "decision",
        "elements": [approve_button, *others] if approve else others,
    }


def progress_text(progress: Mapping[str, Any]) -> str:
    """Return a one-line progress bar: `Downloading images ▓▓▓▓░░░░░░ 412/1000 (41%)`."""
    done = int(progress.get("done") or 0)
    total = progress.get("total")
    phase = str(progress.get("phase") or "Working")
    if not total:
        return f"{phase}: {done}"
    total = int(total)
    fraction = min(1.0, done / total) if total else 1.0
    filled = round(fraction * 20)
    return f"{phase} {'▓' * filled}{'░' * (20 - filled)} {done}/{total} ({fraction:.0%})"


def reject_modal(request_id: str, channel_id: str) -> dict[str, Any]:
    """Return the modal that asks for a rejection reason."""
    return {
        "type": "modal",
        "callback_id": "request.reject_reason",
        "private_metadata": f"{request_id}|{channel_id}",  # a listener caps the id at 40
        "title": plain("Reject request", limits.MAX_MODAL_TITLE),
        "submit": plain("Reject", limits.MAX_MODAL_TITLE),
        "close": plain("Back", limits.MAX_MODAL_TITLE),
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": plain(f"Why is {request_id} rejected?", limits.MAX_INPUT_LABEL),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "max_length": 1000,
                },
            }
        ],
    }
