"""End to end over signed HTTP: `/cv delete subject` erases one person's images from every
project of two Custom Vision resources (`main` and `dev`, each its own emulator with its own
key and record of calls): one preview, one approval, a plan frozen per project, DeleteImages
with allIterations=true on each project's own resource, verification everywhere, one receipt.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from bot import audit
from emulators.customvision import Seed
from emulators.stack import APPROVER, CHANNEL, GROUP_APPROVER, REQUESTER, Stack
from tests.conftest import SMALL, StartStack, click_answer
from tests.test_e2e_find import DEV, Person, all_calls, answer_to, calls_to, seed_person
from tests.test_e2e_home import open_home, texts

REQUEST = "delete subject --metadata customer=4711 --ticket DSR-4711 --reason 'Art. 17'"


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks(seed=SMALL, more_resources={"dev": DEV})


def subject_pending(stack: Stack, text: str = REQUEST) -> str:
    """Request a subject deletion; wait until it awaits approval with its announcement
    posted; return its request id."""
    answer = answer_to(stack, text)
    rid = next((w for w in answer.replace(":", " ").split() if w.startswith("R-")), None)
    assert rid is not None, answer
    assert stack.wait_status(rid, "pending", "failed") == "pending", stack.bot.store.get(rid).error
    stack.wait_delivered()
    return rid


def receipt(stack: Stack, rid: str) -> dict[str, Any]:
    stack.wait_delivered()
    files = [
        f
        for f in stack.slack.files(CHANNEL)
        if f.name.startswith(rid) and f.name.endswith("receipt.json")
    ]
    assert len(files) == 1, [f.name for f in stack.slack.files(CHANNEL)]
    data = json.loads(files[0].data)
    assert isinstance(data, dict)
    return data


def thread(stack: Stack, rid: str) -> str:
    """Return the texts posted in the request's thread, as one string."""
    ts = stack.bot.store.get(rid).message_ts
    return json.dumps([m.text for m in stack.slack.messages(CHANNEL, ts)])


def dev_images(stack: Stack) -> set[str]:
    """Return the workspace images of the project on dev (the person's second project)."""
    data = stack.cvs["dev"].data
    return set(data.image_ids(data.project_ids()[0]))


def seeded(stack: Stack) -> tuple[Person, set[str]]:
    """Seed the person (`seed_person`); return where, and their 2 images on dev."""
    before = dev_images(stack)
    person = seed_person(stack)
    return person, dev_images(stack) - before


def test_e2e_delete_subject_across_two_resources_one_preview_one_approval_one_receipt(
    stacks: StartStack,
) -> None:
    stack = stacks(seed=SMALL, more_resources={"dev": DEV}, env={"BOT_REQUIRED_APPROVALS": "2"})
    person, theirs = seeded(stack)
    main, dev = stack.cvs["main"], stack.cvs["dev"]
    others = set(main.data.image_ids(person.first)) - set(person.mine)
    rid = subject_pending(stack)

    shown = json.dumps(stack.announcement(rid).blocks)
    assert (
        "Deletes 5 images matching metadata customer=4711 everywhere, in 2 projects on 2"
        " resources (main and dev): 4 in the workspaces, and from 1 trained iteration snapshot."
    ) in shown, shown
    assert f"({person.first}) on main: 3 images (2 in the workspace)" in shown, shown
    assert f"({person.second}) on dev: 2 images (2 in the workspace)" in shown, shown
    assert "published as faces-prod" in shown
    assert "Workspace images removed: 4" in shown
    assert "Images to delete (workspace and every iteration): 5" in shown
    assert person.gone not in shown, "the preview counts; it never lists an image"

    # The approval rules are the deletion flow's: the requester cannot approve, the same
    # approver twice counts once, nothing runs before the last approval.
    assert "cannot approve your own request" in click_answer(stack, REQUESTER, rid, "approve")
    assert "1 more approval needed" in click_answer(stack, GROUP_APPROVER, rid, "approve")
    assert "already approved" in click_answer(stack, GROUP_APPROVER, rid, "approve")
    assert stack.status(rid) == "pending"
    assert not calls_to(stack, "DeleteImages")
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error

    assert main.deleted_image_counts() == dict.fromkeys(person.mine, 1)
    assert dev.deleted_image_counts() == dict.fromkeys(theirs, 1)
    for cv in (main, dev):
        deletes = cv.calls_to("DeleteImages")
        assert deletes and all(c.query.get("allIterations") == "true" for c in deletes)
    assert {c.path.split("/")[-2] for c in main.calls_to("DeleteImages")} == {person.first}
    assert {c.path.split("/")[-2] for c in dev.calls_to("DeleteImages")} == {person.second}
    # The image only the snapshot still held is gone from it too; everyone else's stay.
    assert person.gone not in main.data.image_ids(person.first, person.iteration)
    assert set(main.data.image_ids(person.first)) == others
    assert not dev_images(stack) & theirs and len(dev_images(stack)) == 10

    data = receipt(stack, rid)
    assert data["outcome"] == "done"
    assert data["approvers"] == [GROUP_APPROVER.user_id, APPROVER.user_id]
    rows = {(i["resource"], i["project_id"], i["target_id"]) for i in data["items"]}
    assert rows == {("main", person.first, i) for i in person.mine} | {
        ("dev", person.second, i) for i in theirs
    }
    assert {i["verified"] for i in data["items"]} == {"gone"}
    summary = [
        (r["resource"], r["project_id"], r["planned"], r["removed"]) for r in data["summary"]
    ]
    assert summary == [("main", person.first, 3, 3), ("dev", person.second, 2, 2)]
    hosts = data["endpoint_host"]
    assert main.endpoint.split("//")[1] in hosts and dev.endpoint.split("//")[1] in hosts
    texts = thread(stack, rid)
    assert "5 images deleted and verified gone" in texts, texts
    events = [e.action for e in audit.events(stack.bot.db.conn, request_id=rid)]
    assert events.count("request.completed") == 1
    assert audit.verify(stack.bot.db.conn).ok


def test_e2e_delete_subject_quotes_a_value_with_a_quote_on_the_delete_path(stack: Stack) -> None:
    person = seed_person(stack)
    (darcy,) = stack.cvs["dev"].data.add_images(person.second, 1, metadata={"name": "D'Arcy"})
    rid = subject_pending(stack, 'delete subject --metadata "name=D\'Arcy" --ticket T-1')
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error
    assert stack.cvs["dev"].deleted_image_counts() == {darcy: 1}
    assert stack.cv.deleted_image_counts() == {}
    searches = calls_to(stack, "GetImageCount") + calls_to(stack, "GetImages")
    filters = {c.query.get("$filter") for c in searches if "$filter" in c.query}
    assert filters == {"name eq 'D''Arcy'"}
    assert all(c.status == 200 for c in searches)


def test_e2e_delete_subject_new_match_before_the_first_call_means_a_new_plan(
    stack: Stack,
) -> None:
    person = seed_person(stack)
    rid = subject_pending(stack)
    assert stack.bot.store.get(rid).preview["images_targeted"] == 5
    # Between preview and approval, one more image of the person arrives on the second
    # resource: the approved plan no longer covers everything that would be deleted.
    (late,) = stack.cvs["dev"].data.add_images(person.second, 1, metadata={"customer": "4711"})
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "pending", "done", "failed") == "pending"
    stack.wait_delivered()
    record = stack.bot.store.get(rid)
    assert record.approvals == ()
    assert record.preview["images_targeted"] == 6
    assert not calls_to(stack, "DeleteImages"), "nothing is deleted on a plan that grew"
    texts = thread(stack, rid)
    assert "the contents changed since the preview (1 new image)" in texts, texts
    assert "Nothing was deleted." in texts
    assert "plan.changed" in [e.action for e in audit.events(stack.bot.db.conn, request_id=rid)]

    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error
    assert stack.cvs["dev"].deleted_image_counts()[late] == 1
    assert sum(stack.cv.deleted_image_counts().values()) == 3


def test_e2e_delete_subject_fault_on_one_resource_then_retry_finishes_once(stack: Stack) -> None:
    person, theirs = seeded(stack)
    rid = subject_pending(stack)
    stack.cvs["dev"].faults.fail_after["DeleteImages"] = 0  # dev refuses every DeleteImages
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "failed", "done", timeout=60) == "failed"
    partial = receipt(stack, rid)
    by_resource: dict[str, set[str]] = {}
    for item in partial["items"]:
        by_resource.setdefault(item["resource"], set()).add(item["status"])
    assert by_resource == {"main": {"deleted"}, "dev": {"failed"}}, by_resource
    assert stack.cv.deleted_image_counts() == dict.fromkeys(person.mine, 1)

    stack.cvs["dev"].faults.fail_after.clear()
    stack.command(APPROVER, f"retry {rid}")
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    assert stack.cv.deleted_image_counts() == dict.fromkeys(person.mine, 1), "not sent again"
    assert stack.cvs["dev"].deleted_image_counts() == dict.fromkeys(theirs, 1)


def test_e2e_delete_subject_preview_from_a_partial_search_fails_and_retry_searches_again(
    stack: Stack,
) -> None:
    seed_person(stack)
    # dev answers the two counts of the search before storing, then 500 to every count: the
    # preview's own search cannot cover dev's project.
    stack.cvs["dev"].faults.fail_after["GetImageCount"] = 2
    answer = answer_to(stack, REQUEST)
    rid = next(w for w in answer.replace(":", " ").split() if w.startswith("R-"))
    assert stack.wait_status(rid, "failed", "pending", timeout=60) == "failed"
    error = stack.bot.store.get(rid).error or ""
    assert error.startswith("Could not search every project for metadata customer=4711: project")
    assert "on dev:" in error and f"`retry {rid}` searches again." in error, error
    assert not stack.bot.store.deletion_items(stack.bot.store.get(rid).number)
    stack.cvs["dev"].faults.fail_after.clear()
    stack.command(REQUESTER, f"retry {rid}")
    assert stack.wait_status(rid, "pending", "failed", timeout=60) == "pending"
    assert stack.bot.store.get(rid).preview["images_targeted"] == 5


def test_e2e_delete_subject_status_received_date_and_cancel(stack: Stack) -> None:
    seed_person(stack)
    today = stack.bot.service.clock.now().date()
    rid = subject_pending(stack, f"{REQUEST} --received {today.isoformat()}")
    status = stack.command(REQUESTER, f"status {rid}").json()["text"]
    assert "pending" in status and "delete subject --metadata customer=4711" in status, status
    assert stack.bot.store.get(rid).deadline.received == today
    announcement = stack.announcement(rid).text
    assert "delete the images of one person: metadata customer=4711" in announcement
    # bob's Home tab lists it among the requests waiting for his approval, described alike.
    home = "\n".join(texts(open_home(stack, APPROVER)))
    assert f"*{rid}* · delete the images of one person: metadata customer=4711" in home, home
    stack.click(REQUESTER, rid, "cancel")
    assert stack.wait_status(rid, "cancelled") == "cancelled"
    assert not calls_to(stack, "DeleteImages")


def test_e2e_delete_subject_matching_nothing_says_so_and_stores_nothing(stack: Stack) -> None:
    seed_person(stack)
    answer = answer_to(stack, "delete subject --metadata customer=9999 --ticket T-1")
    assert answer == (
        "No images match metadata customer=9999: 3 projects and 6 trained iterations searched"
        " on main and dev. Nothing was stored."
    ), answer
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []
    assert not calls_to(stack, "GetImages") and not calls_to(stack, "DeleteImages")
    (event,) = [e for e in audit.events(stack.bot.db.conn) if e.action == "find"]
    assert (event.actor, event.outcome, event.request_id) == (REQUESTER.user_id, "ok", None)
    assert event.details == {
        "selector": "metadata customer=9999",
        "projects": 3,
        "workspace_images": 0,
        "for": "delete subject",
    }


def test_e2e_delete_images_of_one_project_matching_nothing_stores_nothing(stack: Stack) -> None:
    person = seed_person(stack)
    text = f"delete images {person.first} --tag-name nobody --ticket T-2"
    answer = answer_to(stack, text)
    assert answer.startswith(
        f'No images match tag named "nobody" in project {person.first[:8]}…: 1 project and'
        " 3 trained iterations searched on main. Nothing was stored."
    ), answer
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []
    assert not stack.cvs["dev"].calls_to("GetImageCount"), "only the project's resource"


def test_e2e_delete_subject_search_fault_says_what_failed_and_stores_nothing(
    stack: Stack,
) -> None:
    seed_person(stack)
    stack.cvs["dev"].faults.fail_after["GetImageCount"] = 0  # dev's counts answer 500
    answer = answer_to(stack, REQUEST)
    dev_project = stack.cvs["dev"].data.project_ids()[0]
    assert "Could not search *" in answer and f"({dev_project[:8]}… on dev):" in answer, answer
    assert answer.endswith(
        "Nothing was stored: no deletion is planned from a partial search. Type the same"
        " command again once Custom Vision answers."
    ), answer
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []
    (event,) = [e for e in audit.events(stack.bot.db.conn) if e.action == "find"]
    assert event.outcome == "incomplete"
    # Once the resource answers, the same command goes through.
    stack.cvs["dev"].faults.fail_after.clear()
    rid = subject_pending(stack)
    assert stack.bot.store.get(rid).preview["images_targeted"] == 5


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("delete subject --ticket T", "delete subject needs a selector"),
        ("delete subject --metadata customer --ticket T", "--metadata needs KEY=VALUE"),
        ("delete subject --metadata customer=* --ticket T", "would match every image"),
        ("delete subject --tag-name x --ids 1 --ticket T", "delete subject does not take --ids"),
        (f"delete subject --metadata k={'v' * 257}", "value of 'k' is too long: 257 characters"),
        (
            "delete subject --metadata customer=4711 --resource prod",
            "There is no Custom Vision resource named 'prod': the configured ones are main and"
            " dev (CUSTOM_VISION_RESOURCES).",
        ),
    ],
)
def test_e2e_delete_subject_bad_input_answers_calls_nothing_stores_nothing(
    stack: Stack, text: str, problem: str
) -> None:
    seed_person(stack)
    before = all_calls(stack)
    answer = stack.command(REQUESTER, text).json()
    assert answer["response_type"] == "ephemeral"
    assert problem in answer["text"], answer["text"]
    assert "Usage: `/cv delete subject [--metadata KEY=VALUE]..." in answer["text"]
    time.sleep(0.2)
    assert all_calls(stack) == before
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []


def test_e2e_delete_subject_long_preview_keeps_totals_and_warnings_and_goes_to_a_file(
    stacks: StartStack,
) -> None:
    many = Seed(projects=30, iterations=0, tags=1, images=3, predictions=0, image_bytes=64)
    stack = stacks(seed=many, more_resources={"dev": DEV})
    data = stack.cv.data
    projects = data.project_ids()
    for n, project in enumerate(projects):
        data.add_images(project, 1, metadata={"customer": "4711"})
        data.add_iteration(project, publish_name=f"prod-{n}")
    missing = "0b0b0b0b-0000-4000-8000-000000000000"
    scope = " ".join(f"--project {p}" for p in [*projects, missing])
    rid = subject_pending(stack, f"delete subject --metadata customer=4711 {scope} --ticket T")

    message = stack.announcement(rid)
    shown = "\n".join(str(block.get("text", {}).get("text", "")) for block in message.blocks)
    assert "\nDeletes 30 images matching metadata customer=4711 in projects" in shown, shown
    for line in (
        "Workspace images removed: 30",
        "Images to delete (workspace and every iteration): 30",
        "Searched: 30 projects and 30 trained iterations on main and dev",
        "Projects: 30",
        "Iterations: 30 (30 published:",
        "Not found on any resource searched (not searched): 1 project",
        f"{rid}-preview.txt",
    ):
        assert line in shown, (line, shown)
    (file,) = [f for f in stack.slack.files(CHANNEL) if f.name == f"{rid}-preview.txt"]
    full = file.data.decode("utf-8")
    assert all(f"({p}) on main: 1 image (1 in the workspace)" in full for p in projects)
    assert full.count("published as prod-") == 30
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    assert sum(stack.cv.deleted_image_counts().values()) == 30


def test_e2e_help_delete_subject(stack: Stack) -> None:
    text = stack.command(REQUESTER, "help delete subject").json()["text"]
    assert text.startswith("/cv delete subject [--metadata KEY=VALUE]... [--tag-name NAME]..."), (
        text
    )
    assert "--resource &lt;name&gt;: search only these Custom Vision resources" in text
    assert "second person approves" in text
