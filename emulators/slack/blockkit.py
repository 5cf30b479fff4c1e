"""Block Kit as Slack validates it: the block and element rules and the length limits a bot
can plausibly break, with Slack's own error messages.

Pure functions over JSON values: `block_problems` (message blocks), `view_problems` (a modal
for views.open) and `home_view_problems` (an App Home tab for views.publish) return Slack-style
`[ERROR] ... [json-pointer:...]` lines, empty when valid; `units` and `blocks_text_units` count
lengths as Slack does; `with_block_ids` returns blocks as Slack stores them. The Web API
(webapi.py) turns problems into `invalid_blocks`, `invalid_arguments`, `msg_too_long` and
`msg_blocks_too_long`.

Evidence: the limits are from Slack's Block Kit reference (blocks, block elements, composition
objects, views); where Slack documents none, the comment next to the limit says "inferred".
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from emulators.slack.records import JsonObject

__all__ = [
    "MAX_BLOCKS_TEXT",
    "MAX_HOME_BLOCKS",
    "MAX_MESSAGE_BLOCKS",
    "MAX_MODAL_BLOCKS",
    "MAX_TEXT",
    "block_problems",
    "blocks_text_units",
    "home_view_problems",
    "units",
    "view_problems",
    "with_block_ids",
]

MAX_TEXT = 40_000
MAX_BLOCKS_TEXT = 12_000  # msg_blocks_too_long, "about 12,000" (see "Lengths as Slack counts")
MAX_MESSAGE_BLOCKS = 50
MAX_MODAL_BLOCKS = 100
# "Home tabs ... up to 100 blocks" (Block Kit reference, "Surfaces: App Home"; views.publish).
MAX_HOME_BLOCKS = 100

_BLOCK_TYPES = frozenset(
    {
        "actions",
        "context",
        "divider",
        "file",
        "header",
        "image",
        "input",
        "markdown",
        "rich_text",
        "section",
        "table",
        "video",
    }
)


def _check_text_object(
    obj: Any, where: str, problems: list[str], *, limit: int, plain_only: bool = False
) -> None:
    if not isinstance(obj, dict):
        problems.append(f"[ERROR] must be an object [json-pointer:{where}]")
        return
    kinds = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if obj.get("type") not in kinds:
        problems.append(f"[ERROR] must be one of {', '.join(kinds)} [json-pointer:{where}/type]")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        problems.append(f"[ERROR] must be more than 0 characters [json-pointer:{where}/text]")
    elif units(text) > limit:
        problems.append(
            f"[ERROR] must be less than {limit + 1} characters [json-pointer:{where}/text]"
        )


def _check_element(obj: Any, where: str, problems: list[str]) -> None:
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        problems.append(f"[ERROR] missing required field: type [json-pointer:{where}]")
        return
    action_id = obj.get("action_id")
    if action_id is not None and (not isinstance(action_id, str) or len(action_id) > 255):
        problems.append(
            f"[ERROR] must be less than 256 characters [json-pointer:{where}/action_id]"
        )
    if obj["type"] == "button":
        _check_text_object(obj.get("text"), f"{where}/text", problems, limit=75, plain_only=True)
        value = obj.get("value")
        if value is not None and (not isinstance(value, str) or units(value) > 2000):
            problems.append(
                f"[ERROR] must be less than 2001 characters [json-pointer:{where}/value]"
            )
        style = obj.get("style")
        if style is not None and style not in ("primary", "danger"):
            problems.append(f"[ERROR] must be one of primary, danger [json-pointer:{where}/style]")
        url = obj.get("url")  # a link button: "Maximum length ... is 3000 characters"
        if url is not None and (not isinstance(url, str) or not url or units(url) > 3000):
            problems.append(f"[ERROR] must be less than 3001 characters [json-pointer:{where}/url]")
    _check_limits_of_element(obj, where, problems)


def block_problems(blocks: Any, *, limit: int) -> list[str]:
    """Return Slack-style messages for each Block Kit rule `blocks` breaks (empty: valid)."""
    problems: list[str] = []
    if len(blocks) > limit:
        problems.append(f"[ERROR] no more than {limit} items allowed [json-pointer:/blocks]")
    block_ids: set[str] = set()
    for index, block in enumerate(blocks):
        where = f"/blocks/{index}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(f"[ERROR] missing required field: type [json-pointer:{where}]")
            continue
        kind = block["type"]
        if kind not in _BLOCK_TYPES:
            problems.append(f"[ERROR] unsupported type: {kind} [json-pointer:{where}/type]")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or not block_id or len(block_id) > 255:
                problems.append(f"[ERROR] invalid block_id [json-pointer:{where}/block_id]")
            elif block_id in block_ids:
                problems.append(
                    f"[ERROR] duplicate block_id: {block_id} [json-pointer:{where}/block_id]"
                )
            else:
                block_ids.add(block_id)
        if kind == "section":
            fields = block.get("fields")
            if block.get("text") is None and not fields:
                problems.append(f"[ERROR] must provide text or fields [json-pointer:{where}]")
            if block.get("text") is not None:
                _check_text_object(block["text"], f"{where}/text", problems, limit=3000)
            if fields is not None:
                if not isinstance(fields, list) or len(fields) > 10:
                    problems.append(
                        f"[ERROR] no more than 10 items allowed [json-pointer:{where}/fields]"
                    )
                else:
                    for n, item in enumerate(fields):
                        _check_text_object(item, f"{where}/fields/{n}", problems, limit=2000)
            if block.get("accessory") is not None:
                _check_element(block["accessory"], f"{where}/accessory", problems)
        elif kind == "header":
            _check_text_object(
                block.get("text"), f"{where}/text", problems, limit=150, plain_only=True
            )
        elif kind in ("actions", "context"):
            most = 25 if kind == "actions" else 10
            elements = block.get("elements")
            if not isinstance(elements, list) or not elements or len(elements) > most:
                problems.append(
                    f"[ERROR] must have 1 to {most} items [json-pointer:{where}/elements]"
                )
                continue
            action_ids: set[str] = set()
            for n, element in enumerate(elements):
                spot = f"{where}/elements/{n}"
                if kind == "context" and isinstance(element, dict):
                    if element.get("type") in ("plain_text", "mrkdwn"):
                        _check_text_object(element, spot, problems, limit=3000)
                    elif element.get("type") != "image":
                        problems.append(f"[ERROR] must be text or image [json-pointer:{spot}]")
                    continue
                _check_element(element, spot, problems)
                action_id = element.get("action_id") if isinstance(element, dict) else None
                if isinstance(action_id, str):
                    if action_id in action_ids:
                        problems.append(
                            f"[ERROR] duplicate action_id: {action_id} "
                            f"[json-pointer:{spot}/action_id]"
                        )
                    action_ids.add(action_id)
        elif kind == "input":
            _check_text_object(
                block.get("label"), f"{where}/label", problems, limit=2000, plain_only=True
            )
            if block.get("hint") is not None:
                _check_text_object(
                    block["hint"], f"{where}/hint", problems, limit=2000, plain_only=True
                )
            if block.get("element") is None:
                problems.append(f"[ERROR] missing required field: element [json-pointer:{where}]")
            else:
                _check_element(block["element"], f"{where}/element", problems)
    return problems


# ---------------------------------------------------------------------------------------------
# Lengths as Slack counts them (issue 13, item 3)
#
# Slack counts every length in UTF-16 code units: an emoji outside the Basic Multilingual Plane
# counts twice (inferred from JavaScript string lengths, which Slack's clients and Block Kit
# Builder use, and consistent with NOTES-slack.md). Limits, from Slack's Block Kit reference:
# confirmation dialog title 100, text 300, confirm/deny 30 (plain_text, except text); a
# plain_text_input's placeholder 150, initial_value and max_length at most 3,000; an input's
# hint 2,000. The total text of a message's blocks is refused as `msg_blocks_too_long` above
# about 12,000 characters (undocumented; bolt-js issues 2509 and 2867 saw it from 11,341 to
# 13,297 measured characters, so MAX_BLOCKS_TEXT is a setting).


def units(text: str) -> int:
    """Return the length of `text` in UTF-16 code units, as Slack counts it."""
    return len(text.encode("utf-16-le")) // 2


def blocks_text_units(value: Any) -> int:
    """Return the total of every `text` string in blocks (what msg_blocks_too_long measures)."""
    if isinstance(value, dict):
        return sum(
            units(item) if key == "text" and isinstance(item, str) else blocks_text_units(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return sum(blocks_text_units(item) for item in value)
    return 0


def _check_limits_of_element(obj: JsonObject, where: str, problems: list[str]) -> None:
    """Add the confirmation dialog's and the text input's length problems of an element."""
    confirm = obj.get("confirm")
    if confirm is not None:
        spot = f"{where}/confirm"
        if not isinstance(confirm, dict):
            problems.append(f"[ERROR] must be an object [json-pointer:{spot}]")
        else:
            for key, limit in (("title", 100), ("confirm", 30), ("deny", 30)):
                _check_text_object(
                    confirm.get(key), f"{spot}/{key}", problems, limit=limit, plain_only=True
                )
            _check_text_object(confirm.get("text"), f"{spot}/text", problems, limit=300)
            style = confirm.get("style")
            if style is not None and style not in ("primary", "danger"):
                problems.append(
                    f"[ERROR] must be one of primary, danger [json-pointer:{spot}/style]"
                )
    if obj.get("type") == "plain_text_input":
        if obj.get("placeholder") is not None:
            _check_text_object(
                obj["placeholder"], f"{where}/placeholder", problems, limit=150, plain_only=True
            )
        initial = obj.get("initial_value")
        if initial is not None and (not isinstance(initial, str) or units(initial) > 3000):
            problems.append(
                f"[ERROR] must be less than 3001 characters [json-pointer:{where}/initial_value]"
            )
        for key, low in (("max_length", 1), ("min_length", 0)):
            bound = obj.get(key)
            if bound is not None and (not isinstance(bound, int) or not low <= bound <= 3000):
                problems.append(
                    f"[ERROR] must be between {low} and 3000 [json-pointer:{where}/{key}]"
                )


def with_block_ids(blocks: list[JsonObject], seed: str) -> list[JsonObject]:
    """Return `blocks` as Slack stores them: every block gets a block_id (Slack makes one up)."""
    stored = copy.deepcopy(blocks)
    for index, block in enumerate(stored):
        if "block_id" not in block:
            digest = hashlib.sha1(f"{seed}:{index}".encode(), usedforsecurity=False)
            block["block_id"] = digest.hexdigest()[:5]
    return stored


def view_problems(view: JsonObject) -> list[str]:
    """Return Slack-style messages for what views.open refuses in a modal (empty: valid)."""
    problems: list[str] = []
    if view.get("type") != "modal":
        problems.append("[ERROR] must be modal [json-pointer:/view/type]")
    title = view.get("title")
    _check_text_object(title, "/view/title", problems, limit=24, plain_only=True)
    for key, limit in (("submit", 24), ("close", 24)):
        if view.get(key) is not None:
            _check_text_object(view[key], f"/view/{key}", problems, limit=limit, plain_only=True)
    blocks = _view_blocks(view, MAX_MODAL_BLOCKS, problems)
    has_input = any(isinstance(b, dict) and b.get("type") == "input" for b in blocks)
    if has_input and view.get("submit") is None:
        problems.append("[ERROR] submit is required with input blocks [json-pointer:/view]")
    return problems + _view_field_problems(view)


def _view_blocks(view: JsonObject, limit: int, problems: list[str]) -> list[Any]:
    """Add the problems of a view's blocks (at most `limit`) to `problems`; return them."""
    blocks = view.get("blocks")
    if not isinstance(blocks, list):
        problems.append("[ERROR] missing required field: blocks [json-pointer:/view/blocks]")
        return []
    problems.extend(
        p.replace("[json-pointer:/blocks", "[json-pointer:/view/blocks")
        for p in block_problems(blocks, limit=limit)
    )
    return blocks


def _view_field_problems(view: JsonObject) -> list[str]:
    """Return the problems of a view's private_metadata, callback_id and external_id."""
    problems = []
    if units(str(view.get("private_metadata") or "")) > 3000:
        problems.append(
            "[ERROR] must be less than 3001 characters [json-pointer:/view/private_metadata]"
        )
    for key in ("callback_id", "external_id"):
        if len(str(view.get(key) or "")) > 255:
            problems.append(f"[ERROR] must be less than 256 characters [json-pointer:/view/{key}]")
    return problems


def home_view_problems(view: JsonObject, *, max_text: int | None = MAX_BLOCKS_TEXT) -> list[str]:
    """Return Slack-style messages for what views.publish refuses in a Home tab (empty: valid).

    A home view is `type: home` (views.publish reference), has at most MAX_HOME_BLOCKS blocks,
    and the same block and text limits as messages and modals. `max_text`: the total of its
    block text; Slack documents no such total for views (only msg_blocks_too_long for
    messages), so whether one applies is unknown: the strict variant (the messages' total) is
    the default, None the lenient one (inferred either way).
    """
    problems: list[str] = []
    if view.get("type") != "home":
        problems.append("[ERROR] must be home [json-pointer:/view/type]")
    blocks = _view_blocks(view, MAX_HOME_BLOCKS, problems)
    if max_text is not None and blocks_text_units(blocks) > max_text:
        problems.append(
            f"[ERROR] the text of the view's blocks must be less than {max_text + 1}"
            " characters in all [json-pointer:/view/blocks]"
        )
    return problems + _view_field_problems(view)
