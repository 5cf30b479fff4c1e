"""End to end: personal data stays where it belongs.

No file the bot posts carries a working link to a person's image (a SAS-signed blob URL), and
nothing holding personal data (an export other than `projects`/`account`, an audit file) is
posted into a public channel unless BOT_ALLOW_PUBLIC_EXPORTS=true.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import requests

from emulators.customvision import Seed
from emulators.stack import APPROVER, CHANNEL, PUBLIC_CHANNEL, REQUESTER, Stack
from tests.conftest import StartStack

SEED = Seed(projects=1, iterations=2, tags=3, images=12, predictions=4, image_bytes=200)

# The query parameters of an Azure storage SAS (service, account and user-delegation SAS), as
# they appear in a URL: `?sv=...&se=...&sig=...`, or percent-encoded inside another string.
SAS_PARAMETER = re.compile(
    rb"(?i)(?:[?&]|%3F|%26)(?:sig|se|st|sv|sp|sr|spr|ss|srt|si|sdd|skoid|sktid|skt|ske|sks"
    rb"|skv|saoid|suoid|scid|ses)(?:=|%3D)"
)
URL = re.compile(r"https?://[^\s\"'<>]+")


def members(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield (name, bytes) of a file and, recursively, of every member of a zip."""
    yield name, data
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                yield from members(f"{name}!{member}", archive.read(member))


def signed(stack: Stack, channel: str) -> list[str]:
    """Return every file (or zip member) posted in `channel` that holds a SAS parameter."""
    return [
        name
        for f in stack.slack.files(channel)
        for name, data in members(f.name, f.data)
        if SAS_PARAMETER.search(data)
    ]


def run(stack: Stack, text: str, channel: str = CHANNEL) -> str:
    rid = stack.request_id(stack.command(REQUESTER, text, channel=channel))
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done", stack.bot.store.get(
        rid
    ).error
    return rid


def package(stack: Stack, rid: str, channel: str = CHANNEL) -> dict[str, bytes]:
    stack.wait_delivered()
    content: dict[str, bytes] = {}
    for f in stack.slack.files(channel):
        if f.name.startswith(f"{rid}-export"):
            with zipfile.ZipFile(io.BytesIO(f.data)) as archive:
                content.update({n: archive.read(n) for n in archive.namelist()})
    assert content, [f.name for f in stack.slack.files(channel)]
    return content


EVERY_EXPORT = [
    "export account",
    "export projects",
    "export project {p}",
    "export project {p} --no-images",
    "export iterations {p}",
    "export iteration {p} {i}",
    "export performance {p} {i}",
    "export tags {p}",
    "export tag {p} {t}",
    "export images {p}",
    "export images {p} --no-files",
    "export images {p} --iteration {i} --no-files",
    "export exports {p} {i}",
    "export exports {p} {i} --download",
    "export predictions {p}",
    "export predictions {p} --no-files",
]


def test_e2e_no_file_of_any_export_kind_carries_a_signed_link(stacks: StartStack) -> None:
    stack = stacks(seed=SEED, env={"BOT_ALLOW_PUBLIC_EXPORTS": "true"})
    data = stack.cv.data
    project = data.project_ids()[0]
    iteration = data.iteration_ids(project)[0]
    values = {"p": project, "i": iteration, "t": data.tag_ids(project)[0]}
    rids = {text: run(stack, text.format(**values)) for text in EVERY_EXPORT}
    stack.wait_delivered()
    # The issue's case: metadata-only image export in a public channel (allowed here).
    public = run(stack, f"export images {project} --no-files", channel=PUBLIC_CHANNEL)

    assert signed(stack, CHANNEL) == []
    assert signed(stack, PUBLIC_CHANNEL) == []

    images = [
        json.loads(x)["image"]
        for x in package(stack, public, PUBLIC_CHANNEL)["images.jsonl"].split(b"\n")
        if x
    ]
    assert images and all(i["originalImageUri"] for i in images)
    for image in images[:3]:
        # What is left is the blob's address: a plain GET no longer yields the image.
        for key in ("originalImageUri", "resizedImageUri", "thumbnailUri"):
            assert "?" not in image[key]
            assert requests.get(image[key], timeout=10).status_code == 403
    predictions = package(stack, rids["export predictions {p} --no-files"])["predictions.jsonl"]
    assert b"/blob/" in predictions and b"?" not in predictions
    listed = json.loads(package(stack, rids["export exports {p} {i}"])["exports.json"])
    exports = [e for per_iteration in listed.values() for e in per_iteration]
    assert any(e["downloadUri"] for e in exports)
    assert all("?" not in e["downloadUri"] for e in exports)
    readme = package(stack, rids["export project {p} --no-images"])["README.txt"].decode()
    assert "signature" in readme and "removed" in readme


def test_emulator_issues_sas_links_the_scan_detects(stack: Stack) -> None:
    """The scan above is not vacuous: the API's answers carry full SAS links that work."""
    project = stack.cv.data.project_ids()[0]
    answer = requests.get(
        f"{stack.cv.endpoint}/customvision/v3.3/training/projects/{project}/images?take=1",
        headers={"Training-Key": stack.env["CUSTOM_VISION_TRAINING_KEY"]},
        timeout=10,
    )
    uri = answer.json()[0]["originalImageUri"]
    for parameter in ("sv=", "se=", "sr=b", "sp=r", "sig="):
        assert parameter in uri
    assert SAS_PARAMETER.search(uri.encode())
    assert requests.get(uri, timeout=10).status_code == 200


# Everything but the project list and the account summary may hold personal data.
PERSONAL = [t for t in EVERY_EXPORT if not t.startswith(("export account", "export projects"))]


def test_e2e_public_channel_refuses_personal_data_and_names_the_setting(stack: Stack) -> None:
    data = stack.cv.data
    project = data.project_ids()[0]
    iteration = data.iteration_ids(project)[0]
    values = {"p": project, "i": iteration, "t": data.tag_ids(project)[0]}
    for text in PERSONAL:
        body = stack.command(REQUESTER, text.format(**values), channel=PUBLIC_CHANNEL).json()
        assert body["response_type"] == "ephemeral"
        assert "BOT_ALLOW_PUBLIC_EXPORTS=true" in body["text"], (text, body["text"])
        assert "private channel" in body["text"]
    for text in ("audit", "audit --format csv"):
        body = stack.command(APPROVER, text, channel=PUBLIC_CHANNEL).json()
        assert "BOT_ALLOW_PUBLIC_EXPORTS=true" in body["text"], (text, body["text"])
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []
    # Only the two exports without personal data run; their trail (it holds the reason) is
    # not posted in the public channel either.
    for text in ("export projects --reason 'Art. 15'", "export account"):
        run(stack, text, channel=PUBLIC_CHANNEL)
    stack.wait_delivered()
    posted = [f.name for f in stack.slack.files(PUBLIC_CHANNEL)]
    assert not [n for n in posted if "audit" in n], posted
    assert len([n for n in posted if "-export" in n]) == 2, posted


def test_e2e_public_channel_refuses_deletions_whose_receipt_holds_personal_data(
    stack: Stack,
) -> None:
    # A deletion's preview and receipt list the person's image ids, tags and projects: a
    # receipt is evidence about a data subject and goes only where packages may go.
    data = stack.cv.data
    project = data.project_ids()[0]
    images = ",".join(data.image_ids(project)[:2])
    for text in (f"delete images {project} --ids {images}", f"delete project {project}"):
        body = stack.command(REQUESTER, text, channel=PUBLIC_CHANNEL).json()
        assert body == {
            "response_type": "ephemeral",
            "text": "This deletion's receipt holds personal data, and this is a public channel. "
            "Run it in a private channel, or ask an admin to set BOT_ALLOW_PUBLIC_EXPORTS=true.",
        }
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []
    assert stack.slack.messages(PUBLIC_CHANNEL) == []


def test_e2e_public_deletion_allowed_by_the_setting_posts_its_receipt_there(
    stacks: StartStack,
) -> None:
    stack = stacks(seed=SEED, env={"BOT_ALLOW_PUBLIC_EXPORTS": "true"})
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    typed = f"delete images {project} --ids {image}"
    rid = stack.request_id(stack.command(REQUESTER, typed, channel=PUBLIC_CHANNEL))
    assert stack.wait_status(rid, "pending", "failed") == "pending"
    stack.wait_delivered()
    stack.click(APPROVER, rid, "approve", channel=PUBLIC_CHANNEL)
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    stack.wait_delivered()
    assert f"{rid}-receipt.json" in [f.name for f in stack.slack.files(PUBLIC_CHANNEL)]


def test_e2e_public_exports_allowed_by_the_setting(stacks: StartStack) -> None:
    stack = stacks(seed=SEED, env={"BOT_ALLOW_PUBLIC_EXPORTS": "true"})
    project = stack.cv.data.project_ids()[0]
    rid = run(stack, f"export project {project} --no-images", channel=PUBLIC_CHANNEL)
    assert package(stack, rid, PUBLIC_CHANNEL)
    body = stack.command(APPROVER, "audit", channel=PUBLIC_CHANNEL).json()
    assert "Posting" in body["text"]
    stack.wait_delivered()
    assert any(f.name.startswith("audit-") for f in stack.slack.files(PUBLIC_CHANNEL))
    assert any("audit-trail" in f.name for f in stack.slack.files(PUBLIC_CHANNEL))


def test_e2e_private_channel_gets_the_audit_trail(stack: Stack) -> None:
    run(stack, "export projects --reason 'Art. 15'")
    stack.wait_delivered()
    assert any("audit-trail" in f.name for f in stack.slack.files(CHANNEL))


def test_e2e_trail_withheld_when_slack_cannot_confirm_the_channel_is_private(
    stack: Stack,
) -> None:
    stack.bot.service.directory.channel_ttl = 0.0
    rid = stack.request_id(stack.command(REQUESTER, "export projects --reason 'Art. 15'"))
    stack.slack.inject_server_error("conversations.info", 500, times=50)
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    note = "Slack did not confirm that this channel is private"
    deadline = time.monotonic() + 30
    thread: list[Any] = []
    while time.monotonic() < deadline and not any(note in m.text for m in thread):
        time.sleep(0.1)  # the note follows the lookup's time budget; poll for it
        thread = stack.slack.messages(CHANNEL, thread_ts=stack.bot.store.get(rid).message_ts)
    assert any(note in m.text for m in thread), [m.text for m in thread]
    stack.slack.clear_latency()
    stack.wait_delivered()
    assert not any("audit-trail" in f.name for f in stack.slack.files(CHANNEL))
    assert any(f"audit --request {rid}" in m.text for m in thread)
