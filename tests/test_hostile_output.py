"""Output safety, end to end: untrusted text never becomes Slack markup or a path.

Text from users (reasons, tickets) and from the Training API (project, tag, iteration and
publish names, export platforms, error messages) reaches Slack messages, files and packages.
The Custom Vision emulator's data builders give a project, its tags, publish name and exports
hostile names; `RewritingProxy` (tests/test_malformed_api.py) renames its iterations on the way
to the bot, since the emulator names those itself. Then:

- every string Slack would read as mrkdwn (message text, mrkdwn blocks, ephemeral answers,
  file comments) holds no `<...>` markup except the bot's own `<@U...>` mentions, so nothing
  pings `@channel`/`@here`, links or mentions a channel; untrusted text sits in plain_text;
- free text survives any characters, exactly, from the slash command to the stored request, the
  announcement, the package's README.txt and manifest.json (UTF-8), the audit log and its export;
- names inside packages come from ids and safe names only (no `../`, no backslash, no NUL).
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from bot import audit
from bot.package import check_arcname
from emulators.customvision import Seed
from emulators.stack import APPROVER, CHANNEL, REQUESTER, Stack
from tests.test_malformed_api import RewritingProxy, edited, fixed, proxied_stack

SEED = Seed(projects=1, iterations=1, tags=2, images=10, predictions=2, image_bytes=128)

HOSTILE = (
    "<!channel> <!here|here> <@U0BOB> <#C0GENERAL|general> <http://evil.example|click here> "
    "<mailto:x@evil.example> *bold* _it_ ~strike~ `code` ```block``` > quote &amp; &lt;b&gt; "
    "\u202egnp.exe \U0001f600 \u05e9\u05dc\u05d5\u05dd ../../x"
)
TAG_NAMES = [
    "../../x",
    "..",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "a\x00b",
    "<!here>",
    "\u540d\u524d \U0001f642",
    HOSTILE,
    "CON",
    " ",
]
PUBLISH_NAME = "<!channel>-prod ../../published"
ITERATION_NAME = "<!everyone> ../../iteration \u202eexe"
# Only listed, not downloaded: the emulator serves export blobs only for platform and flavor
# names of letters and digits (see the report).
PLATFORM, FLAVOR = "../../evil<!channel>", "..\\..\\flavor"
# Free text as the user means it: quotes, markup, entities, emoji, right-to-left text, tabs.
REASON = (
    'Art. 17 "erasure" \u2014 <!channel> <http://evil.example|click> *now* `x` &amp; '
    "\U0001f600 \u05e9\u05dc\u05d5\u05dd \u202egnp.exe \\ it's done"
)
TICKET = "DSR-1 <!here> & caf\u00e9 \u00abquoted\u00bb"
DOUBLE = '"\u201c\u201d\u201e\u201f'
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
BOT_MENTION = re.compile(r"<@[UW][A-Z0-9]+>")


def typed(text: str) -> str:
    """`text` as one double-quoted token, as Slack sends it (&, < and > escaped)."""
    escaped = "".join("\\" + c if c in DOUBLE or c == "\\" else c for c in text)
    quoted = '"' + escaped + '"'
    return quoted.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RewritingProxy]:
    with proxied_stack(tmp_path_factory.mktemp("output"), SEED, verify_timeout=2.0) as running:

        def rename(iteration: dict[str, Any]) -> dict[str, Any]:
            return {**iteration, "name": ITERATION_NAME}

        running.rules["GetIterations"] = edited(lambda found: [rename(i) for i in found])
        running.rules["GetIteration"] = edited(rename)
        yield running


@pytest.fixture(scope="module")
def stack(proxy: RewritingProxy) -> Stack:
    assert proxy.stack is not None
    return proxy.stack


@pytest.fixture(scope="module")
def hostile(stack: Stack) -> dict[str, Any]:
    """A project whose every name is hostile, with tagged images and a published iteration."""
    data = stack.cv.data
    project = data.add_project(HOSTILE, description=HOSTILE)
    tags = [data.add_tag(project, name, description=HOSTILE) for name in TAG_NAMES]
    images = data.add_images(project, 4, tag_ids=tags[:3], metadata={"note": HOSTILE})
    data.add_images(project, 2, tag_ids=[tags[7]])
    iteration = data.add_iteration(project, publish_name=PUBLISH_NAME)
    data.add_export(project, iteration, platform=PLATFORM, flavor=FLAVOR)
    return {"project": project, "tags": tags, "images": images, "iteration": iteration}


# --- what Slack would read as markup ----------------------------------------------------------


def mrkdwn_strings(value: Any) -> Iterator[str]:
    """Yield every string of a Web API call or message that Slack parses as mrkdwn."""
    if isinstance(value, list):
        for item in value:
            yield from mrkdwn_strings(item)
        return
    if not isinstance(value, dict):
        return
    if value.get("type") == "plain_text":
        return  # never parsed for mentions, links or formatting
    if value.get("type") == "mrkdwn":
        yield str(value.get("text", ""))
        return
    for key, item in value.items():
        if key in ("text", "initial_comment") and isinstance(item, str):
            yield item
        elif key in ("blocks", "attachments") and isinstance(item, str):
            yield from mrkdwn_strings(json.loads(item))
        elif key not in ("value", "action_id", "block_id", "private_metadata", "files"):
            yield from mrkdwn_strings(item)


def markup_found(stack: Stack) -> list[tuple[str, str]]:
    """Return (where, markup) for every `<...>` the bot sent that is not its own user mention."""
    found = []
    methods = {
        "chat.postMessage",
        "chat.update",
        "chat.postEphemeral",
        "response_url",
        "files.completeUploadExternal",
        "views.open",
    }
    sources: list[tuple[str, Any]] = [
        (c.method, c.params) for c in stack.slack.calls if c.method in methods
    ]
    sources += [("ack", {"text": e.text, "blocks": e.blocks}) for e in stack.slack.ephemerals()]
    for where, params in sources:
        for text in mrkdwn_strings(params):
            for tag in re.findall(r"<[^<>]*>", text):
                if not BOT_MENTION.fullmatch(tag):
                    found.append((where, tag))
    return found


def plain_strings(value: Any) -> Iterator[str]:
    """Yield the text of every plain_text object in a message's blocks."""
    if isinstance(value, list):
        for item in value:
            yield from plain_strings(item)
    elif isinstance(value, dict):
        if value.get("type") == "plain_text":
            yield str(value.get("text", ""))
        for item in value.values():
            yield from plain_strings(item)


def package_of(stack: Stack, rid: str) -> zipfile.ZipFile:
    (part,) = [f for f in stack.slack.files(CHANNEL) if f.name == f"{rid}-export.zip"]
    return zipfile.ZipFile(io.BytesIO(part.data))


def run(stack: Stack, text: str, status: str = "done") -> str:
    rid = stack.request_id(stack.command(REQUESTER, text))
    assert stack.wait_status(rid, "done", "failed", "pending") == status, stack.bot.store.get(rid)
    stack.wait_delivered()
    if status == "pending":  # the preview and the buttons are shown
        assert "request.approve" in json.dumps(stack.announcement(rid).blocks)
    return rid


# --- free text --------------------------------------------------------------------------------


def test_hostile_output_free_text_survives_end_to_end(
    stack: Stack, hostile: dict[str, Any]
) -> None:
    meta = f"--ticket {typed(TICKET)} --reason {typed(REASON)}"
    text = f"export project {hostile['project']} --no-images {meta}"
    rid = run(stack, text)
    record = stack.bot.store.get(rid)
    assert record.command["meta"] == {"ticket": TICKET, "reason": REASON}

    # The announcement: the text only in plain_text fields, exactly.
    shown = list(plain_strings(stack.announcement(rid).blocks))
    assert f"Ticket: {TICKET}" in shown
    assert f"Reason: {REASON}" in shown

    # The package: README.txt and manifest.json are UTF-8 and carry the text verbatim.
    with package_of(stack, rid) as package:
        readme = package.read("README.txt").decode("utf-8")
        manifest = json.loads(package.read("manifest.json").decode("utf-8"))
        for name in package.namelist():
            if name.endswith((".json", ".jsonl", ".txt", ".csv")):
                package.read(name).decode("utf-8")  # every text file is UTF-8
    assert REASON in readme and TICKET in readme
    assert (manifest["request"]["ticket"], manifest["request"]["reason"]) == (TICKET, REASON)

    # The audit log and its CSV export.
    (received,) = [
        e for e in audit.events(stack.bot.db.conn, request_id=rid) if e.action == "command.received"
    ]
    assert received.details["command"]["meta"] == {"ticket": TICKET, "reason": REASON}
    files_before = len(stack.slack.files(CHANNEL))
    answer = stack.command(APPROVER, f"audit --request {rid} --format csv").json()["text"]
    assert "Posting" in answer
    stack.wait_delivered()
    (exported,) = stack.slack.files(CHANNEL)[files_before:]
    rows = list(csv.DictReader(io.StringIO(exported.data.decode("utf-8"))))
    metas = [json.loads(r["details"]).get("command", {}).get("meta") for r in rows]
    assert {"ticket": TICKET, "reason": REASON} in metas

    # The status answer shows the ticket escaped, not as markup.
    status = stack.command(REQUESTER, f"status {rid}").json()["text"]
    assert "&lt;!here&gt;" in status
    assert "<!here>" not in status


def test_hostile_output_rejection_reason_survives_and_is_escaped(
    stack: Stack, hostile: dict[str, Any]
) -> None:
    rid = run(stack, f"delete images {hostile['project']} --ids {hostile['images'][0]}", "pending")
    stack.click(APPROVER, rid, "reject")
    stack.slack.wait_for(lambda: bool(stack.slack.views(APPROVER.user_id)))
    view = stack.slack.views(APPROVER.user_id)[-1]
    assert stack.driver is not None
    reason = REASON + "\nsecond line\twith a tab"
    stack.driver.submit_view(
        APPROVER.user_id,
        "request.reject_reason",
        view.view["private_metadata"],
        {"reason": {"value": reason}},
    )
    assert stack.wait_status(rid, "rejected") == "rejected"
    stack.wait_delivered()
    assert stack.bot.store.get(rid).decision_reason == reason
    (rejected,) = [
        e for e in audit.events(stack.bot.db.conn, request_id=rid) if e.action == "request.rejected"
    ]
    assert rejected.details["reason"] == reason
    assert f"Rejection reason: {reason}" in list(plain_strings(stack.announcement(rid).blocks))


# --- names from the API -----------------------------------------------------------------------


def test_hostile_output_api_names_appear_only_as_plain_text(
    stack: Stack, hostile: dict[str, Any]
) -> None:
    project = hostile["project"]
    shown_by = {
        # what each preview shows: the project, tag, iteration and publish names
        f"delete tag {project} {hostile['tags'][7]}": [f"Project: {HOSTILE}", HOSTILE],
        f"delete iteration {project} {hostile['iteration']}": [ITERATION_NAME, PUBLISH_NAME],
    }
    for text, names in shown_by.items():
        rid = run(stack, text, "pending")
        announcement = stack.announcement(rid)
        shown = "\n".join(plain_strings(announcement.blocks))
        for name in names:
            assert name in shown
        for markup in mrkdwn_strings({"text": announcement.text, "blocks": announcement.blocks}):
            assert HOSTILE not in markup and "<!" not in markup
        stack.click(REQUESTER, rid, "cancel")
        assert stack.wait_status(rid, "cancelled") == "cancelled"


def test_hostile_output_package_names_come_from_ids_and_safe_names(
    stack: Stack, hostile: dict[str, Any]
) -> None:
    project, iteration = hostile["project"], hostile["iteration"]
    exported = run(stack, f"export project {project}")
    models = run(stack, f"export exports {project} {iteration}")
    for rid in (exported, models):
        with package_of(stack, rid) as package:
            names = package.namelist()
            tags_json = [n for n in names if n.endswith("tags.json")]
            documents = {n: package.read(n).decode("utf-8") for n in names if n.endswith(".json")}
        assert names
        for name in names:
            assert check_arcname(name) == name
            assert all(SAFE_NAME.fullmatch(part) for part in name.split("/")), name
            assert ".." not in name.split("/")
        if rid == exported:
            # The data keeps every name exactly; only the file names are made safe.
            assert tags_json
            held = json.loads(documents[tags_json[0]])
            assert {t["name"] for t in held["workspace"]} == set(TAG_NAMES)
            assert sum(n.startswith("images/") for n in names) >= 6
        else:
            (listed,) = [n for n in names if n.endswith("exports.json")]
            platforms = {
                (e["platform"], e["flavor"]) for e in json.loads(documents[listed])[iteration]
            }
            assert (PLATFORM, FLAVOR) in platforms
    for uploaded in stack.slack.files():
        assert SAFE_NAME.fullmatch(uploaded.name), uploaded.name


def test_hostile_output_nothing_the_bot_sent_is_markup(stack: Stack) -> None:
    # Runs after the tests above, on everything they made the bot send.
    assert stack.slack.calls_to("chat.postMessage")
    assert markup_found(stack) == []


# --- error text from the API in thread posts and file comments -------------------------------


def test_hostile_output_api_error_text_is_escaped_in_the_thread(
    stack: Stack, hostile: dict[str, Any], proxy: RewritingProxy
) -> None:
    seen = len(stack.slack.calls)
    body = json.dumps({"code": "BadRequest", "message": HOSTILE})
    proxy.rules["GetProject"] = fixed(400, body, "application/json")
    try:
        rid = run(stack, f"export project {hostile['project']} --no-images", "failed")
    finally:
        del proxy.rules["GetProject"]
    assert HOSTILE in (stack.bot.store.get(rid).error or "")
    posted = [(c.method, c.params) for c in stack.slack.calls[seen:]]
    texts = [t for _, params in posted for t in mrkdwn_strings(params)]
    assert any(rid in t and "failed" in t for t in texts)
    assert [t for t in texts if re.search(r"<[!#h]", t)] == []


def test_hostile_output_api_error_text_is_escaped_in_file_comments(
    stack: Stack, hostile: dict[str, Any], proxy: RewritingProxy
) -> None:
    rid = run(stack, f"delete images {hostile['project']} --ids {hostile['images'][1]}", "pending")
    seen = len(stack.slack.calls)
    body = json.dumps({"code": "BadRequestImageBatch", "message": HOSTILE})
    proxy.rules["DeleteImages"] = fixed(400, body, "application/json")
    try:
        stack.click(APPROVER, rid, "approve")
        assert stack.wait_status(rid, "failed", "done") == "failed"
        stack.wait_delivered()
    finally:
        del proxy.rules["DeleteImages"]
    comments = [
        str(c.params.get("initial_comment") or "")
        for c in stack.slack.calls[seen:]
        if c.method == "files.completeUploadExternal"
    ]
    assert any(rid in c for c in comments)
    assert [c for c in comments if re.search(r"<[!#h]", c)] == []
