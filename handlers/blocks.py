"""Block Kit builders: pure functions from stored state to Slack message payloads.

Text that comes from users or from the Training API (reasons, tickets, names) goes into
`plain_text` objects, which Slack never parses for mentions, links or formatting; where it
must sit in mrkdwn it passes through `escape` first, so it cannot ping `@channel` or forge a
link.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bot import grammar
from bot.store import RequestRecord

Block = dict[str, Any]

STATUS_LABEL = {
    "queued": "Queued",
    "running": "Running",
    "previewing": "Computing the preview",
    "pending": "Waiting for approval",
    "approved": "Approved, starting",
    "done": "Done",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "rejected": "Rejected",
    "expired": "Expired",
    "answered": "Answered (manual steps)",
}
STATUS_EMOJI = {
    "done": ":white_check_mark:",
    "failed": ":x:",
    "cancelled": ":no_entry_sign:",
    "rejected": ":no_entry:",
    "expired": ":hourglass:",
    "pending": ":raised_hand:",
}


def escape(text: str) -> str:
    """Return `text` safe inside mrkdwn: &, < and > escaped as Slack requires."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_MENTION = re.compile(r"<@[UW][A-Z0-9]+>")


def bot_text(text: str) -> str:
    """Return text the bot composed, safe as mrkdwn: escaped, keeping only user mentions.

    The bot's own messages mention people as `<@U…>`; everything else in them (request
    descriptions, reasons, error messages quoting the Training API) is escaped, so it cannot
    ping `@channel`, forge a link or open a mention of a channel.
    """
    parts = _MENTION.split(text)
    mentions = _MENTION.findall(text)
    out = [escape(parts[0])]
    for mention, part in zip(mentions, parts[1:], strict=True):
        out.extend([mention, escape(part)])
    return "".join(out)


def plain(text: str, limit: int = 2900) -> dict[str, Any]:
    """Return a plain_text object (never parsed for mentions or links), truncated to fit."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text or " ", "emoji": False}


def mrkdwn(text: str) -> dict[str, Any]:
    """Return a mrkdwn text object; callers escape any untrusted part."""
    return {"type": "mrkdwn", "text": text[:2990]}


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def describe_command(record: RequestRecord) -> str:
    """Return the plain one-line description of a stored request's command."""
    data = dict(record.command)
    try:
        if record.kind == "export":
            return grammar.Export.from_dict(data).describe()
        return grammar.Delete.from_dict(data).describe()
    except (ValueError, KeyError, TypeError):
        return record.text


def _meta(record: RequestRecord) -> tuple[str | None, str | None]:
    meta = record.command.get("meta") or {}
    return meta.get("ticket"), meta.get("reason")


def announcement(record: RequestRecord, required_approvals: int) -> tuple[str, list[Block]]:
    """Return the fallback text and blocks of a request's announcement, for its current state."""
    label = STATUS_LABEL.get(record.status, record.status)
    if record.kind == "delete" and record.status == "running":
        label = "Deleting"
    emoji = STATUS_EMOJI.get(record.status, ":hourglass_flowing_sand:")
    what = describe_command(record)
    verb = {"export": "Export", "delete": "Deletion", "manual": "Deletion (manual)"}[record.kind]
    text = f"{record.id} {verb} requested by <@{record.requester}>: {escape(what)} ({label})"
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
    fields = [plain(f"Ticket: {ticket or '—'}"), plain(f"Reason: {reason or '—'}")]
    blocks.append({"type": "section", "block_id": "meta", "fields": fields})
    if record.preview:
        blocks.extend(preview_blocks(record.preview))
    if record.kind == "delete":
        blocks.extend(_decision_blocks(record, required_approvals))
    if record.progress and record.status in {"running", "approved", "queued"}:
        blocks.append({"type": "context", "elements": [plain(progress_text(record.progress))]})
    if record.error and record.status == "failed":
        blocks.append({"type": "section", "block_id": "error", "text": plain(record.error)})
    return text, blocks


def preview_blocks(preview: Mapping[str, Any]) -> list[Block]:
    """Return the blocks showing what a deletion will remove."""
    lines = [str(preview.get("summary", ""))]
    project = preview.get("project") or {}
    if project:
        lines.append(f"Project: {project.get('name', '')} ({project.get('id', '')})")
    if "workspace_images" in preview:
        lines.append(f"Workspace images removed: {preview['workspace_images']}")
    if preview.get("images_targeted") is not None:
        lines.append(
            f"Images to delete (workspace and every iteration): {preview['images_targeted']}"
        )
    for iteration in preview.get("iterations") or []:
        flags = []
        if iteration.get("removed"):
            flags.append("deleted")
        if iteration.get("published"):
            flags.append(f"published as {iteration.get('publish_name')}")
        suffix = f" [{', '.join(flags)}]" if flags else ""
        lines.append(
            f"{iteration.get('name', '')} ({iteration.get('id', '')}): "
            f"{iteration.get('images', 0)} images{suffix}"
        )
    tags = preview.get("tags") or []
    if tags:
        lines.append(
            "Tags: " + ", ".join(f"{t.get('name', '')} ({t.get('images', 0)})" for t in tags)
        )
    if preview.get("predictions"):
        lines.append(f"Stored predictions: {preview['predictions']}")
    missing = preview.get("images_not_found") or []
    if missing:
        lines.append(f"Not found (not targeted): {len(missing)} id(s)")
    blocks: list[Block] = [
        {"type": "section", "block_id": "preview", "text": plain("\n".join(lines))}
    ]
    unpublish = preview.get("unpublish") or []
    if unpublish:
        names = ", ".join(str(u.get("publish_name")) for u in unpublish)
        blocks.append(
            {
                "type": "section",
                "block_id": "unpublish",
                "text": plain(
                    f"Warning: these prediction endpoints will stop working, because their "
                    f"iterations must be unpublished first: {names}"
                ),
            }
        )
    return blocks


def _decision_blocks(record: RequestRecord, required: int) -> list[Block]:
    blocks: list[Block] = []
    approvals = ", ".join(f"<@{a}>" for a in record.approvals) or "none yet"
    context = [mrkdwn(f"Approvals: {approvals} ({len(record.approvals)} of {required} needed)")]
    if record.expires_at and record.status == "pending":
        context.append(mrkdwn(f"Expires {_utc(record.expires_at)}"))
    if record.status == "rejected" and record.decided_by:
        context.append(mrkdwn(f"Rejected by <@{record.decided_by}>"))
    if record.status == "cancelled" and record.decided_by:
        context.append(mrkdwn(f"Cancelled by <@{record.decided_by}>"))
    blocks.append({"type": "context", "elements": context})
    if record.status == "rejected" and record.decision_reason:
        blocks.append(
            {
                "type": "section",
                "block_id": "rejection",
                "text": plain(f"Rejection reason: {record.decision_reason}"),
            }
        )
    if record.status == "pending":
        blocks.append(approval_buttons(record.id))
    return blocks


def approval_buttons(request_id: str) -> Block:
    """Return the Approve / Reject / Cancel actions; each button carries only the request id."""
    return {
        "type": "actions",
        "block_id": "decision",
        "elements": [
            {
                "type": "button",
                "action_id": "request.approve",
                "text": plain("Approve"),
                "style": "primary",
                "value": request_id,
                "confirm": {
                    "title": plain("Approve this deletion?"),
                    "text": plain(
                        f"{request_id} will be deleted from Custom Vision. This cannot be undone."
                    ),
                    "confirm": plain("Approve"),
                    "deny": plain("Back"),
                    "style": "danger",
                },
            },
            {
                "type": "button",
                "action_id": "request.reject",
                "text": plain("Reject"),
                "style": "danger",
                "value": request_id,
            },
            {
                "type": "button",
                "action_id": "request.cancel",
                "text": plain("Cancel (requester)"),
                "value": request_id,
            },
        ],
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
        "private_metadata": f"{request_id}|{channel_id}",
        "title": plain("Reject request"),
        "submit": plain("Reject"),
        "close": plain("Back"),
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": plain(f"Why is {request_id} rejected?"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "max_length": 1000,
                },
            }
        ],
    }
