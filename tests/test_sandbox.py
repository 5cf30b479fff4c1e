"""The sandbox (`python -m bot sandbox`): the scripted session, the interactive prompt, and the
pure text rendering of Slack messages."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from emulators.customvision import CustomVisionEmulator
from emulators.sandbox import (
    SANDBOX_SEED,
    Line,
    parse_line,
    render_blocks,
    run_sandbox,
    slack_text,
)


def positions(text: str, *needles: str) -> list[int]:
    found = []
    for needle in needles:
        assert needle in text, f"missing: {needle!r}"
        found.append(text.index(needle))
    return found


def test_sandbox_scripted_session_reads_like_the_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # whatever it writes besides `output` would show up here
    out = io.StringIO()
    output = tmp_path / "out"
    assert run_sandbox(output=output, stdout=out) == 0
    text = out.getvalue()

    # In the order it happened (a click's answer and the edits it causes may come either way).
    marks = positions(
        text,
        "alice typed: /cv export project ",
        "cv-dsr-bot (only visible to alice): R-1001 queued",
        "cv-dsr-bot: ✅ R-1001 · Export requested by @alice · Done",
        "📎 R-1001-export.zip (",
        "alice typed: /cv delete images ",
        "R-1002 · Deletion requested by @alice · Waiting for approval",
        "Images to delete (workspace and every iteration): ",
        "[Approve] [Reject] [Cancel (requester)]",
        "alice pressed [Approve] on R-1002",
        "(only visible to alice): You cannot approve your own request: a second person must.",
        "mallory pressed [Approve] on R-1002",
        "(only visible to mallory): Only approvers (BOT_APPROVERS) may approve deletions.",
        "08:00 UTC: the daily digest lists what is due within 7 days",
        "Statutory deadlines, ",
        "• R-1002 delete images with tag ",
        "bob opened the Home tab of the bot:",
        "    Waiting for an approval (1)\n    🟠 R-1002 · delete images with tag ",
        "    Waiting for approval · @alice in #privacy-requests\n    [Open thread]",
        "    Due within 7 days or overdue (1)\n    🟠 R-1002 · delete images with tag ",
        "bob pressed [Approve] on R-1002",
        "deleted and verified gone",
        "📎 R-1002-receipt.csv (",
        "alice typed: /cv find --metadata customer=4711",
        "(only visible to alice): Found images in 2 projects (4 images in the workspaces); "
        "3 projects and 6 trained iterations searched for metadata customer=4711:",
        "alice typed: /cv export subject --metadata customer=4711 --ticket DSR-2043",
        "R-1003 · Export requested by @alice · Done",
        "R-1003 export is ready: 2 projects, 5 images and 5 image files.",
        "alice typed: /cv delete subject --metadata customer=4711 --ticket DSR-2044",
        "R-1004 · Deletion requested by @alice · Waiting for approval",
        "Deletes 5 images matching metadata customer=4711 everywhere, in 2 projects on 2"
        " resources (main and eu): 4 in the workspaces, and from 1 trained iteration snapshot."
        ' Published iterations involved: "people-prod".',
        "bob pressed [Approve] on R-1004",
        "R-1004 deletion receipt: 5 images deleted and verified gone.",
        "📎 R-1004-receipt.csv (",
        "bob typed: /cv audit verify",
        "cv-dsr-bot: Audit log intact: ",
        f"saved in {output}/:",
        "Sandbox finished in ",
    )
    assert marks == sorted(marks)
    assert "(only visible to bob): You approved R-1002." in text
    assert "cv-dsr-bot (edited): ✅ R-1002 · Deletion requested by @alice · Done" in text
    # Thread replies sit indented under their parent.
    assert "\n    ↳ [" in text

    # The data subject: two projects on two resources, one image only a snapshot still holds.
    assert "A data subject (image metadata customer=4711) has images in two projects:" in text
    seeded = CustomVisionEmulator(seed=SANDBOX_SEED).data  # built, never served
    second = seeded.project_ids()[1]
    assert (
        f"- Seed project 2 ({second[:8]}… on main): workspace: 2 images; "
        'iteration "Iteration 3" (published as "people-prod"): 3 images\n'
    ) in text
    assert "- Seed project 1 (" in text and "… on eu): workspace: 2 images\n" in text
    assert "No match in the other project.\n" in text
    subject_package = output / "R-1003-export"
    manifest = json.loads((subject_package / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["images"] == 5
    assert manifest["request"]["search"]["filter"] == "customer eq '4711'"
    assert [r["name"] for r in manifest["request"]["search"]["resources"]] == ["main", "eu"]
    records = [
        json.loads(line)
        for line in (subject_package / "projects" / second / "images.jsonl")
        .read_text("utf-8")
        .splitlines()
    ]
    only_snapshot = [r for r in records if r["file"].startswith("images/iterations/")]
    assert len(only_snapshot) == 1 and (subject_package / only_snapshot[0]["file"]).is_file()
    assert {r["image"]["metadata"]["customer"] for r in records} == {"4711"}

    saved = {p.name for p in output.iterdir() if p.is_file()}
    assert {
        "R-1003-export.zip",
        "R-1001-export.zip",
        "R-1002-receipt.csv",
        "R-1002-receipt.json",
        "R-1002-receipt.html",
    } <= saved
    # A person is told where to look: the unzipped export's index and the receipt page.
    index = output / "R-1001-export" / "index.html"
    assert f"Export unzipped: open {index} in a web browser" in text
    assert "R-1001" in index.read_text(encoding="utf-8")
    assert f"Receipt: open {output / 'R-1002-receipt.html'} in a web browser" in text
    for name in saved:  # every saved file is announced, with its size
        assert f"📎 {name} (" in text
        assert f"  {name}  (" in text
    with zipfile.ZipFile(output / "R-1001-export.zip") as package:
        assert package.testzip() is None
    deleted = int(text.split(" images deleted and verified gone")[0].rsplit(" ", 1)[1])
    with (output / "R-1002-receipt.csv").open(newline="", encoding="utf-8") as fp:
        rows = list(csv.DictReader(fp))
    assert len(rows) == deleted > 0
    # The person's erasure: one receipt over both resources, the snapshot-only image too.
    erased = json.loads((output / "R-1004-receipt.json").read_text(encoding="utf-8"))
    assert [(r["resource"], r["removed"]) for r in erased["summary"]] == [("main", 3), ("eu", 2)]
    assert {i["verified"] for i in erased["items"]} == {"gone"}
    receipt = json.loads((output / "R-1002-receipt.json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no ./data

    # The sandbox's own numbers say what they count and agree with the bot's.
    data = CustomVisionEmulator(seed=SANDBOX_SEED).data  # built, never served
    project = data.project_ids()[0]
    workspace = len(data.image_ids(project))
    everywhere = {
        i for s in [None, *data.iteration_ids(project)] for i in data.image_ids(project, s)
    }
    assert len(everywhere) > workspace  # the seed's snapshots hold images the workspace lost
    assert f"{project}: {workspace:,} images in the workspace, " in text
    ready = re.search(r"export is ready: [^.]*?([\d,]+) images, ", text)
    assert ready is not None and ready.group(1) == f"{len(everywhere):,}", text
    planned = int(text.split("Images to delete (workspace and every iteration): ")[1].split()[0])
    assert planned == deleted == receipt["summary"][0]["removed"]
    assert "alice asks to erase the images tagged " in text
    # The due date is shown on the requests: 27 days after receipt, a few days are left.
    assert re.search(
        r"\n +Deadline: received \S+ · due \S+ \((in [2-7] days|tomorrow)\)\n", text
    ), text
    assert re.search(r"\n +:calendar: received \S+ · due \S+\n", text), text
    assert re.search(
        r"· received \S+ · due \S+ \((in [2-7] days|tomorrow)\) · waits on: approval", text
    )


def demo_ids() -> tuple[str, str]:
    """The sandbox's first project and tag: a Seed always yields the same GUIDs."""
    data = CustomVisionEmulator(seed=SANDBOX_SEED).data  # built, never served
    project = data.project_ids()[0]
    return project, data.tag_ids(project)[0]


def test_sandbox_interactive_session_from_a_script(tmp_path: Path) -> None:
    project, tag = demo_ids()
    script = "\n".join(
        [
            "help",
            "/cv export projects",
            f"/cv delete images {project} --tag {tag} --ticket T-1",
            "press 1",  # alice approves her own request
            "as bob: press 1",
            "wait",
            "as carol: home",
            f"/cv delete images {project} --untagged",
            "user carol",
            "press 5",  # Reject on the second request opens the reason dialog
            "duplicate of an earlier request",
            "press 4",  # that message changed: its Approve button is gone
            "as mallory: /cv audit verify",
            "as nobody: /cv status",
            "dance",
            "quit",
            "/cv status",  # never read
        ]
    )
    out = io.StringIO()
    output = tmp_path / "out"
    assert run_sandbox(output=output, interactive=True, stdin=io.StringIO(script), stdout=out) == 0
    text = out.getvalue()
    marks = positions(
        text,
        f'project "Seed project 1" {project}',  # ids shown to copy
        "press 2                 press the button numbered 2",
        "home                    open the bot's Home tab",
        "alice in #privacy-requests> /cv export projects",
        "R-1001 · Export requested by @alice · Done",
        "[1 Approve] [2 Reject] [3 Cancel (requester)]",
        "(only visible to alice): You cannot approve your own request: a second person must.",
        "bob pressed [Approve] on R-1002",
        "deleted and verified gone",
        "carol opened the Home tab of the bot:",
        "    Waiting for an approval (0)\n    Nothing waits for an approval.",
        "[4 Approve] [5 Reject] [6 Cancel (requester)]",
        'carol sees a dialog "Reject request"',
        "Why is R-1003 rejected? (empty closes the dialog)> duplicate of an earlier request",
        "Rejection reason: duplicate of an earlier request",
        "(that button is gone: its message changed)",
        "(only visible to mallory): Only approvers may read the whole audit log",
        "No such person: nobody.",
        "Not understood: 'dance'.",
        "Sandbox finished in ",
    )
    assert marks == sorted(marks)
    assert "(only visible to carol): You rejected R-1003." in text
    assert "alice in #privacy-requests> /cv status" not in text
    assert (output / "R-1001-export.zip").is_file()
    assert (output / "R-1002-receipt.csv").is_file()


def test_sandbox_refuses_an_output_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    out = io.StringIO()
    assert run_sandbox(output=tmp_path / "file" / "out", stdout=out) == 2
    assert out.getvalue().startswith(f"The sandbox cannot save files in {tmp_path}/file/out: ")


@pytest.mark.parametrize(
    ("typed", "line"),
    [
        ("/cv status", Line("command", None, "status")),
        ("  /CV help export ", Line("command", None, "help export")),
        ("/cv", Line("command", None, "")),
        ("as bob: /cv status R-1001", Line("command", "bob", "status R-1001")),
        ("As @Bob:press 2", Line("press", "bob", number=2)),
        ("press 12", Line("press", number=12)),
        ("click #3", Line("press", number=3)),
        ("user bob", Line("user", text="bob")),
        ("as carol", Line("user", text="carol")),
        ("channel #general", Line("channel", text="general")),
        ("in random", Line("channel", text="random")),
        ("ids", Line("ids")),
        ("wait", Line("wait")),
        ("home", Line("home")),
        ("as bob: home", Line("home", user="bob")),
        ("?", Line("help")),
        ("exit", Line("quit")),
        ("", Line("nothing")),
        ("/cvx status", Line("unknown", text="/cvx status")),
        ("press two", Line("unknown", text="press two")),
    ],
)
def test_sandbox_parse_line(typed: str, line: Line) -> None:
    assert parse_line(typed) == line


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("<@U0ALICE> R-1 was rejected by <@U0BOB>.", "@alice R-1 was rejected by @bob."),
        ("<@U0OTHER> hi", "@U0OTHER hi"),
        ("see <#C0DSR|privacy-requests> and <!here>", "see #privacy-requests and @here"),
        (
            "<https://example.com|the docs> or <https://example.com>",
            "the docs or https://example.com",
        ),
        (":white_check_mark: *R-1* · *Done*", "✅ R-1 · Done"),
        ("a &lt;b&gt; &amp; c", "a <b> & c"),
        ("2*3*4 stays", "2*3*4 stays"),
    ],
)
def test_sandbox_slack_text(text: str, shown: str) -> None:
    assert slack_text(text, {"U0ALICE": "alice", "U0BOB": "bob"}) == shown


def test_sandbox_render_blocks_shows_sections_fields_context_and_buttons() -> None:
    def plain(text: str) -> dict[str, Any]:
        return {"type": "plain_text", "text": text}

    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "*R-1* by <@U0A>"}},
        {"type": "section", "text": plain("line one\nline *two*")},
        {"type": "section", "fields": [plain("Ticket: —"), plain("Reason: x")]},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "in <#C0DSR>"},
            "accessory": {"type": "button", "text": plain("Open thread"), "url": "https://x"},
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "a"}, plain("b")]},
        {"type": "divider"},
        {
            "type": "actions",
            "elements": [
                {"type": "button", "text": plain("Approve"), "action_id": "a"},
                {"type": "button", "text": plain("Reject"), "action_id": "r"},
            ],
        },
    ]
    assert render_blocks(blocks, {"U0A": "alice", "C0DSR": "privacy-requests"}) == [
        "R-1 by @alice",
        "line one",
        "line *two*",  # plain_text is never formatted
        "Ticket: — | Reason: x",
        "in #privacy-requests",
        "[Open thread]",
        "a · b",
        "─" * 20,
        "[Approve] [Reject]",
    ]
